"""A DiT-style transformer over time for multivariate series windows: net(x (B, C, L), c_noise (B,), cond) -> (B, C, L).

Tokens are patches of `patch` time steps of concat[x, observed * mask, mask] (3C channels, CSDI-style
conditioning: one model generates, forecasts and imputes), linearly embedded, plus sinusoidal position
features (so any L works). Blocks are DiT's adaLN-Zero (models/dit_blocks.py); the final linear projection
starts at zero, so the untrained network is F = 0. `cond` is read as in models/unet1d.py: "observed", "mask", "label", missing
keys meaning nothing observed and no label (the null condition).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difftrain.config import Transformer1DConfig
from difftrain.errors import UserError
from difftrain.models.dit_blocks import DiTBackbone
from difftrain.models.mlp import PositionalEmbedding
from difftrain.models.unet1d import padded_inputs


class Transformer1D(DiTBackbone):
    """DiT over patches of time steps, conditioned on the noise level, the observed values and mask, and
    (with `num_classes` > 0) a label.

    A window whose length L is not a multiple of `patch` is padded on the right (x by repeating its last
    step, observed and mask with zeros) and the output cropped back to L. The label embedding has one extra
    row, index `num_classes`, the "no label" used by label dropout and classifier-free guidance.
    """

    def __init__(self, channels: int, num_classes: int, cfg: Transformer1DConfig):
        if channels < 1 or num_classes < 0:
            raise ValueError(f"a Transformer1D needs channels >= 1 and num_classes >= 0, got {channels} and {num_classes}")
        super().__init__(cfg.width, cfg.depth, cfg.heads, cfg.dropout, cfg.embedding_dim, num_classes)
        self.channels = channels
        self.patch = cfg.patch
        self.position = PositionalEmbedding(cfg.width)
        self.patch_in = nn.Linear(3 * channels * cfg.patch, cfg.width)
        self.patch_out = nn.Linear(cfg.width, channels * cfg.patch)
        nn.init.zeros_(self.patch_out.weight)
        nn.init.zeros_(self.patch_out.bias)

    def forward(self, x: Tensor, c_noise: Tensor | float, cond: dict[str, Tensor] | None = None) -> Tensor:
        b, c, length = x.shape
        p = self.patch
        emb, _ = self.condition(c_noise, x, cond)
        inputs = padded_inputs(x, cond, p)  # (B, 3C, N * p)
        n = inputs.shape[-1] // p
        tokens = inputs.reshape(b, 3 * c, n, p).permute(0, 2, 1, 3).reshape(b, n, 3 * c * p)
        positions = self.position(torch.arange(n, device=x.device)).to(tokens.dtype)
        out = self.patch_out(self.transform(self.patch_in(tokens) + positions[None], emb))  # (B, N, C * p)
        return out.reshape(b, n, c, p).permute(0, 2, 1, 3).reshape(b, c, n * p)[..., :length]


def build_transformer1d(cfg: Transformer1DConfig, shape: tuple[int, ...], num_classes: int) -> Transformer1D:
    """A Transformer1D for series windows of shape (C, L)."""
    shape = tuple(shape)
    if len(shape) != 2 or min(shape) < 1:
        raise UserError(f"model.arch=transformer1d takes series windows of shape (C, L), but this data has items of shape {shape}: "
                        "use model.arch=auto (the data's own network)")
    return Transformer1D(shape[0], num_classes, cfg)
