"""Networks: each maps (x_in, c_noise, cond) to a tensor shaped like x_in; `cond` is a mapping of
condition tensors ({"label": (B,) class indices}) or None. One builder per `model.arch`, each with its
own config section (config.py: model.unet, model.mlp)."""

from __future__ import annotations

from typing import Callable

import torch

from difftrain.config import ModelConfig
from difftrain.errors import UserError

# Registry: architecture name -> builder(its config section, the modality's model shape, number of classes, and the
# modality's `network_options`: a token vocabulary's size).
def _build_unet(cfg, shape, num_classes, **captions):
    if captions:  # captioned images: UNet2DConditionModel, with cross-attention
        from difftrain.models.unet_captions import build_captioned_unet

        return build_captioned_unet(cfg, shape, **captions)
    from difftrain.models.unet import build_unet

    return build_unet(cfg, shape, num_classes)


def _build_dit(cfg, shape, num_classes, **captions):
    from difftrain.models.dit import build_dit

    return build_dit(cfg, shape, num_classes, **captions)


def _build_mlp(cfg, shape, num_classes):
    from difftrain.models.mlp import build_mlp

    return build_mlp(cfg, shape, num_classes)


def _build_unet1d(cfg, shape, num_classes):
    from difftrain.models.unet1d import build_unet1d

    return build_unet1d(cfg, shape, num_classes)


def _build_transformer1d(cfg, shape, num_classes):
    from difftrain.models.transformer1d import build_transformer1d

    return build_transformer1d(cfg, shape, num_classes)


def _build_token_transformer(cfg, shape, num_classes, vocab_size=0):
    from difftrain.models.token_transformer import build_token_transformer

    return build_token_transformer(cfg, shape, num_classes, vocab_size)


def _build_autoencoder(cfg, shape, num_classes):
    from difftrain.models.autoencoder import build_autoencoder

    return build_autoencoder(cfg, shape, num_classes)


# Networks with a caption encoder and cross-attention (text-to-image).
CAPTIONED = ("unet", "dit")
# The module of each image network's class-embedding rows (one per class, then "no label"): fine-tuning matches them
# by class name, and trains the rows of new classes even when the rest is frozen.
CLASS_ROWS = {"unet": "class_embedding", "dit": "label_embedding"}
NETWORKS: dict[str, Callable[..., torch.nn.Module]] = {"unet": _build_unet, "dit": _build_dit, "mlp": _build_mlp,
                                                       "unet1d": _build_unet1d, "transformer1d": _build_transformer1d,
                                                       "token_transformer": _build_token_transformer,
                                                       "autoencoder": _build_autoencoder}
# How to make each network smaller, for the doctor's advice when nothing fits.
SMALLER = {"unet": "fewer or narrower model.unet.channels, model.unet.layers_per_block=1",
           "dit": "a smaller model.dit.width or model.dit.depth, or a larger model.dit.patch",
           "mlp": "a smaller model.mlp.width or model.mlp.depth",
           "unet1d": "fewer or narrower model.unet1d.channels, model.unet1d.layers_per_block=1",
           "transformer1d": "a smaller model.transformer1d.width or model.transformer1d.depth, or a larger model.transformer1d.patch",
           "token_transformer": "a smaller model.token_transformer.width or model.token_transformer.depth, or shorter sequences",
           "autoencoder": "fewer or narrower model.autoencoder.channels"}


def architecture(cfg: ModelConfig, modality) -> str:
    """model.arch, with 'auto' the modality's default network."""
    return modality.default_arch if cfg.arch == "auto" else cfg.arch


def build_network(cfg: ModelConfig, modality, num_classes: int) -> torch.nn.Module:
    """The configured network for the modality's data (conditional on `num_classes` labels when the config says so)."""
    arch = architecture(cfg, modality)
    if arch not in NETWORKS:
        raise UserError(f"unknown model.arch {arch!r}; choose one of: {', '.join(NETWORKS)}")
    options = dict(modality.network_options)
    if "caption_vocab" in options:
        if not cfg.conditional:  # captions unused: the network has no caption encoder
            options = {k: v for k, v in options.items() if not k.startswith("caption_")}
        elif arch not in CAPTIONED:
            raise UserError(f"this data is captioned, and model.arch={arch} has no cross-attention for captions yet: "
                            f"train it with model.arch={' or '.join(CAPTIONED)}, or set model.conditional=false")
        elif cfg.text_encoder:  # a local pretrained text model, frozen, in the place of one trained from scratch
            from difftrain.models.pretrained_text import PretrainedCaptionEncoder

            options = {"caption_encoder": PretrainedCaptionEncoder(cfg.text_encoder, modality.captions)}
    return NETWORKS[arch](cfg.section(arch), modality.model_shape, num_classes if cfg.conditional else 0, **options)


def smaller_network_hint(cfg: ModelConfig, modality) -> str:
    """The settings that shrink the configured network."""
    return SMALLER[architecture(cfg, modality)]


__all__ = ["NETWORKS", "architecture", "build_network", "smaller_network_hint"]
