"""Distances between two samples of vectors (N, D): sliced Wasserstein-2 and the energy distance.

Both work on raw arrays of any sizes N and M, so they compare generated points with real ones directly.
"""

from __future__ import annotations

import numpy as np

# Elements of one block of intermediate results (float64): bounds the memory at ~32 MB whatever N and M are.
_BLOCK_ELEMENTS = 1 << 22


def _pair(a: np.ndarray, b: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """Both samples as float64 (N, D), checked; a 1-D array is N scalars."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    a, b = (x[:, None] if x.ndim == 1 else x for x in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two samples (N, D) and (M, D) of the same D, got shapes {a.shape} and {b.shape}")
    if len(a) < minimum or len(b) < minimum:
        raise ValueError(f"each sample needs at least {minimum} vectors, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("the samples hold NaN or infinite values")
    return a, b


def _w2_squared_1d(a_sorted: np.ndarray, b_sorted: np.ndarray) -> np.ndarray:
    """Exact squared W2 between the empirical distributions of each column: integral over t of (F_a^-1(t) - F_b^-1(t))^2.

    Both quantile functions are steps (at i/N and j/M), so the integral is a sum over the merged breakpoints.
    """
    n, m = len(a_sorted), len(b_sorted)
    if n == m:
        return ((a_sorted - b_sorted) ** 2).mean(axis=0)
    t = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    width, middle = np.diff(t), (t[:-1] + t[1:]) / 2
    i = np.minimum((middle * n).astype(np.int64), n - 1)  # the quantile step each interval lies on
    j = np.minimum((middle * m).astype(np.int64), m - 1)
    return width @ (a_sorted[i] - b_sorted[j]) ** 2


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, *, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (Bonneel et al. 2015): sqrt of the mean over random unit directions theta of
    W2^2 between the 1-D projections a @ theta and b @ theta, each exact for unequal sizes (from quantile functions).

    Between N(0, I) and N(m, I) in D dimensions it tends to ||m|| / sqrt(D).
    """
    a, b = _pair(a, b, 1)
    if projections < 1:
        raise ValueError(f"projections must be at least 1, got {projections}")
    directions = np.random.default_rng(seed).standard_normal((projections, a.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    chunk = max(1, _BLOCK_ELEMENTS // (2 * (len(a) + len(b))))
    total = 0.0
    for start in range(0, projections, chunk):
        theta = directions[start:start + chunk].T  # (D, P)
        total += _w2_squared_1d(np.sort(a @ theta, axis=0), np.sort(b @ theta, axis=0)).sum()
    return float(np.sqrt(total / projections))


def _distance_sum(x: np.ndarray, y: np.ndarray, same: bool) -> float:
    """Sum of the Euclidean distances |x_i - y_j| over all pairs, in row blocks; with `same` (x is y) the zero diagonal
    is set exactly rather than left to rounding."""
    y_sq = (y * y).sum(1)
    rows = max(1, _BLOCK_ELEMENTS // len(y))
    total = 0.0
    for start in range(0, len(x), rows):
        block = x[start:start + rows]
        sq = (block * block).sum(1)[:, None] + y_sq[None, :] - 2.0 * block @ y.T
        d = np.sqrt(np.maximum(sq, 0.0))
        if same:
            idx = np.arange(len(block))
            d[idx, start + idx] = 0.0
        total += float(d.sum())
    return total


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Energy distance (Székely & Rizzo 2013) 2 E|X-Y| - E|X-X'| - E|Y-Y'|, as the unbiased U-statistic.

    E|X-Y| averages all N*M pairs; E|X-X'| and E|Y-Y'| average the pairs of distinct points (i != j), so the
    estimate's expectation is the population distance at any sample sizes. Hence it can be slightly negative
    when the distributions are equal; for a = b it is exactly -2 E|X-X'| / N.
    """
    a, b = _pair(a, b, 2)
    # Centring on a common point changes no distance but keeps |x|^2 + |y|^2 - 2 x.y from cancelling digits.
    centre = np.concatenate([a, b]).mean(0)
    a, b = a - centre, b - centre
    n, m = len(a), len(b)
    xy = _distance_sum(a, b, same=False) / (n * m)
    xx = _distance_sum(a, a, same=True) / (n * (n - 1))
    yy = _distance_sum(b, b, same=True) / (m * (m - 1))
    return float(2.0 * xy - xx - yy)
