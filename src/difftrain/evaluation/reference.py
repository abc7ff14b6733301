"""Features of the real data, computed once per dataset and extractor and cached beside the dataset.

    DATASET/eval-cache/<extractor>-<weights hash>-test.npy         every held-out image
    DATASET/eval-cache/<extractor>-<weights hash>-train-<N>.npy    N training images, a fixed random subset

The training subset is the real-data stand-in for samples: the floor of every metric
(real training images scored against the held-out ones) uses it.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from difftrain import atomic
from difftrain.data import PreparedDataset
from difftrain.evaluation.extractors import FeatureExtractor


def train_subset(ds: PreparedDataset, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of the training images that stand in for samples; the same for a given seed."""
    return np.random.default_rng(seed).permutation(len(ds.train_images))[:limit]


def _cached(file: Path, compute) -> np.ndarray:
    if file.is_file():
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed and replaced
    features = compute()
    buf = io.BytesIO()
    np.save(buf, features.astype(np.float32))
    try:
        atomic.write_bytes(file, buf.getvalue())
    except OSError:
        pass  # a read-only dataset folder: compute again next time
    return features.astype(np.float32)


def reference_features(ds: PreparedDataset, extractor: FeatureExtractor, limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(held-out features, training-subset features), the subset as `train_subset(ds, limit, seed)`."""
    key = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', extractor.name)}-{extractor.sha256[:12]}"
    folder = Path(ds.path) / "eval-cache"
    test = _cached(folder / f"{key}-test.npy", lambda: extractor.features(ds.test_images))
    idx = train_subset(ds, limit, seed)
    train = _cached(folder / f"{key}-train-{len(idx)}-s{seed}.npy", lambda: extractor.features(ds.train_images[idx]))
    return test, train
