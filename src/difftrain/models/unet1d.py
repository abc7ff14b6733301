"""A 1-D UNet over time for multivariate series windows: net(x (B, C, L), c_noise (B,), cond) -> (B, C, L).

The network always reads concat[x, observed * mask, mask] (3C channels), so one model generates
(nothing observed), forecasts and imputes (CSDI-style conditioning, Tashiro et al. 2021). `cond`
may hold "observed" (B, C, L) known values, "mask" (B, C, L) 1 where a value is observed, and
"label" (B,) class indices; missing keys (or cond None) mean nothing observed and no label, the
null condition of unconditional generation and classifier-free guidance. Observed values count only
where mask == 1, so with an all-zero mask the network computes exactly what it does with cond None.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from difftrain.config import UNet1DConfig
from difftrain.errors import UserError
from difftrain.models.mlp import PositionalEmbedding


def series_inputs(x: Tensor, cond: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
    """(observed * mask, mask), each shaped like x, from `cond` (zeros where keys are missing)."""
    cond = cond or {}
    mask = cond.get("mask")
    mask = torch.zeros_like(x) if mask is None else mask.to(device=x.device, dtype=x.dtype).expand_as(x)
    observed = cond.get("observed")
    observed = torch.zeros_like(x) if observed is None else observed.to(device=x.device, dtype=x.dtype).expand_as(x) * mask
    return observed, mask


def padded_inputs(x: Tensor, cond: dict[str, Tensor] | None, multiple: int) -> Tensor:
    """concat[x, observed * mask, mask] along channels, the time axis padded on the right to a multiple of
    `multiple`: x by repeating its last step, observed and mask with zeros (padding is never observed)."""
    observed, mask = series_inputs(x, cond)
    pad = -x.shape[-1] % multiple
    if pad:
        x = F.pad(x, (0, pad), mode="replicate")
        observed = F.pad(observed, (0, pad))
        mask = F.pad(mask, (0, pad))
    return torch.cat([x, observed, mask], dim=1)


def noise_levels(c_noise: Tensor | float, x: Tensor) -> Tensor:
    """c_noise as a (B,) tensor: one level may serve the whole batch."""
    return torch.as_tensor(c_noise, device=x.device).reshape(-1).expand(x.shape[0])


class ResBlock1D(nn.Module):
    """skip(h) + conv2(dropout(silu(FiLM(GroupNorm(conv1(silu(GroupNorm(h)))), emb)))): the noise/label
    embedding scales and shifts the features of the first convolution."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        y = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.film(emb)[:, :, None].chunk(2, dim=1)
        y = self.norm2(y) * (1 + scale) + shift
        return self.skip(h) + self.conv2(self.dropout(F.silu(y)))


class Attention1D(nn.Module):
    """h + proj(multi-head self-attention over time of GroupNorm(h))."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, length = h.shape
        q, k, v = self.qkv(self.norm(h).transpose(1, 2)).reshape(b, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, c)
        return h + self.proj(y).transpose(1, 2)


class Downsample1D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(h)


class Upsample1D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class UNet1D(nn.Module):
    """A 1-D UNet conditioned on the noise level, the observed values and mask, and (with `num_classes` > 0) a label.

    Levels: `cfg.channels`, each with `layers_per_block` residual blocks (and self-attention over time where
    `cfg.attention` says); every level but the last halves the time axis with a stride-2 convolution, and
    the up path mirrors it (nearest upsampling + convolution) with skip connections; the middle block is
    residual block, attention, residual block. A window whose length L is not a multiple of 2^(levels-1) is
    padded on the right (x by repeating its last step, observed and mask with zeros) and the output cropped
    back to L, so any L works. The label embedding has one extra row, index `num_classes`, the "no label"
    used by label dropout and classifier-free guidance. The output convolution starts at zero: the untrained
    network is F = 0.
    """

    def __init__(self, channels: int, num_classes: int, cfg: UNet1DConfig):
        super().__init__()
        if channels < 1 or num_classes < 0:
            raise ValueError(f"a UNet1D needs channels >= 1 and num_classes >= 0, got {channels} and {num_classes}")
        self.channels = channels
        self.num_classes = num_classes
        self.factor = 2 ** (len(cfg.channels) - 1)
        emb = cfg.embedding_dim
        groups, heads, dropout = cfg.norm_groups, cfg.attention_heads, cfg.dropout
        self.noise_embedding = PositionalEmbedding(emb)
        self.noise_in = nn.Linear(emb, emb)
        self.noise_out = nn.Linear(emb, emb)
        self.label_embedding = nn.Embedding(num_classes + 1, emb) if num_classes else None

        self.conv_in = nn.Conv1d(3 * channels, cfg.channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips = [cfg.channels[0]]
        width = cfg.channels[0]
        for level, (cout, attend) in enumerate(zip(cfg.channels, cfg.attention)):
            for _ in range(cfg.layers_per_block):
                self.down.append(ResBlock1D(width, cout, emb, groups, dropout))
                width = cout
                if attend:
                    self.down.append(Attention1D(width, heads, groups))
                skips.append(width)
            if level < len(cfg.channels) - 1:
                self.down.append(Downsample1D(width))
                skips.append(width)
        self.middle = nn.ModuleList([ResBlock1D(width, width, emb, groups, dropout), Attention1D(width, heads, groups),
                                     ResBlock1D(width, width, emb, groups, dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channels))):
            cout, attend = cfg.channels[level], cfg.attention[level]
            for _ in range(cfg.layers_per_block + 1):
                self.up.append(ResBlock1D(width + skips.pop(), cout, emb, groups, dropout))
                width = cout
                if attend:
                    self.up.append(Attention1D(width, heads, groups))
            if level:
                self.up.append(Upsample1D(width))
        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = nn.Conv1d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.num_classes else None

    def core(self) -> "UNet1D":
        """The module whose parameter names are the network's public ones (LoRA targets, train_only prefixes)."""
        return self

    def lora_targets(self) -> list[str]:
        """Name endings of the layers LoRA adapts (peft's target_modules): attention projections, the blocks'
        convolutions and their FiLM layers, as the 2-D UNet's (models/unet.py)."""
        return ["qkv", "proj", "conv1", "conv2", "film"]

    def embedding(self, c_noise: Tensor | float, x: Tensor, cond: dict[str, Tensor] | None) -> Tensor:
        emb = self.noise_out(F.silu(self.noise_in(self.noise_embedding(noise_levels(c_noise, x)))))
        if self.label_embedding is not None:
            labels = (cond or {}).get("label")
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embedding(labels.long())
        return F.silu(emb)

    def forward(self, x: Tensor, c_noise: Tensor | float, cond: dict[str, Tensor] | None = None) -> Tensor:
        length = x.shape[-1]
        emb = self.embedding(c_noise, x, cond)
        h = self.conv_in(padded_inputs(x, cond, self.factor))
        skips = [h]
        for layer in self.down:
            h = layer(h, emb)
            if not isinstance(layer, Attention1D):
                skips.append(h)
            else:
                skips[-1] = h  # attention follows its residual block: the pair gives one skip
        for layer in self.middle:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock1D):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))[..., :length]


def build_unet1d(cfg: UNet1DConfig, shape: tuple[int, ...], num_classes: int) -> UNet1D:
    """A UNet1D for series windows of shape (C, L)."""
    shape = tuple(shape)
    if len(shape) != 2 or min(shape) < 1:
        raise UserError(f"model.arch=unet1d takes series windows of shape (C, L), but this data has items of shape {shape}: "
                        "use model.arch=auto (the data's own network)")
    return UNet1D(shape[0], num_classes, cfg)
