"""The caption encoder of a text-to-image network (GLIDE, Nichol et al. 2022): a small transformer over the caption's
characters, trained jointly with the denoiser from scratch. Its tokens are what the image attends to (cross-attention);
their mean over the caption's characters joins the noise-level embedding, so every block's modulation hears the
caption too. The empty caption (padding only: caption dropout and the guidance's null branch) pools to zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


# A network's caption encoder is its `captions` module: its embedding rows (one per character of the data's captions)
# and its positions, which fine-tuning matches by character (pretrained/transfer.py).
CHARACTER_ROWS, CAPTION_POSITIONS = "captions.embed.weight", "captions.position"


class CaptionEncoder(nn.Module):
    def __init__(self, vocab: int, length: int, pad_id: int, width: int, depth: int, heads: int):
        super().__init__()
        self.pad_id, self.heads = pad_id, heads
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    @property
    def length(self) -> int:
        """The caption rows' length (T)."""
        return self.position.shape[0]

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) ids -> tokens (B, T, width) and pooled (B, width). Padding is attended to like any character (a
        caption of padding alone has nothing else to attend to), but pooling counts the characters only."""
        h = self.norm(self.layers(self.embed(ids) + self.position[: ids.shape[1]]))
        chars = (ids != self.pad_id).to(h.dtype)[..., None]
        return h, (h * chars).sum(1) / chars.sum(1).clamp(min=1)


class ProjectedCaptions(nn.Module):
    """Another caption encoder's tokens and pooled vector (a pretrained one's width) mapped to the network's width."""

    def __init__(self, encoder: nn.Module, width: int):
        super().__init__()
        self.encoder, self.pad_id, self.length = encoder, encoder.pad_id, encoder.length
        self.project = nn.Linear(encoder.width, width)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        tokens, pooled = self.encoder(ids)
        return self.project(tokens), self.project(pooled)


class CrossAttention(nn.Module):
    """h + attn(LN(h), context): the image tokens ask the caption's. The output projection starts at zero, so an
    untrained block ignores the caption and stays the identity, as adaLN-Zero's blocks do."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor, context: Tensor) -> Tensor:
        b, n, width = h.shape
        d = width // self.heads
        q = self.q(self.norm(h)).reshape(b, n, self.heads, d).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return h + self.out(y.transpose(1, 2).reshape(b, n, width))
