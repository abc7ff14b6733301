"""Images diffused in an autoencoder's latent space (latent diffusion, Rombach et al. 2022).

Everything a user sees stays the images': datasets, samples files, previews, classifiers, every image metric. Only the
model's tensors differ: the latents of a frozen autoencoder (models/autoencoder.py), scaled to unit RMS as Stable
Diffusion scales its own. Training batches read latents encoded once (`batch_view`), not images, so a step never runs the
encoder; samples are decoded once at the end.

The spec's "latent" entry pins the autoencoder: its settings, its weights file with their SHA-256, the latent shape and
the scale.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.hashing import sha256_file
from difftrain.modalities.base import Dequantized
from difftrain.modalities.image import ImageModality, to_model, to_uint8

ENCODE_BATCH = 256


class LatentCodes:
    """What training batches of latents need of a modality: they are model tensors already."""

    def __init__(self, model_shape: tuple[int, ...]):
        self.model_shape = model_shape

    has_gaps = False

    def to_model(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float()

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        return refuse_mirror()


def refuse_mirror():
    # A learned autoencoder does not commute with mirroring: a mirrored latent is the latent of no image.
    raise UserError("train.hflip mirrors images; this model sees their latents, encoded once: set train.hflip=false")


class LatentImageModality(ImageModality):
    """Images (H, W, C) whose model tensors are latents; spec: the image spec plus "latent" (see the module's text)."""

    spec_keys = ("kind", "shape", "captions", "latent")

    @property
    def latent(self) -> dict[str, Any]:
        return self.spec["latent"]

    @cached_property
    def autoencoder(self) -> torch.nn.Module:
        """The frozen autoencoder, its weights checked against the pinned hash."""
        from difftrain.config import AutoencoderConfig
        from difftrain.models.autoencoder import build_autoencoder

        weights = Path(self.latent["weights"])
        if not weights.is_file():
            raise UserError(f"{weights}, the autoencoder of this latent diffusion run, is missing: the run needs it to "
                            "turn latents into images")
        if sha256_file(weights) != self.latent["sha256"]:
            raise UserError(f"{weights} is not the autoencoder this run was trained with (its SHA-256 differs)")
        h, w, c = self.shape
        net = build_autoencoder(AutoencoderConfig(**self.latent["autoencoder"]), (c, h, w), 0)
        state = load_file(weights)
        # A difftrain autoencoder's weights are the wrapper's (vae.*); a diffusers folder's, the AutoencoderKL's own.
        if any(k.startswith("vae.") for k in state):
            net.load_state_dict(state)
        else:
            net.vae._fix_state_dict_keys_on_load(state)  # older attention names (query, key, ...) as diffusers renames them
            net.vae.load_state_dict(state)
        return net.eval().requires_grad_(False)

    @property
    def model_shape(self) -> tuple[int, ...]:
        return tuple(self.latent["shape"])

    @property
    def scale(self) -> float:
        return float(self.latent["scale"])

    @torch.no_grad()
    def to_model(self, batch: torch.Tensor) -> torch.Tensor:
        vae = self.autoencoder.to(batch.device)
        return vae.encode(to_model(batch)) * self.scale

    @torch.no_grad()
    def from_model(self, x: torch.Tensor) -> np.ndarray:
        vae = self.autoencoder.to(x.device)
        return np.concatenate([to_uint8(vae.decode(x[i:i + ENCODE_BATCH].float() / self.scale))
                               for i in range(0, len(x), ENCODE_BATCH)]) if len(x) else np.zeros((0, *self.shape), np.uint8)

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        return refuse_mirror()

    def default_sigma_data(self, train: np.ndarray) -> float:
        return 1.0  # latents are scaled to unit RMS

    def encode(self, images: np.ndarray, device: torch.device | str = "cpu", progress=None) -> np.ndarray:
        """float32 latents (N, *model_shape) of uint8 images, in batches."""
        parts = []
        for i in range(0, len(images), ENCODE_BATCH):
            parts.append(self.to_model(torch.from_numpy(np.ascontiguousarray(images[i:i + ENCODE_BATCH])).to(device)).cpu().numpy())
            if progress:
                progress(min(i + ENCODE_BATCH, len(images)))
        return np.concatenate(parts) if parts else np.zeros((0, *self.model_shape), np.float32)

    def batch_view(self, data: np.ndarray, cache: Path | None = None, device: torch.device | str = "cpu"):
        """The latents of `data`, encoded once (kept in `cache`, a .npy file, when given), and their batches' modality."""
        if cache is not None and cache.is_file():
            codes = np.load(cache)
            if codes.shape == (len(data), *self.model_shape):
                return codes, LatentCodes(self.model_shape)
        codes = self.encode(data, device)
        if cache is not None:
            atomic.write_npy(cache, codes)
        return codes, LatentCodes(self.model_shape)

    def dequantize(self, batch: torch.Tensor, generator: torch.Generator) -> Dequantized:
        raise UserError("a latent diffusion model's likelihood is of its latents, not of the images' pixels, so it has no "
                        "bits per dimension to compare: leave nll out of eval.metrics")
