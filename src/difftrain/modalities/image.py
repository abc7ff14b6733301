"""The image modality: uint8 (N, H, W, C) arrays <-> model tensors in [-1, 1], and PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difftrain import atomic


def to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded and clipped."""
    x = ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images row by row into one (rows*H, columns*W, C) image."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | Path, columns: int | None = None, min_size: int = 256) -> Path:
    """Write a PNG grid, enlarged with nearest-neighbour so small images stay readable."""
    grid = make_grid(images, columns)
    scale = max(1, math.ceil(min_size / max(grid.shape[:2])))
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic.atomic_file(path) as tmp:
        img.save(tmp, format="PNG")
    return path
