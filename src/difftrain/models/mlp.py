"""An MLP denoiser for low-dimensional vectors: net(x (B, D), c_noise (B,), cond) -> (B, D)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from difftrain.config import MLPConfig
from difftrain.errors import UserError


class PositionalEmbedding(nn.Module):
    """Sinusoidal features of a scalar, as EDM's PositionalEmbedding (Karras et al. 2022, endpoint=True):
    cos and sin of x * (1/max_positions)^(k/(K-1)), k = 0..K-1."""

    def __init__(self, dim: int, max_positions: int = 10_000):
        super().__init__()
        half = dim // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)[:, None] * self.freqs[None, :]
        return torch.cat([x.cos(), x.sin()], dim=1)


class ResidualBlock(nn.Module):
    """h + fc2(dropout(silu(FiLM(fc1(LayerNorm(h)), emb)))): the noise/label embedding scales and shifts the hidden features."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.film = nn.Linear(width, 2 * width)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        y = self.fc1(self.norm(h)) * (1 + scale) + shift
        return h + self.fc2(self.dropout(nn.functional.silu(y)))


class MLP(nn.Module):
    """Residual MLP conditioned on the noise level and, with `num_classes` > 0, a class label.

    The label embedding has one extra row, index `num_classes`, the "no label" used by label dropout and
    classifier-free guidance; a missing `cond` or `cond["label"]` means that row. The output layer starts
    at zero, so the untrained network is F = 0.
    """

    def __init__(self, dim: int, num_classes: int, cfg: MLPConfig):
        super().__init__()
        if dim < 1 or num_classes < 0:
            raise ValueError(f"an MLP needs dim >= 1 and num_classes >= 0, got {dim} and {num_classes}")
        self.dim = dim
        self.num_classes = num_classes
        width = cfg.width
        self.noise_embedding = PositionalEmbedding(cfg.embedding_dim)
        self.noise_in = nn.Linear(cfg.embedding_dim, width)
        self.noise_out = nn.Linear(width, width)
        self.label_embedding = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.fc_in = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, cfg.dropout) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(width)
        self.fc_out = nn.Linear(width, dim)
        nn.init.zeros_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.num_classes else None

    def core(self) -> "MLP":
        """The module whose parameter names are the network's public ones (LoRA targets, train_only prefixes)."""
        return self

    def lora_targets(self) -> list[str]:
        """Name endings of the Linear layers LoRA adapts (peft's target_modules): every block's layers."""
        return ["fc1", "fc2", "film"]

    def forward(self, x: Tensor, c_noise: Tensor, cond: dict[str, Tensor] | None = None) -> Tensor:
        c_noise = torch.as_tensor(c_noise, device=x.device).reshape(-1).expand(x.shape[0])  # one level may serve all
        emb = self.noise_out(nn.functional.silu(self.noise_in(self.noise_embedding(c_noise))))
        if self.label_embedding is not None:
            labels = (cond or {}).get("label")
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embedding(labels.long())
        emb = nn.functional.silu(emb)
        h = self.fc_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.fc_out(nn.functional.silu(self.norm_out(h)))


def build_mlp(cfg: MLPConfig, shape: tuple[int, ...], num_classes: int) -> MLP:
    """An MLP for vectors of shape (D,)."""
    shape = tuple(shape)
    if len(shape) != 1 or shape[0] < 1:
        raise UserError(f"model.arch=mlp takes vectors of shape (D,), but this data has items of shape {shape}: "
                        "use model.arch=unet (or auto) for images")
    return MLP(shape[0], num_classes, cfg)
