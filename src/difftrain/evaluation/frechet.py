"""Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (N, D) feature array, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

    tr((C1 C2)^(1/2)) is the sum of square roots of the eigenvalues of
    C1^(1/2) C2 C1^(1/2), which is symmetric PSD: stable without a complex sqrtm.
    """
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ cov2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def frechet_between(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))
