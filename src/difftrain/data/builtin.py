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
    captions: list[str] | None = None  # one per image, for text-to-image


def _digits() -> BuiltinDataset:
    from sklearn.datasets import load_digits  # slow import: only when asked for

    digits = load_digits()
    # Each pixel counts inked cells of a 4x4 block (0..16); stretch that to the byte range.
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    return BuiltinDataset(
        images, digits.target.astype(np.int64), [str(d) for d in range(10)], DIGITS_PROVENANCE
    )


PAIR_WORDINGS = ("a {a} to the left of a {b}", "a {b} to the right of a {a}", "{a} then {b}")


def _digit_pairs(count: int = 3000, seed: int = 0) -> BuiltinDataset:
    """Two of the built-in digits side by side (8x16), captioned with where each is ("a 3 to the left of a 7", in one
    of three wordings): a small text-to-image set whose captions can be checked. Class "37" is 3 then 7."""
    digits = _digits()
    rng = np.random.default_rng(seed)
    left, right = rng.integers(0, len(digits.images), (2, count))
    images = np.concatenate([digits.images[left], digits.images[right]], axis=2)
    a, b = digits.labels[left], digits.labels[right]
    wordings = rng.integers(0, len(PAIR_WORDINGS), count)
    captions = [PAIR_WORDINGS[w].format(a=x, b=y) for w, x, y in zip(wordings, a, b)]
    provenance = (f"{count} pairs of the built-in digits side by side, drawn with seed {seed}, captioned by difftrain. "
                  + DIGITS_PROVENANCE)
    return BuiltinDataset(images, (a * 10 + b).astype(np.int64), [f"{x}{y}" for x in range(10) for y in range(10)],
                          provenance, captions)


BUILTIN_DATASETS: dict[str, Callable[[], BuiltinDataset]] = {"digits": _digits, "digit-pairs": _digit_pairs}


def load_builtin(name: str) -> BuiltinDataset:
    """The builtin dataset called `name`."""
    if name not in BUILTIN_DATASETS:
        raise UserError(
            f"unknown builtin dataset {name!r}; available: {', '.join(sorted(BUILTIN_DATASETS))}."
        )
    return BUILTIN_DATASETS[name]()
