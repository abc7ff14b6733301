"""Formulations (preconditioning), losses and weightings, samplers and guidance, all over one denoiser D(x, sigma)."""

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.formulations import EDM, VP, Formulation, build_formulation
from difftrain.diffusion.guidance import guided_denoiser
from difftrain.diffusion.loss import WEIGHTINGS, denoising_loss, loss_weight
from difftrain.diffusion.masked import MASKED_SAMPLERS, MaskedDenoiser, MaskedDiffusion, negative_elbo, sample_masked
from difftrain.diffusion.samplers import (
    SAMPLERS,
    DenoiseFn,
    ancestral_step,
    karras_sigmas,
    network_evaluations,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sampling_sigmas,
)

__all__ = [
    "EDM",
    "MASKED_SAMPLERS",
    "MaskedDenoiser",
    "MaskedDiffusion",
    "negative_elbo",
    "sample_masked",
    "SAMPLERS",
    "VP",
    "WEIGHTINGS",
    "DenoiseFn",
    "Denoiser",
    "Formulation",
    "ancestral_step",
    "build_formulation",
    "denoising_loss",
    "guided_denoiser",
    "karras_sigmas",
    "loss_weight",
    "network_evaluations",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sampling_sigmas",
]
