"""diffusers' AutoencoderKL (the VAE of Stable Diffusion): a latent space for diffusion, trained by difftrain first.

It fits the network protocol, net(x, c_noise, cond) -> its reconstruction of x, so the trainer, EMA, checkpoints and
resume train it as they train a denoiser; its objective (`Reconstruction`) stands where a denoiser stands. Without a
perceptual or adversarial loss (no pretrained LPIPS network can be loaded here) the loss is Stable Diffusion's other
two terms: L1 reconstruction plus a KL term at their weight relative to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from pydantic import ValidationError
from torch import Tensor

from difftrain.config import AutoencoderConfig
from difftrain.errors import UserError
from difftrain.models.unet import options_beyond


class Autoencoder(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    null_label = None  # neither labels nor captions: it reconstructs whatever it is given

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The latent (C', H/f, W/f) of images (C, H, W)."""
        _, h, w = shape
        return self.vae.config.latent_channels, h // self.downsampling, w // self.downsampling

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean of images in [-1, 1]: the deterministic latent that diffusion models."""
        return self.vae.encode(x).latent_dist.mean

    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample

    def reconstruct(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] through the latent (its posterior's mean) and back."""
        return self.decode(self.encode(x))

    def forward(self, x: Tensor, c_noise: Tensor | None = None, cond=None, *, with_kl: bool = False):
        """The reconstruction of x: from the posterior's mean, or in training mode from a sample of it. `with_kl`: also the
        posterior's KL divergence from N(0, I) per image (B,), for the loss (through forward, so DDP sees the call)."""
        posterior = self.vae.encode(x).latent_dist
        reconstruction = self.decode(posterior.sample() if self.training else posterior.mean)
        return (reconstruction, posterior.kl()) if with_kl else reconstruction

    def core(self) -> "Autoencoder":
        return self

    def lora_targets(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


class Reconstruction(torch.nn.Module):
    """The autoencoder's training objective, in the trainer's place of a denoiser: per image, the mean absolute error of
    a reconstruction from a posterior sample plus `kl_weight` x the posterior's KL divergence from N(0, I) per pixel value.

    `formulation` is the run's (the trainer draws its noise levels each step, unused here, so that a run's random streams
    do not depend on what it trains)."""

    def __init__(self, net: torch.nn.Module, formulation, kl_weight: float):
        super().__init__()
        self.net, self.formulation, self.kl_weight = net, formulation, kl_weight

    def with_net(self, net: torch.nn.Module) -> "Reconstruction":
        return Reconstruction(net, self.formulation, self.kl_weight)

    def loss(self, x0: Tensor, cond=None, **unused) -> Tensor:
        reconstruction, kl = self.net(x0, None, None, with_kl=True)
        error = (reconstruction.float() - x0.float()).abs().flatten(1).mean(1)
        return error + self.kl_weight * kl.float() / x0[0].numel()  # the KL is summed over the latent: per pixel value

    def forward(self, x: Tensor, sigma=None, cond=None) -> Tensor:
        """What the autoencoder does in use, called as a denoiser is (the doctor times it): the reconstruction of x."""
        return self.net.reconstruct(x)


def autoencoder_arguments(cfg: AutoencoderConfig, shape: tuple[int, ...]) -> dict[str, Any]:
    """AutoencoderKL's arguments for the config and images of shape (C, H, W)."""
    if len(shape) != 3:
        raise UserError(f"model.arch=autoencoder takes images (C, H, W); this data's items are {tuple(shape)}")
    c, h, w = shape
    factor = 2 ** (len(cfg.channels) - 1)
    if h % factor or w % factor:
        raise UserError(f"model.autoencoder.channels has {len(cfg.channels)} levels, which halve the image "
                        f"{len(cfg.channels) - 1} times; {h}x{w} images do not divide by {factor}: use fewer levels or resize "
                        "the images (data prepare --resolution)")
    return dict(in_channels=c, out_channels=c, down_block_types=("DownEncoderBlock2D",) * len(cfg.channels),
                up_block_types=("UpDecoderBlock2D",) * len(cfg.channels), block_out_channels=tuple(cfg.channels),
                layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
                norm_num_groups=cfg.norm_groups, sample_size=max(h, w), mid_block_add_attention=cfg.attention)


def build_autoencoder(cfg: AutoencoderConfig, shape: tuple[int, ...], num_classes: int) -> Autoencoder:
    return Autoencoder(AutoencoderKL(**autoencoder_arguments(cfg, shape)))


# ---- a diffusers AutoencoderKL folder as a latent space (model.latent=FOLDER) ----

# Arguments about the images or the latents' use, not the weights: the data and the run set them.
_NOT_ARCHITECTURE = {"in_channels", "out_channels", "sample_size", "scaling_factor", "force_upcast"}


@dataclass
class AutoencoderFolder:
    path: Path  # the AutoencoderKL folder (a pipeline's vae/)
    fields: dict[str, Any]  # AutoencoderConfig fields that rebuild it
    channels: int  # of the images it encodes
    scaling_factor: float  # what its latents are multiplied by before diffusion
    weights: Path  # its safetensors file


def autoencoder_folder(given: str | Path) -> AutoencoderFolder | None:
    """The diffusers AutoencoderKL that `given` names (the folder, or a pipeline folder's vae/), or None when `given`
    is no diffusers folder; a clear error for one difftrain cannot rebuild."""
    path = Path(given)
    if (path / "model_index.json").is_file():
        if not (path / "vae" / "config.json").is_file():
            raise UserError(f"--latent {given}: the pipeline folder has no vae/ (an AutoencoderKL): give one that has")
        path = path / "vae"
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "_diffusers_version" not in config:
        return None
    if config.get("_class_name") != "AutoencoderKL":
        raise UserError(f"--latent {given}: {path / 'config.json'} is a {config.get('_class_name')!r}, not an AutoencoderKL")
    weights = path / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise UserError(f"--latent {given}: {weights} is missing; difftrain reads an AutoencoderKL's weights from "
                        "safetensors (save it with save_pretrained(..., safe_serialization=True))")
    c = {k: v for k, v in config.items() if not k.startswith("_")}
    fields = {"channels": list(c.get("block_out_channels", (64,))), "layers_per_block": c.get("layers_per_block", 1),
              "latent_channels": c.get("latent_channels", 4), "norm_groups": c.get("norm_num_groups", 32),
              "attention": c.get("mid_block_add_attention", True)}
    try:
        cfg = AutoencoderConfig(**fields)
    except ValidationError as e:
        raise UserError(f"--latent {given}: difftrain cannot rebuild this AutoencoderKL ({e.errors()[0]['msg']})") from None
    side = 8 * 2 ** (len(cfg.channels) - 1)
    ours = autoencoder_arguments(cfg, (c.get("in_channels", 3), side, side))
    differ = [f"{key}={value!r}" for key, value in options_beyond(c, ours, AutoencoderKL, _NOT_ARCHITECTURE).items()]
    if differ:
        raise UserError(f"--latent {given}: difftrain's latent diffusion cannot use this AutoencoderKL as it is "
                        f"({', '.join(differ)}); it takes Stable Diffusion's kind of VAE (Down/UpEncoderBlock2D levels, "
                        "no latent shift)")
    return AutoencoderFolder(path, fields, c.get("in_channels", 3), float(c.get("scaling_factor", 0.18215)), weights)
