"""Observed values as a condition (CSDI, Tashiro et al. 2021): {"observed": x * mask, "mask": mask}, both shaped like
the model tensors. One network so conditioned generates (nothing observed), forecasts (the past observed) and imputes
(everything but the gaps observed). Training draws a mask per item from a mix of strategies; the null condition is
"nothing observed", which is also what classifier-free guidance pairs a condition with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from difftrain.conditioning.labels import Condition

# Mask strategies of training, each drawn with its probability (model.observe): what the model learns to fill in.
STRATEGIES = {
    "none": "nothing observed: unconditional generation",
    "random": "each value observed with a probability drawn per item from U(0, 1): imputation of scattered gaps",
    "block": "every channel observed but over one random stretch of time: imputation of a gap in all channels",
    "history": "the first k steps observed, k drawn per item from 1..L-1: forecasting the rest",
}


class ObservedValues:
    """Builds, drops and nulls {"observed", "mask"} for items of shape (C, L): channels, then time."""

    keys = ("observed", "mask")

    def __init__(self, strategies: dict[str, float]):
        unknown = set(strategies) - set(STRATEGIES)
        if unknown or not strategies or sum(strategies.values()) <= 0:
            raise ValueError(f"observation strategies must be weights of {', '.join(STRATEGIES)}, got {strategies}")
        self.names = list(strategies)
        total = sum(strategies.values())
        self.weights = torch.tensor([strategies[k] / total for k in self.names], dtype=torch.float64)

    @staticmethod
    def encode(values: Tensor, mask: Tensor) -> Condition:
        """The condition of known `values` where `mask` is 1 (values elsewhere are ignored; NaN allowed there)."""
        mask = mask.to(values.dtype)
        return {"observed": torch.where(mask > 0, values, torch.zeros_like(values)), "mask": mask}

    def draw_mask(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Training masks of shape (B, C, L), one per item, a pure function of the generator's state: 1 = observed."""
        b, c, length = shape
        device = generator.device
        # Every random number is drawn for every item, whatever its strategy, so the stream does not depend on the mix.
        pick = torch.multinomial(self.weights.to(device), b, replacement=True, generator=generator)
        ratio = torch.rand(b, 1, 1, generator=generator, device=device)
        scattered = (torch.rand(b, c, length, generator=generator, device=device) >= ratio).float()
        t = torch.arange(length, device=device).view(1, 1, -1)
        start = (torch.rand(b, 1, 1, generator=generator, device=device) * length).long()
        width = 1 + (torch.rand(b, 1, 1, generator=generator, device=device) * (length // 2)).long()
        gap = ((t < start) | (t >= start + width)).float().expand(b, c, length)
        k = 1 + (torch.rand(b, 1, 1, generator=generator, device=device) * (length - 1)).long()
        history = (t < k).float().expand(b, c, length)
        masks = {"none": torch.zeros_like(scattered), "random": scattered, "block": gap, "history": history}
        stacked = torch.stack([masks[name] for name in self.names])  # (S, B, C, L)
        return stacked[pick, torch.arange(b, device=device)]

    def drop(self, cond: Condition, keep: Tensor) -> Condition:
        """Nothing observed where `keep` (bool (B,)) is False."""
        mask = cond["mask"] * keep.view(-1, *[1] * (cond["mask"].ndim - 1)).to(cond["mask"].dtype)
        return {**cond, "observed": cond["observed"] * mask, "mask": mask}
