"""Memorized samples (Yoon et al. 2023; Gu et al. 2023, "On Memorization in Diffusion Models").

A sample is memorized when its pixel L2 distance (images in [0, 1]) to the nearest training image is
below `ratio` (1/3) times the distance to the second-nearest one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difftrain.evaluation.neighbours import nearest
from difftrain.modalities.image import save_grid
from difftrain.modalities.segmentation import preview


@dataclass
class Memorization:
    """Per-sample distances to the two nearest training images, and which samples are memorized."""

    d1: np.ndarray
    d2: np.ndarray
    nearest_index: np.ndarray
    flagged: np.ndarray
    ratio: float

    def summary(self) -> dict:
        return {
            "memorized_fraction": float(self.flagged.mean()),
            "memorized": int(self.flagged.sum()),
            "memorization_ratio": self.ratio,
        }


def nearest_training(samples_uint8: np.ndarray, train_uint8: np.ndarray,
                     chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2 distances (images in [0, 1]) from each sample to its nearest and second-nearest training
    images, and the index of the nearest.

    Distances are taken on the 0..255 integers: in float64 every sum torch.cdist forms is then exact,
    so an exact copy is at distance exactly 0.
    """
    dist, index = nearest(samples_uint8, train_uint8, 2, chunk)
    dist /= 255.0
    return dist[:, 0], dist[:, 1], index[:, 0]


def memorization(samples_uint8: np.ndarray, train_uint8: np.ndarray, *, ratio: float = 1 / 3,
                 chunk: int = 256) -> Memorization:
    d1, d2, index = nearest_training(samples_uint8, train_uint8, chunk)
    # An exact copy counts even when the training set holds duplicates of it, where d2 = d1 = 0 too.
    flagged = (d1 < ratio * d2) | (d1 == 0)
    return Memorization(d1=d1, d2=d2, nearest_index=index, flagged=flagged, ratio=ratio)


def save_closest_pairs(samples: np.ndarray, train: np.ndarray, result: Memorization, path: str | Path,
                       count: int = 16, image_channels: int | None = None) -> Path:
    """PNG grid of the `count` samples with the smallest d1/d2, each beside its nearest training
    image (sample left, training image right). Segmentation pairs (more channels than `image_channels`)
    are shown as image and coloured mask."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # Exact copies first, 0/0 included (duplicated training images).
        score = np.where(result.d1 == 0, 0.0, result.d1 / result.d2)
    order = np.argsort(score, kind="stable")[:count]
    sample, nearest = samples[order], train[result.nearest_index[order]]
    if image_channels is not None and samples.shape[-1] > image_channels:
        sample, nearest = preview(sample, image_channels), preview(nearest, image_channels)
    pairs = np.concatenate([sample, nearest], axis=2)
    return save_grid(pairs, path)
