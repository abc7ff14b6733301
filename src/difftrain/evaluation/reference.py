"""The real data that samples are compared with, and its features, cached per dataset and extractor.

    DATASET/eval-cache/<extractor>-<weights hash>-test.npy          every held-out image
    DATASET/eval-cache/<extractor>-<weights hash>-floor-<N>.npy     the floor pool (below)

The floor pool is a fixed random part of the training split (at most half of it, at most
FLOOR_POOL images) that stands in for samples: every metric's floor scores real images from
it exactly as samples are scored. The domain classifier never trains on it, because a
classifier's features of its own training images are more confident than those of unseen
images (on digits their mean norm is 2% larger), which would push the floor above what a
perfect generator scores.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from difftrain import atomic
from difftrain.data import PreparedDataset
from difftrain.modalities import FeatureExtractor

FLOOR_POOL = 10_000


def floor_pool(ds: PreparedDataset) -> np.ndarray:
    """Indices of the training images kept as real stand-ins for samples (the same for every evaluation)."""
    count = len(ds.train_data)
    return np.random.default_rng(0).permutation(count)[:min(FLOOR_POOL, count // 2)]


def classifier_pool(ds: PreparedDataset) -> np.ndarray:
    """Indices of the training images a domain classifier may learn from: all but the floor pool."""
    return np.setdiff1d(np.arange(len(ds.train_data)), floor_pool(ds))


def _cached(file: Path, compute) -> np.ndarray:
    if file.is_file():
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed and replaced
    features = compute().astype(np.float32)
    try:
        atomic.write_npy(file, features)
    except OSError:
        pass  # a read-only dataset folder: compute again next time
    return features


def reference_features(ds: PreparedDataset, extractor: FeatureExtractor) -> tuple[np.ndarray, np.ndarray]:
    """(held-out features, floor-pool features), the pool in `floor_pool(ds)` order."""
    key = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', extractor.name)}-{extractor.sha256[:12]}"
    folder = Path(ds.path) / "eval-cache"
    test = _cached(folder / f"{key}-test.npy", lambda: extractor.features(ds.test_data))
    pool = floor_pool(ds)
    return test, _cached(folder / f"{key}-floor-{len(pool)}.npy", lambda: extractor.features(ds.train_data[pool]))
