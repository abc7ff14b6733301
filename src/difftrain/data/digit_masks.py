"""Per-pixel masks for labelled digit images: the stroke takes the digit's class, the rest is background.

This turns a classification set (sklearn digits, MNIST) into a real segmentation task with known
answers: a segmenter must find the stroke and tell which digit it is.
"""

from __future__ import annotations

import numpy as np

from difftrain.errors import UserError

DIGIT_MASK_CLASSES = ["background", *(str(d) for d in range(10))]  # mask index = digit + 1


def masks_from_labels(images: np.ndarray, labels: np.ndarray, threshold: int = 128) -> np.ndarray:
    """uint8 images (N, H, W, 1) and int labels (N,) -> uint8 masks (N, H, W): label + 1 where a pixel is >= threshold, else 0."""
    if images.ndim != 4 or images.shape[-1] != 1 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 grey images (N, H, W, 1), got {images.dtype} {images.shape}")
    labels = np.asarray(labels)
    if labels.shape != images.shape[:1] or (labels.size and not 0 <= labels.min() <= labels.max() < 255):
        raise ValueError(f"expected one label in 0..254 per image, got {labels.shape} for {len(images)} images")
    if not 1 <= threshold <= 255:
        raise UserError(f"threshold must be a grey level in 1..255 (pixels at or above it are the stroke), got {threshold}")
    stroke = images[..., 0] >= threshold
    return np.where(stroke, labels[:, None, None] + 1, 0).astype(np.uint8)
