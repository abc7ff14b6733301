"""DiT for images (Peebles & Xie 2023): net(x (B, C, H, W), c_noise (B,), cond) -> (B, C, H, W).

Patches of p x p pixels become tokens (a strided convolution), with fixed 2-D sinusoidal positions (half the features
for the row, half for the column, so any H x W divisible by p works, square or not); adaLN-Zero blocks conditioned on
the noise level and the label or caption (models/dit_blocks.py); the final linear layer starts at zero, so the untrained
network is F = 0, and tokens are folded back into patches. Ours rather than diffusers' DiTTransformer2DModel, which
unpatchifies square images only and drops labels at random inside the network (difftrain's label dropout is the
conditioner's, reproducible and resumable).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difftrain.config import DiTConfig
from difftrain.errors import UserError
from difftrain.models.dit_blocks import DiTBackbone
from difftrain.models.mlp import PositionalEmbedding


class DiT(DiTBackbone):
    def __init__(self, channels: int, num_classes: int, cfg: DiTConfig, **captions: int):
        super().__init__(cfg.width, cfg.depth, cfg.heads, cfg.dropout, cfg.embedding_dim, num_classes,
                         caption_depth=cfg.caption_depth, **captions)
        self.channels, self.patch = channels, cfg.patch
        self.patch_in = nn.Conv2d(channels, cfg.width, cfg.patch, stride=cfg.patch)
        self.position = PositionalEmbedding(cfg.width // 2)
        self.patch_out = nn.Linear(cfg.width, cfg.patch * cfg.patch * channels)
        nn.init.zeros_(self.patch_out.weight)
        nn.init.zeros_(self.patch_out.bias)

    def positions(self, rows: int, cols: int, device: torch.device) -> Tensor:
        """(rows * cols, width): the row's sinusoidal features beside the column's, in raster order."""
        r = self.position(torch.arange(rows, device=device))
        c = self.position(torch.arange(cols, device=device))
        return torch.cat([r[:, None].expand(rows, cols, -1), c[None].expand(rows, cols, -1)], dim=-1).reshape(rows * cols, -1)

    def forward(self, x: Tensor, c_noise: Tensor | float, cond: dict[str, Tensor] | None = None) -> Tensor:
        b, c, height, width = x.shape
        p = self.patch
        rows, cols = height // p, width // p
        emb, context = self.condition(c_noise, x, cond)
        h = self.patch_in(x).flatten(2).transpose(1, 2)  # (B, rows * cols, width)
        h = self.transform(h + self.positions(rows, cols, x.device).to(h.dtype)[None], emb, context)
        out = self.patch_out(h).reshape(b, rows, cols, p, p, c)  # each token's p x p x C patch
        return out.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


def build_dit(cfg: DiTConfig, shape: tuple[int, ...], num_classes: int, **captions: int) -> DiT:
    """A DiT for model tensors of shape (C, H, W), H and W multiples of the patch; `captions` (caption_vocab,
    caption_length, caption_pad) make it text-conditional."""
    if len(shape) != 3:
        raise UserError(f"model.arch=dit takes images (C, H, W); this data's items are {tuple(shape)}: use model.arch=auto")
    channels, height, width = shape
    if height % cfg.patch or width % cfg.patch:
        raise UserError(f"{height}x{width} images do not split into {cfg.patch}x{cfg.patch} patches: choose a "
                        f"model.dit.patch that divides both, or a --resolution divisible by {cfg.patch}")
    return DiT(channels, num_classes, cfg, **captions)
