"""Memorized samples (Yoon et al. 2023; Gu et al. 2023, "On Memorization in Diffusion Models").

A sample is memorized when its L2 distance (in the modality's neighbour space: pixels in [0, 1] for images,
standardised columns for vectors) to the nearest training item is below `ratio` (1/3) times the distance to the
second-nearest one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difftrain.evaluation.neighbours import nearest


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


def nearest_training(samples: np.ndarray, train: np.ndarray, modality,
                     chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances (`modality.distances`: L2 in its `neighbour_view`, divided by its distance unit, unless it measures
    its own) from each sample to its nearest and second-nearest training items, and the index of the nearest.

    Images are compared on their 0..255 integers: in float64 every sum torch.cdist forms is then exact,
    so an exact copy is at distance exactly 0.
    """
    dist, index = nearest(samples, train, 2, chunk, distances=modality.distances)
    return dist[:, 0], dist[:, 1], index[:, 0]


def memorization(samples: np.ndarray, train: np.ndarray, modality, *, ratio: float = 1 / 3,
                 chunk: int = 256) -> Memorization:
    d1, d2, index = nearest_training(samples, train, modality, chunk)
    # An exact copy counts even when the training set holds duplicates of it, where d2 = d1 = 0 too.
    flagged = (d1 < ratio * d2) | (d1 == 0)
    return Memorization(d1=d1, d2=d2, nearest_index=index, flagged=flagged, ratio=ratio)


def save_closest_pairs(samples: np.ndarray, train: np.ndarray, result: Memorization, path: str | Path, modality,
                       count: int = 16) -> Path:
    """A PNG of the `count` samples with the smallest d1/d2, each beside its nearest training item."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # Exact copies first, 0/0 included (duplicated training images).
        score = np.where(result.d1 == 0, 0.0, result.d1 / result.d2)
    order = np.argsort(score, kind="stable")[:count]
    return modality.save_pairs(samples[order], train[result.nearest_index[order]], Path(path))
