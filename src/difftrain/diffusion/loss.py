"""Denoising score matching loss with per-noise-level weightings, all written as weights on the x0-space error."""

from __future__ import annotations

import torch
from torch import Tensor

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.formulations import Formulation

WEIGHTINGS = ("edm", "min_snr", "uniform")


def loss_weight(sigma: Tensor, formulation: Formulation, weighting: str, min_snr_gamma: float = 5.0) -> Tensor:
    """Weight lambda(sigma) on ||D(x0 + sigma*n, sigma) - x0||^2, one per noise level (B,).

    "uniform": 1/c_out^2, i.e. plain MSE on the network's own target (eps, v or EDM's F; DDPM's L_simple).
    "edm": (sigma^2 + sigma_data^2) / (sigma*sigma_data)^2 (Karras 2022 eq. 8).
    "min_snr": min(SNR, gamma) with SNR = 1/sigma^2 (Hang et al. 2023). Since eps-MSE = SNR * x0-MSE and
    v-MSE = (SNR + 1) * x0-MSE, this is min(SNR, gamma)/SNR on eps-MSE and min(SNR, gamma)/(SNR + 1) on v-MSE.
    """
    sigma = sigma.float()
    if weighting == "uniform":
        _, c_out, _, _ = formulation.scalings(sigma)
        return 1 / c_out**2
    if weighting == "edm":
        sd = formulation.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2
    if weighting == "min_snr":
        return (1 / sigma**2).clamp(max=min_snr_gamma)
    raise ValueError(f"unknown loss weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    cond: dict[str, Tensor] | None = None,
    *,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    generator: torch.Generator | None = None,
    sigma: Tensor | None = None,
    noise: Tensor | None = None,
    where: Tensor | None = None,
) -> Tensor:
    """Per-sample loss (B,): lambda(sigma) * mean ||D(x0 + sigma*n, sigma) - x0||^2 (Karras 2022 eq. 2, 8).

    `sigma` (B,) and `noise` default to fresh draws from `generator`; the trainer passes them in
    so that a sample's noise does not depend on how the batch is split. `where` (bool, shaped like x0): average the
    error over these elements only (data with gaps: a missing value has no target). The denoiser's `simplex` slices
    (categories read out through a softmax) are weighted 1 instead of lambda(sigma).
    """
    formulation = denoiser.formulation
    x0 = x0.float()
    if sigma is None:
        sigma = formulation.sample_training_sigma(x0.shape[0], generator=generator, device=x0.device)
    n = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32) if noise is None else noise.float()
    x = x0 + sigma.view((-1,) + (1,) * (x0.ndim - 1)) * n
    err = (denoiser(x, sigma, cond) - x0) ** 2
    weight = loss_weight(sigma, formulation, weighting, min_snr_gamma)
    if denoiser.simplex:
        # A category read out through a softmax has no skip path: its error is on the network's own scale already, so
        # it takes a unit weight at every noise level (what the numbers get on F: lambda * c_out^2 = 1), not lambda,
        # which near sigma = 0.03 would weigh a category that the input all but shows ~1000 times.
        on_simplex = torch.zeros(x0.shape[-1], dtype=torch.bool, device=x0.device)
        for part in denoiser.simplex:
            on_simplex[part] = True
        err = torch.where(on_simplex, err / weight.view((-1,) + (1,) * (x0.ndim - 1)), err)
    dims = tuple(range(1, x0.ndim))
    if where is None:
        per_item = err.mean(dim=dims)
    else:
        where = where.to(err.dtype)
        per_item = (err * where).sum(dim=dims) / where.sum(dim=dims).clamp(min=1)
    return weight * per_item
