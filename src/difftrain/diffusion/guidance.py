"""Classifier-free guidance on top of a conditional denoiser."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.samplers import DenoiseFn

Condition = dict[str, Tensor]


def guided_denoiser(denoiser: Denoiser, cond: Condition | None, guidance: float = 1.0,
                    null_like: Callable[[Condition], Condition] | None = None) -> DenoiseFn:
    """Ho & Salimans 2022: D_u + w (D_c - D_u), both branches in one batched forward; `null_like(cond)` is the
    unconditional condition (the conditioner's)."""
    if cond is None or guidance == 1.0:
        # w = 1 is the conditional model itself: one plain call.
        return lambda x, sigma: denoiser(x, sigma.reshape(-1).expand(x.shape[0]), cond)
    if null_like is None:
        raise ValueError("classifier-free guidance != 1 needs the conditioner's null condition")
    null = null_like(cond)
    both = {key: torch.cat([cond[key], null[key]]) for key in cond}

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0])
        # Conditional and unconditional halves in one forward pass.
        d_cond, d_uncond = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
        return d_uncond + guidance * (d_cond - d_uncond)

    return denoise
