"""Captions as a condition: {"caption": int64 (B, T) character ids, padded}. The null caption (caption dropout in
training, the guidance's unconditional branch) is a row of padding only: the empty caption, as GLIDE drops captions
to the empty string."""

from __future__ import annotations

import torch
from torch import Tensor

from difftrain.conditioning.labels import Condition


class Captions:
    key = "caption"

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def encode(self, rows: Tensor | None) -> Condition | None:
        return None if rows is None else {self.key: rows.long()}

    def drop(self, cond: Condition | None, keep: Tensor) -> Condition | None:
        """The empty caption where `keep` (bool (B,)) is False."""
        if cond is None:
            return None
        return {**cond, self.key: torch.where(keep[:, None], cond[self.key], self.pad_id)}

    def null_like(self, cond: Condition) -> Condition:
        return {**cond, self.key: torch.full_like(cond[self.key], self.pad_id)}
