"""Exponential moving average of the weights, its length counted in training images."""

from __future__ import annotations

import copy

import torch

from difftrain.store.posthoc_ema import exponent, power_beta
from difftrain.training.sharding import local_shard


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
    def update(self, net: torch.nn.Module, beta: float, applied: torch.Tensor | None = None) -> None:
        """One EMA step; `applied` (a 0-d bool tensor) False leaves the EMA as it is, without a host sync."""
        # Under FSDP the EMA is sharded like the network: each process updates its own shards.
        ema_params = [local_shard(p) for p in self.net.parameters()]
        params = [local_shard(p.detach()) for p in net.parameters()]
        if applied is None:
            torch._foreach_lerp_(ema_params, params, 1 - beta)
        else:
            # ema += applied*(1-beta)*(net - ema): multi-tensor kernels scaled by a device scalar (the
            # difference is a temporary copy of the weights; cheap next to the step's activations).
            diffs = torch._foreach_sub(params, ema_params)
            torch._foreach_mul_(diffs, applied.float() * (1 - beta))
            torch._foreach_add_(ema_params, diffs)
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)


class PowerEMAs:
    """Post-hoc EMA's stored profiles (store/posthoc_ema.py): one frozen copy of the network per sigma_rel, updated as
    a power-function EMA (EDM2), its decay growing with the images seen."""

    def __init__(self, net: torch.nn.Module, sigmas: list[float]):
        for sigma in sigmas:
            exponent(sigma)  # (refused here, before training, if out of range)
        self.sigmas = list(sigmas)
        self.emas = [EMA(net) for _ in sigmas]

    def update(self, net: torch.nn.Module, images: int, batch: int, applied: torch.Tensor | None) -> None:
        """The update after a step of `batch` images that brought the count to `images`."""
        for sigma, ema in zip(self.sigmas, self.emas):
            ema.update(net, power_beta(sigma, images, batch), applied)
