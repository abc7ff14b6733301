"""Class labels as a condition: {"label": int64 (B,)}, with one extra class index as the "no label"."""

from __future__ import annotations

import torch
from torch import Tensor

Condition = dict[str, Tensor]


class ClassLabels:
    """The network embeds `null` (its extra row, index num_classes) as "no label" (Ho & Salimans 2022)."""

    key = "label"

    def __init__(self, null: int):
        self.null = null

    def encode(self, labels: Tensor | None) -> Condition | None:
        """The condition of a batch of class indices (None: unconditional)."""
        return None if labels is None else {self.key: labels}

    def drop(self, cond: Condition | None, keep: Tensor) -> Condition | None:
        """Label dropout: the null label where `keep` (bool (B,)) is False."""
        if cond is None:
            return None
        return {**cond, self.key: torch.where(keep, cond[self.key], self.null)}

    def null_like(self, cond: Condition) -> Condition:
        """The unconditional counterpart of `cond`, for the guidance's second branch."""
        return {**cond, self.key: torch.full_like(cond[self.key], self.null)}
