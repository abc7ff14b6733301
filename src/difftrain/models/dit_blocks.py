"""What every DiT here shares (Peebles & Xie 2023): the noise-level (+ label) embedding, adaLN-Zero blocks and the
final adaptive layer. The embedding regresses shift, scale and gate of every block's attention and MLP branches, all
starting at zero, so every block starts as the identity; the final adaLN layer starts at zero too. A network on top
(models/transformer1d.py: series windows; models/dit.py: images) only turns its data into tokens and back. With
captions, a caption encoder (models/caption_encoder.py) adds its pooled tokens to the embedding, and every block
attends to its tokens after self-attention (cross-attention, as PixArt-alpha places it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from difftrain.models.caption_encoder import CaptionEncoder, CrossAttention, ProjectedCaptions
from difftrain.models.mlp import PositionalEmbedding


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return h * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """h + gate_a * attn(modulate(LN(h))), then h + gate_m * mlp(modulate(LN(h))); `ada` regresses the six
    modulations from the conditioning embedding and starts at zero (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, dropout: float, cross: bool = False):
        super().__init__()
        self.heads = heads
        self.cross = CrossAttention(width, heads) if cross else None
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

    def forward(self, h: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(emb).chunk(6, dim=1)
        b, n, width = h.shape
        y = modulate(self.norm1(h), shift_a, scale_a)
        q, k, v = self.qkv(y).reshape(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h + gate_a[:, None] * self.proj(y.transpose(1, 2).reshape(b, n, width))
        if self.cross is not None:
            h = self.cross(h, context)
        y = modulate(self.norm2(h), shift_m, scale_m)
        y = self.fc2(self.mlp_dropout(F.gelu(self.fc1(y), approximate="tanh")))
        return h + gate_m[:, None] * y


class DiTBackbone(nn.Module):
    """Tokens (B, N, width) -> adaLN-modulated tokens, conditioned on the noise level and (with `num_classes` > 0) a
    label, whose embedding has one extra row, index `num_classes`: the "no label" of label dropout and guidance; or, with
    `caption_vocab` > 0, on a caption of `caption_length` character ids (`caption_pad` pads it; padding alone: none)."""

    def __init__(self, width: int, depth: int, heads: int, dropout: float, embedding_dim: int, num_classes: int,
                 caption_vocab: int = 0, caption_length: int = 0, caption_pad: int | None = None, caption_depth: int = 2,
                 caption_encoder: nn.Module | None = None):
        super().__init__()
        self.num_classes = num_classes
        if caption_encoder is not None:  # a pretrained, frozen one (models/pretrained_text.py), projected to the width
            self.captions = ProjectedCaptions(caption_encoder, width)
            caption_vocab, caption_pad = 1, caption_encoder.pad_id
        else:
            self.captions = CaptionEncoder(caption_vocab, caption_length, caption_pad, width, caption_depth, heads) \
                if caption_vocab else None
        self.caption_pad = caption_pad if caption_vocab else None
        self.noise_embedding = PositionalEmbedding(embedding_dim)
        self.noise_in = nn.Linear(embedding_dim, width)
        self.noise_out = nn.Linear(width, width)
        self.label_embedding = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(width, heads, dropout, cross=bool(caption_vocab)) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.num_classes else None

    def core(self) -> "DiTBackbone":
        """The module whose parameter names are the network's public ones (LoRA targets, train_only prefixes)."""
        return self

    def lora_targets(self) -> list[str]:
        """Name endings of the Linear layers LoRA adapts (peft's target_modules): every block's attention and MLP."""
        return ["qkv", "proj", "fc1", "fc2"]

    def condition(self, c_noise: Tensor | float, x: Tensor, cond: dict[str, Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """The conditioning embedding (B, width): noise level, plus the label (the null one when none is given) or the
        pooled caption; and the caption's tokens (B, T, width) for cross-attention (None without captions)."""
        levels = torch.as_tensor(c_noise, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.noise_out(F.silu(self.noise_in(self.noise_embedding(levels))))
        if self.label_embedding is not None:
            labels = (cond or {}).get("label")
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embedding(labels.long())
        context = None
        if self.captions is not None:
            ids = (cond or {}).get("caption")
            if ids is None:
                ids = torch.full((x.shape[0], self.captions.length), self.caption_pad, device=x.device)
            context, pooled = self.captions(ids.long())
            emb = emb + pooled
        return F.silu(emb), context

    def transform(self, h: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:
        """The blocks, then the final adaptive layer norm."""
        for block in self.blocks:
            h = block(h, emb, context)
        shift, scale = self.ada_out(emb).chunk(2, dim=1)
        return modulate(self.norm_out(h), shift, scale)
