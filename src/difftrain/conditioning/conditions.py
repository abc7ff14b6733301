"""The run's conditioners together: class labels (when the data has classes) or captions (captioned images), and
observed values (when the data's items can be partly known: series). The trainer, the samplers and guidance see one condition mapping and this one object."""

from __future__ import annotations

import torch
from torch import Tensor

from difftrain.conditioning.captions import Captions
from difftrain.conditioning.labels import ClassLabels, Condition
from difftrain.conditioning.observed import ObservedValues


class Conditions:
    def __init__(self, null_label: int | None, observe: dict[str, float] | None = None, caption_pad: int | None = None):
        # The per-item condition the batches carry beside the data: class indices (B,), or caption rows (B, T).
        self.labels = ClassLabels(null_label) if caption_pad is None else Captions(caption_pad)
        self.observed = ObservedValues(observe) if observe else None

    def training(self, x0: Tensor, labels: Tensor | None, keep: Tensor, mask: Tensor | None) -> Condition | None:
        """A training batch's condition: its labels (or captions) dropped where `keep` is False; its values observed where `mask` is 1
        (drawn by `draw_mask` for the whole global batch, so the split into micro-batches does not change it)."""
        cond = self.labels.drop(self.labels.encode(labels), keep)
        if self.observed is not None and mask is not None:
            cond = {**(cond or {}), **ObservedValues.encode(x0, mask)}
        return cond

    def draw_mask(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor | None:
        return None if self.observed is None else self.observed.draw_mask(shape, generator)

    def sampling(self, labels: Tensor | None, known: Tensor | None = None) -> Condition | None:
        """The condition of a sampling batch: class labels (or caption rows), and `known` model tensors (NaN where to generate)."""
        cond = self.labels.encode(labels)
        if known is not None:
            cond = {**(cond or {}), **ObservedValues.encode(torch.nan_to_num(known), torch.isfinite(known))}
        return cond

    def null_like(self, cond: Condition) -> Condition:
        """The unconditional counterpart of `cond` (guidance's second branch): no label or caption, nothing observed."""
        if self.labels.key in cond:
            cond = self.labels.null_like(cond)
        if "mask" in cond:
            cond = {**cond, "observed": torch.zeros_like(cond["observed"]), "mask": torch.zeros_like(cond["mask"])}
        return cond


def takes_captions(net: torch.nn.Module) -> bool:
    """Whether the network has a caption encoder (its `caption_pad`: the padding id of its captions)."""
    return getattr(net, "caption_pad", None) is not None


def conditions_of_network(net: torch.nn.Module, observe: dict[str, float] | None = None) -> Conditions:
    """The conditioners a network takes: its class labels (`null_label`), or its captions (`caption_pad`), and observed
    values when given the training mix."""
    return Conditions(net.null_label, observe, net.caption_pad if takes_captions(net) else None)
