"""Exponential moving average of the weights, its length counted in training images."""

from __future__ import annotations

import copy

import torch


def ema_beta(batch_images: int, images_seen: int, halflife_images: int, rampup: float | None) -> float:
    """Per-step decay so the EMA halves every `halflife_images` (Karras et al. 2022, training loop)."""
    halflife = halflife_images
    if rampup is not None:
        halflife = min(halflife, images_seen * rampup)
    return 0.5 ** (batch_images / max(halflife, 1e-8))


class EMA:
    """A frozen copy of the network updated as ema = beta*ema + (1-beta)*net."""

    def __init__(self, net: torch.nn.Module):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module, beta: float) -> None:
        for p_ema, p in zip(self.net.parameters(), net.parameters()):
            p_ema.lerp_(p.detach(), 1 - beta)
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)
