"""Decode one class-index mask file and fit it to a square exactly as its image is fitted."""

from __future__ import annotations

import numpy as np
from PIL import Image

from difftrain.data.images import SIXTEEN_BIT_MODES, BadImage, decode_with, fit_square

MASK_EXTENSIONS = frozenset({".png"})  # lossless: a lossy format would change class indices at the edges
SINGLE_CHANNEL = "save masks as single-channel class-index PNGs (mode L or P, pixel value = class index)"


def _indices(img: Image.Image) -> np.ndarray:
    if img.mode in ("L", "P", "1"):
        # A palette image's pixels are its palette indices: those are the classes, not the colours.
        return np.asarray(img).astype(np.uint8)
    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.int64)
        if wide.size and not 0 <= wide.min() <= wide.max() < 256:
            raise BadImage(f"16-bit mask with value {wide.max() if wide.max() > 255 else wide.min()}; "
                           "class indices must be 0..255")
        return wide.astype(np.uint8)
    raise BadImage(f"mask is {img.mode}, not a single-channel class-index image; {SINGLE_CHANNEL}")


def decode_mask(data: bytes) -> np.ndarray:
    """Decode class-index PNG bytes (mode L, P, 1, or 16-bit with values < 256) to uint8 (H, W); raises BadImage."""
    return decode_with(data, _indices, frozenset({"PNG"}), hint=f"; {SINGLE_CHANNEL}")


def fit_mask(mask: np.ndarray, resolution: int | None, fit: str = "crop") -> np.ndarray:
    """uint8 (H, W) -> (resolution, resolution): nearest neighbour, the image's crop/pad, padding = class 0."""
    if resolution is None:
        return mask
    return fit_square(mask[..., None], resolution, fit, resample=Image.Resampling.NEAREST)[..., 0]
