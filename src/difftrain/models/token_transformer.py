"""A bidirectional transformer over tokens for masked diffusion: net(z (B, L) token ids, c_noise, cond) -> logits (B, L, V).

The input vocabulary has one more id than the output, the mask (id V). Positions are rotary (RoPE, Su et al. 2021) in
every attention layer, so no position table fixes the length. Like MDLM, the network is not told the masking time: the
share of masks says it, and a network that ignores time lets the sampler reuse its output over steps that change
nothing. A class label (when conditional) is one more learned vector added at every position; its extra row,
index `num_classes`, is "no label" (label dropout, classifier-free guidance).

With `causal=True` the same network is an autoregressive language model of the same size (each position attends to
itself and those before it; id V then starts a sequence): the baseline and judge that masked diffusion is measured
against.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from difftrain.config import TokenTransformerConfig
from difftrain.errors import UserError


def rotary(x: Tensor, base: float = 10_000.0) -> Tensor:
    """RoPE on (B, heads, L, d): each pair of features rotated by an angle growing with the position."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Block(nn.Module):
    """Pre-LayerNorm: h + attn(LN(h)), then h + mlp(LN(h)); attention through PyTorch's SDPA (flash on GPUs)."""

    def __init__(self, width: int, heads: int, dropout: float, causal: bool = False):
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, h: Tensor) -> Tensor:
        b, length, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(rotary(q), rotary(k), v, dropout_p=self.dropout if self.training else 0.0,
                                                  is_causal=self.causal)
        h = h + F.dropout(self.proj(attended.transpose(1, 2).reshape(b, length, width)), self.dropout, self.training)
        return h + F.dropout(self.fc2(F.gelu(self.fc1(self.norm2(h)))), self.dropout, self.training)


class TokenTransformer(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, cfg: TokenTransformerConfig, causal: bool = False):
        super().__init__()
        self.vocab_size, self.num_classes = vocab_size, num_classes
        self.embedding = nn.Embedding(vocab_size + 1, cfg.width)  # + the mask (causal: the start of a sequence)
        self.label_embedding = nn.Embedding(num_classes + 1, cfg.width) if num_classes else None
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.dropout, causal) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vocab_size)
        nn.init.zeros_(self.head.weight)  # untrained: uniform over the vocabulary, a bound of ln V per token
        nn.init.zeros_(self.head.bias)

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.num_classes else None

    def core(self) -> "TokenTransformer":
        return self

    def lora_targets(self) -> list[str]:
        return ["qkv", "proj", "fc1", "fc2"]

    def forward(self, z: Tensor, c_noise: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        h = self.embedding(z.long())
        if self.label_embedding is not None:
            labels = (cond or {}).get("label")
            if labels is None:
                labels = torch.full((z.shape[0],), self.num_classes, dtype=torch.long, device=z.device)
            h = h + self.label_embedding(labels.long())[:, None]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm_out(h))


def build_token_transformer(cfg: TokenTransformerConfig, shape: tuple[int, ...], num_classes: int,
                            vocab_size: int = 0) -> TokenTransformer:
    if len(shape) != 1 or not vocab_size:
        raise UserError(f"model.arch=token_transformer takes token sequences (prepared with --kind text); this data has "
                        f"items of shape {tuple(shape)}: use model.arch=auto")
    return TokenTransformer(vocab_size, num_classes, cfg)
