"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

The same estimator as torch-fidelity and torchmetrics: k(x, y) = (x.y / d + 1)^3, averaged over
random subsets of both feature sets.
"""

from __future__ import annotations

import numpy as np

from difftrain.errors import UserError


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a b^T / d + 1)^3 between the rows of a (m, d) and b (n, d)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 between the rows of a (m, d) and b (n, d), in float64.

    The within-set means leave out the diagonal k(x, x); for m == n this is exactly the
    torch-fidelity / torchmetrics formula. It can be slightly negative for equal distributions.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise UserError(f"an unbiased MMD needs at least 2 points per set (got {m} and {n})")
    k_aa, k_bb = polynomial_kernel(a, a), polynomial_kernel(b, b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * polynomial_kernel(a, b).mean())


def kernel_distance(a: np.ndarray, b: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of mmd2_unbiased over random subsets of a and b.

    Each subset is drawn without replacement; the std is the population std (np.std), as in
    torch-fidelity and torchmetrics.
    """
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    # Index before mmd2_unbiased casts to float64, so a large float32 array is never copied whole.
    values = np.array([mmd2_unbiased(a[rng.choice(len(a), size, replace=False)],
                                     b[rng.choice(len(b), size, replace=False)]) for _ in range(subsets)])
    return float(values.mean()), float(values.std())
