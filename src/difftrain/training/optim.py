"""Optimizers and learning-rate schedules; schedules count training images, not steps."""

from __future__ import annotations

import math

import torch

from difftrain.config import OptimConfig
from difftrain.training.lamb import Lamb


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The configured optimizer. Both honour `optimizer.found_inf` (a 0-d tensor, 1 = skip this
    step), which lets the trainer skip a non-finite step without reading anything back from the device."""
    params = list(params)
    if cfg.name == "lamb":
        return Lamb(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    # One fused kernel for the whole update (CPU and CUDA; torch >= 2.4).
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer honours `found_inf` (fused torch kernels and our LAMB do)."""
    return isinstance(optimizer, Lamb) or bool(optimizer.defaults.get("fused"))


def learning_rate(cfg: OptimConfig, images: int, total_images: int) -> float:
    """LR after `images` training images: linear warm-up, then constant, cosine or inverse-sqrt."""
    lr = cfg.lr
    if cfg.schedule == "cosine":
        progress = min(max(images - cfg.warmup_images, 0) / max(total_images - cfg.warmup_images, 1), 1.0)
        lr *= 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "inverse_sqrt":
        lr /= math.sqrt(max(images / cfg.decay_images, 1.0))  # Karras et al. 2024 (EDM2)
    if cfg.warmup_images:
        lr *= min(images / cfg.warmup_images, 1.0)
    return lr
