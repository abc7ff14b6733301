"""diffusers' UNet2DModel behind difftrain's network signature net(x, c_noise, cond)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from diffusers import UNet2DModel

from difftrain.config import UNetConfig
from difftrain.errors import UserError


class UNet(torch.nn.Module):
    """UNet2DModel, class-conditional through its class embedding.

    With `num_classes` > 0 the embedding has one extra row, index `num_classes`,
    the "no label" used by label dropout and classifier-free guidance.
    """

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet
        embeds = unet.config.num_class_embeds
        self.num_classes = embeds - 1 if embeds else 0

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.num_classes else None

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        labels = (cond or {}).get("label")
        if self.num_classes and labels is None:
            labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        return self.unet(x, c_noise, class_labels=labels if self.num_classes else None).sample

    def core(self) -> UNet2DModel:
        """The module whose parameter names are the network's public ones: LoRA targets, train_only prefixes,
        the weights that runs and diffusers folders exchange."""
        return self.unet

    def lora_targets(self) -> list[str]:
        """UNet2DModel's layers that take LoRA adapters (peft target names, matched as name endings)."""
        return ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"]


def unet_arguments(cfg: UNetConfig, shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """UNet2DModel's arguments for the config, model tensors of shape (C, H, W) and `num_classes` labels."""
    if len(shape) != 3:
        raise UserError(f"model.arch=unet takes images (C, H, W); this data's items are {tuple(shape)}: use model.arch=auto")
    channels, height, width = shape
    factor = 2 ** (len(cfg.channels) - 1)  # every level but the last halves the size
    if height % factor or width % factor:
        raise UserError(f"{height}x{width} images cannot pass {len(cfg.channels)} UNet levels (each halves the size): "
                        f"use fewer entries in model.unet.channels or a --resolution divisible by {factor}")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return dict(
        sample_size=(height, width),
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.channels),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_groups,
        dropout=cfg.dropout,
        num_class_embeds=num_classes + 1 if num_classes else None,
    ) | cfg.unet_options


def build_unet(cfg: UNetConfig, shape: tuple[int, ...], num_classes: int) -> UNet:
    """A UNet2DModel sized by the config for model tensors of shape (C, H, W)."""
    try:
        return UNet(UNet2DModel(**unet_arguments(cfg, shape, num_classes)))
    except (TypeError, ValueError) as e:
        raise UserError(f"the network cannot be built from model.unet.unet_options={cfg.unet_options}: {e}") from None


# Config keys that describe the data or the labels, not the architecture: the run sets them.
_NOT_ARCHITECTURE = {"sample_size", "in_channels", "out_channels", "num_class_embeds"}


def model_fields(unet_config: dict[str, Any]) -> dict[str, Any]:
    """UNetConfig fields that rebuild a UNet2DModel of this config.json exactly: the fields
    difftrain names, and every other argument that differs from what they build as `unet_options`."""
    c = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    channels = list(c.get("block_out_channels", (224, 448, 672, 896)))
    head_dim = c.get("attention_head_dim", 8)
    if not head_dim or any(ch % head_dim for ch in channels):
        head_dim = None  # diffusers allows these; UNetConfig's check wants a divisor: take the gcd, the option wins
    fields = {
        "channels": channels,
        "attention": [t.startswith("Attn") for t in c.get("down_block_types", ())] or [False] * len(channels),
        "layers_per_block": c.get("layers_per_block", 2),
        "attention_head_dim": head_dim or math.gcd(*channels),
        "norm_groups": c.get("norm_num_groups", 32),
        "dropout": c.get("dropout", 0.0),
    }
    built = unet_arguments(UNetConfig(**fields), (3,) + (8 * 2 ** len(channels),) * 2, 0)
    return fields | {"unet_options": options_beyond(c, built, UNet2DModel)}


def options_beyond(config: dict[str, Any], built: dict[str, Any], cls: type,
                   ignore: set[str] = _NOT_ARCHITECTURE) -> dict[str, Any]:
    """The arguments of `config` (a diffusers config.json) that differ from `built`, the arguments that difftrain's
    fields give (else `cls`'s defaults), `ignore`d ones aside: what unet_options must add to rebuild it exactly."""
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()}
    options = {}
    for key, value in config.items():
        if key in ignore or key not in defaults or key.startswith("_"):
            continue
        if plain(value) != plain(built.get(key, defaults[key])):
            options[key] = value
    return options


def plain(value: Any) -> Any:
    """Tuples and lists compare equal (JSON has only lists)."""
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value
