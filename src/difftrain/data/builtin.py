"""Datasets that ship inside installed packages, so difftrain works offline out of the box."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from difftrain.errors import UserError

DIGITS_PROVENANCE = (
    "UCI ML Optical Recognition of Handwritten Digits (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), "
    "test set of 1797 8x8 images as shipped inside scikit-learn (sklearn.datasets.load_digits, "
    "BSD-3-Clause); pixel values 0..16 scaled to 0..255."
)


@dataclass(frozen=True)
class BuiltinDataset:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    provenance: str


def _digits() -> BuiltinDataset:
    from sklearn.datasets import load_digits  # slow import: only when asked for

    digits = load_digits()
    # Each pixel counts inked cells of a 4x4 block (0..16); stretch that to the byte range.
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    return BuiltinDataset(
        images, digits.target.astype(np.int64), [str(d) for d in range(10)], DIGITS_PROVENANCE
    )


BUILTIN_DATASETS: dict[str, Callable[[], BuiltinDataset]] = {"digits": _digits}


def load_builtin(name: str) -> BuiltinDataset:
    """The builtin dataset called `name`."""
    if name not in BUILTIN_DATASETS:
        raise UserError(
            f"unknown builtin dataset {name!r}; available: {', '.join(sorted(BUILTIN_DATASETS))}."
        )
    return BUILTIN_DATASETS[name]()
