"""Classifier-free guidance on top of a class-conditional denoiser."""

from __future__ import annotations

import torch
from torch import Tensor

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.samplers import DenoiseFn


def guided_denoiser(
    denoiser: Denoiser, class_labels: Tensor | None, guidance: float = 1.0, null_label: int | None = None
) -> DenoiseFn:
    """Ho & Salimans 2022: D_u + w (D_c - D_u), both branches in one batched forward; labels are class indices (B,)."""
    if class_labels is None or guidance == 1.0:
        # w = 1 is the conditional model itself: one plain call.
        return lambda x, sigma: denoiser(x, sigma.reshape(-1).expand(x.shape[0]), class_labels)
    if null_label is None:
        raise ValueError("classifier-free guidance != 1 needs null_label, the class index trained as 'no label'")
    labels = torch.cat([class_labels, torch.full_like(class_labels, null_label)])

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0])
        # Conditional and unconditional halves in one forward pass.
        d_cond, d_uncond = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), labels).chunk(2)
        return d_uncond + guidance * (d_cond - d_uncond)

    return denoise
