"""Formulations: preconditioning and training noise levels in EDM's sigma space (x = x0 + sigma * n)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


class Formulation:
    """A way to turn a raw network F into a denoiser D = c_skip*x + c_out*F(c_in*x, c_noise) and to train it."""

    sigma_min: float  # smallest noise level the model is meant to see
    sigma_max: float  # largest noise level; samplers start here
    sigma_data: float  # standard deviation of the data (used by the EDM loss weighting)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """c_skip, c_out, c_in, c_noise for noise levels sigma (B,), each shaped like sigma."""
        raise NotImplementedError

    def sample_training_sigma(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """n noise levels (n,) drawn from the training distribution."""
        raise NotImplementedError

    def sample_training_noise(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                              device: torch.device | str | None = None) -> Tensor:
        """The training noise n of x = x0 + sigma * n: standard normal."""
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

    def prior_std(self, sigma: float) -> float:
        """Std of the noise samplers start from at noise level sigma (the first sampling sigma).

        Karras 2022 Algorithm 1/2 start at sigma itself, ignoring the data's variance (negligible at sigma_max=80).
        """
        return sigma


@dataclass(eq=False)
class EDM(Formulation):
    """Karras et al. 2022 ("Elucidating the design space"), Table 1 preconditioning and log-normal training sigma."""

    sigma_data: float = 0.5  # std of images in [-1, 1] (paper's value)
    p_mean: float = -1.2  # mean of ln(sigma) during training
    p_std: float = 1.2  # std of ln(sigma) during training
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Karras 2022 Table 1: c_skip, c_out, c_in keep the network's input and target at unit variance."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def sample_training_sigma(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Karras 2022 Sec. 5: ln(sigma) ~ N(p_mean, p_std^2)."""
        rnd = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
        return (self.p_mean + self.p_std * rnd).exp()


@dataclass(eq=False)
class VP(Formulation):
    """DDPM's discrete schedule (Ho et al. 2020) in sigma space, with eps- or v-prediction (Salimans & Ho 2022)."""

    prediction: str = "eps"  # "eps" (Ho 2020) or "v" (Salimans & Ho 2022)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000
    beta_schedule: str = "linear"  # diffusers' names: "linear" or "scaled_linear"
    sigma_data: float = 0.5  # only used by the "edm" loss weighting
    sigma_min: float = field(init=False)
    sigma_max: float = field(init=False)
    alphas_cumprod: Tensor = field(init=False, repr=False)  # abar_t, float64, (T,)
    sigmas: Tensor = field(init=False, repr=False)  # sigma_t = sqrt((1 - abar_t) / abar_t), float32, (T,), ascending

    def __post_init__(self) -> None:
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"VP prediction must be 'eps' or 'v', got {self.prediction!r}")
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=torch.float64)
        elif self.beta_schedule == "scaled_linear":
            # Linear in sqrt(beta), as in diffusers (and Stable Diffusion).
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.num_timesteps, dtype=torch.float64) ** 2
        else:
            raise ValueError(f"VP beta_schedule must be 'linear' or 'scaled_linear', got {self.beta_schedule!r}")
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        # x_t = sqrt(abar) x0 + sqrt(1 - abar) n, divided by sqrt(abar), is x0 + sigma n.
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt().float()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep of sigma, linear in log-sigma between table entries (k-diffusion DiscreteSchedule)."""
        log_sigmas = self.sigmas.to(sigma.device).log()
        log_sigma = sigma.float().log()
        # Upper neighbour in the ascending table; sigmas outside the table clamp to its ends.
        high = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, self.num_timesteps - 1)
        low = high - 1
        w = ((log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
        return low + w

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Inverse of sigma_to_t: log-linear interpolation of the sigma table at fractional timesteps."""
        log_sigmas = self.sigmas.to(t.device).log()
        t = t.float().clamp(0, self.num_timesteps - 1)
        low = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - low
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """c_in*x is DDPM's x_t; eps: x0 = x - sigma*eps; v: x0 = x/(sigma^2+1) - sigma/sqrt(sigma^2+1) * v."""
        c_in = 1 / (sigma**2 + 1).sqrt()
        if self.prediction == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        else:
            c_skip, c_out = 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1).sqrt()
        return c_skip, c_out, c_in, self.sigma_to_t(sigma)

    def sample_training_sigma(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Ho 2020 Algorithm 1: t ~ Uniform{0, ..., T-1}, sigma = sigmas[t]."""
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=device)
        return self.sigmas.to(t.device)[t]

    def prior_std(self, sigma: float) -> float:
        """sqrt(1 + sigma^2): std of x0 + sigma*n for unit-variance data; at sigma_max, DDPM's x_T ~ N(0, I) / sqrt(abar_T)."""
        return math.sqrt(1 + sigma**2)

    def timestep_sigmas(self, steps: int) -> Tensor:
        """Descending sigmas (steps,) at evenly spaced timesteps T-1, ..., T/steps-1 (diffusers' "trailing" spacing)."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be between 1 and num_timesteps={self.num_timesteps}, got {steps}")
        t = (self.num_timesteps - torch.arange(steps, dtype=torch.float64) * self.num_timesteps / steps).round() - 1
        return self.sigmas[t.long()]


def build_formulation(
    name: str,
    *,
    prediction: str = "eps",
    sigma_data: float = 0.5,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    num_timesteps: int = 1000,
    beta_schedule: str = "linear",
) -> Formulation:
    """The formulation named "edm" or "vp"; EDM reads sigma_data/p_mean/p_std, VP the prediction and beta schedule."""
    if name == "edm":
        return EDM(sigma_data=sigma_data, p_mean=p_mean, p_std=p_std)
    if name == "vp":
        return VP(
            prediction=prediction,
            beta_start=beta_start,
            beta_end=beta_end,
            num_timesteps=num_timesteps,
            beta_schedule=beta_schedule,
            sigma_data=sigma_data,
        )
    raise ValueError(f"unknown formulation {name!r}: choose 'edm' or 'vp'")

