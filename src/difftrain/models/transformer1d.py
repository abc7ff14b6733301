"""A DiT-style transformer over time for multivariate series windows: net(x (B, C, L), c_noise (B,), cond) -> (B, C, L).

Tokens are patches of `patch` time steps of concat[x, observed * mask, mask] (3C channels, CSDI-style
conditioning: one model generates, forecasts and imputes), linearly embedded, plus sinusoidal position
features (so any L works). Blocks are DiT's adaLN-Zero (Peebles & Xie 2023): the noise-level (+ label)
embedding regresses shift, scale and gate of the attention and MLP branches, all starting at zero, so
every block starts as the identity; the final adaLN layer and linear projection start at zero too, so the
untrained network is F = 0. `cond` is read as in models/unet1d.py: "observed", "mask", "label", missing
keys meaning nothing observed and no label (the null condition).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from difftrain.config import Transformer1DConfig
from difftrain.errors import UserError
from difftrain.models.mlp import PositionalEmbedding
from difftrain.models.unet1d import noise_levels, padded_inputs


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return h * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """h + gate_a * attn(modulate(LN(h))), then h + gate_m * mlp(modulate(LN(h))); `ada` regresses the six
    modulations from the conditioning embedding and starts at zero (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.mlp_dropout = nn.Dropout(dropout)
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(emb).chunk(6, dim=1)
        b, n, width = h.shape
        y = modulate(self.norm1(h), shift_a, scale_a)
        q, k, v = self.qkv(y).reshape(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h + gate_a[:, None] * self.proj(y.transpose(1, 2).reshape(b, n, width))
        y = modulate(self.norm2(h), shift_m, scale_m)
        y = self.fc2(self.mlp_dropout(F.gelu(self.fc1(y), approximate="tanh")))
        return h + gate_m[:, None] * y


class Transformer1D(nn.Module):
    """DiT over patches of time steps, conditioned on the noise level, the observed values and mask, and
    (with `num_classes` > 0) a label.

    A window whose length L is not a multiple of `patch` is padded on the right (x by repeating its last
    step, observed and mask with zeros) and the output cropped back to L. The label embedding has one extra
    row, index `num_classes`, the "no label" used by label dropout and classifier-free guidance.
    """

    def __init__(self, channels: int, num_classes: int, cfg: Transformer1DConfig):
        super().__init__()
        if channels < 1 or num_classes < 0:
            raise ValueError(f"a Transformer1D needs channels >= 1 and num_classes >= 0, got {channels} and {num_classes}")
        self.channels = channels
        self.num_classes = num_classes
        self.patch = cfg.patch
        width = cfg.width
        self.noise_embedding = PositionalEmbedding(cfg.embedding_dim)
        self.noise_in = nn.Linear(cfg.embedding_dim, width)
        self.noise_out = nn.Linear(width, width)
        self.label_embedding = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.position = PositionalEmbedding(width)
        self.patch_in = nn.Linear(3 * channels * cfg.patch, width)
        self.blocks = nn.ModuleList(DiTBlock(width, cfg.heads, cfg.dropout) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(width, 2 * width)
        self.patch_out = nn.Linear(width, channels * cfg.patch)
        for layer in (self.ada_out, self.patch_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.num_classes else None

    def core(self) -> "Transformer1D":
        """The module whose parameter names are the network's public ones (LoRA targets, train_only prefixes)."""
        return self

    def lora_targets(self) -> list[str]:
        """Name endings of the Linear layers LoRA adapts (peft's target_modules): every block's attention and MLP."""
        return ["qkv", "proj", "fc1", "fc2"]

    def forward(self, x: Tensor, c_noise: Tensor | float, cond: dict[str, Tensor] | None = None) -> Tensor:
        b, c, length = x.shape
        p = self.patch
        emb = self.noise_out(F.silu(self.noise_in(self.noise_embedding(noise_levels(c_noise, x)))))
        if self.label_embedding is not None:
            labels = (cond or {}).get("label")
            if labels is None:
                labels = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embedding(labels.long())
        emb = F.silu(emb)
        inputs = padded_inputs(x, cond, p)  # (B, 3C, N * p)
        n = inputs.shape[-1] // p
        tokens = inputs.reshape(b, 3 * c, n, p).permute(0, 2, 1, 3).reshape(b, n, 3 * c * p)
        positions = self.position(torch.arange(n, device=x.device)).to(tokens.dtype)
        h = self.patch_in(tokens) + positions[None]
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.ada_out(emb).chunk(2, dim=1)
        out = self.patch_out(modulate(self.norm_out(h), shift, scale))  # (B, N, C * p)
        return out.reshape(b, n, c, p).permute(0, 2, 1, 3).reshape(b, c, n * p)[..., :length]


def build_transformer1d(cfg: Transformer1DConfig, shape: tuple[int, ...], num_classes: int) -> Transformer1D:
    """A Transformer1D for series windows of shape (C, L)."""
    shape = tuple(shape)
    if len(shape) != 2 or min(shape) < 1:
        raise UserError(f"model.arch=transformer1d takes series windows of shape (C, L), but this data has items of shape {shape}: "
                        "use model.arch=auto (the data's own network)")
    return Transformer1D(shape[0], num_classes, cfg)
