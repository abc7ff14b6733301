"""Samplers over a denoiser in sigma space (x = x0 + sigma * n), one signature: (denoise, x, sigmas, ...)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from difftrain.diffusion.formulations import VP, Formulation

DenoiseFn = Callable[[Tensor, Tensor], Tensor]  # (x, sigma as 0-d tensor) -> x0_hat


def karras_sigmas(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: torch.device | str | None = None
) -> Tensor:
    """Karras 2022 eq. 5: n sigmas descending from sigma_max to sigma_min, evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float().to(device)


def sampling_sigmas(
    formulation: Formulation, steps: int, schedule: str = "karras", device: torch.device | str | None = None
) -> Tensor:
    """steps + 1 descending sigmas ending in 0: "karras" (eq. 5, rho=7), or "uniform" timesteps (VP) / log-sigma (EDM)."""
    if schedule == "karras":
        return karras_sigmas(steps, formulation.sigma_min, formulation.sigma_max, device=device)
    if schedule != "uniform":
        raise ValueError(f"unknown sigma schedule {schedule!r}: choose 'karras' or 'uniform'")
    if isinstance(formulation, VP):
        sigmas = formulation.timestep_sigmas(steps)
    else:
        log_sigmas = torch.linspace(math.log(formulation.sigma_max), math.log(formulation.sigma_min), steps)
        sigmas = log_sigmas.exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def sample_euler(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x))/sigma (Karras 2022 eq. 4); = DDIM, eta=0."""
    return sample_ddim(denoise, x, sigmas, generator=generator, eta=0.0)


@torch.no_grad()
def sample_heun(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    s_churn: float = 0.0,  # total added noise over the run; 0 = deterministic ODE sampler
    s_tmin: float = 0.0,  # churn only for sigma in [s_tmin, s_tmax]
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,  # >1 slightly over-noises to offset the denoiser's detail loss
    sigma_max: float = float("inf"),  # the formulation's sigma_max: churn never raises sigma above it
) -> Tensor:
    """Karras 2022 Algorithm 2: Heun's 2nd-order method with optional churn (stochastic sampler)."""
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # Increase noise temporarily, but not above sigma_max (nor above a sigma that already is): beyond VP's
        # sigma table the net would see a clamped timestep while c_in used the real sigma.
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = torch.minimum(sigma * (1 + gamma), sigma.clamp(min=sigma_max))
        if gamma > 0:
            x = x + (sigma_hat**2 - sigma**2).sqrt() * s_noise * _randn_like(x, generator)
        # Euler step.
        d = (x - denoise(x, sigma_hat)) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        # Apply 2nd order correction (not on the last step, where the ODE is undefined at sigma=0).
        if sigma_next > 0:
            d_prime = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Lu et al. 2022, DPM-Solver++(2M), multistep in lambda = -ln(sigma), as in k-diffusion."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            # The exponential integrator lands exactly on the prediction at sigma=0.
            x = denoised
            break
        h = sigma.log() - sigma_next.log()  # step in lambda = -ln(sigma)
        if old_denoised is None:
            # First step: 1st-order (DPM-Solver++(1) = DDIM).
            denoised_d = denoised
        else:
            # Linear extrapolation of the prediction from the previous step.
            r = (sigmas[i - 1].log() - sigma.log()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - torch.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """sigma_down, sigma_up of an ancestral step sigma -> sigma_next: sigma_down^2 + sigma_up^2 = sigma_next^2."""
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up


@torch.no_grad()
def sample_ddim(
    denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None, eta: float = 0.0
) -> Tensor:
    """Song et al. 2021 (DDIM, eq. 12) in sigma space: an Euler step to sigma_down, then fresh noise of std sigma_up.

    With alpha = 1/sqrt(1 + sigma^2), DDIM's x_{t-1} = alpha' x0_hat + sqrt(1 - alpha'^2 - s_t^2) eps_hat + s_t z,
    divided by alpha', is x0_hat + sigma_down eps_hat + sigma_up z with sigma_up = s_t/alpha' and
    sigma_down = sqrt(sigma_next^2 - sigma_up^2). As eps_hat = (x - x0_hat)/sigma, the first two terms are one
    Euler step from sigma to sigma_down. Substituting DDIM's s_t = eta sqrt((1-abar')/(1-abar)) sqrt(1-abar/abar')
    with abar = alpha^2 gives sigma_up = eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2). eta=0 is plain
    Euler; eta=1 gives s_t^2 = DDPM's posterior variance, i.e. a draw from q(x_{t-1} | x_t, x0_hat) (Ho 2020 eq. 7).
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        # Euler step to sigma_down.
        d = (x - denoise(x, sigma)) / sigma
        x = x + (sigma_down - sigma) * d
        # Add fresh noise up to sigma_next.
        if sigma_up > 0:
            x = x + sigma_up * _randn_like(x, generator)
    return x


@torch.no_grad()
def sample_ddpm(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Ho et al. 2020 ancestral sampling (posterior variance beta_tilde): DDIM with eta=1, see sample_ddim."""
    return sample_ddim(denoise, x, sigmas, generator=generator, eta=1.0)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
}


def network_evaluations(sampler: str, steps: int) -> int:
    """Denoiser calls for `steps` steps: heun needs two per step except the last (2n-1), the others one."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    return 2 * steps - 1 if sampler == "heun" else steps
