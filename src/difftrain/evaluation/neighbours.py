"""k-NN manifold metrics in feature space: improved precision and recall (Kynkaanniemi et al. 2019),
density and coverage (Naeem et al. 2020).

Each point's ball has the radius of its k-th nearest neighbour in its own set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from difftrain.errors import UserError


def _rows(x: np.ndarray) -> torch.Tensor:
    """(N, ...) array -> float64 (N, D) tensor."""
    x = np.asarray(x)
    return torch.from_numpy(x.reshape(len(x), -1).astype(np.float64))


def distance_blocks(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> Iterator[tuple[slice, torch.Tensor]]:
    """Euclidean distances from `chunk` rows of a at a time to all rows of b, in float64.

    Yields (rows of a, distances of shape (len(rows), len(b))): memory is chunk * len(b), not len(a) * len(b).
    """
    b_rows = _rows(b)
    for start in range(0, len(a), chunk):
        rows = slice(start, min(start + chunk, len(a)))
        yield rows, torch.cdist(_rows(a[rows]), b_rows)


def nearest(a: np.ndarray, b: np.ndarray, k: int, chunk: int = 1024,
            distances: Callable[..., Iterator[tuple[slice, torch.Tensor]]] = distance_blocks) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices (both (len(a), k)) of the k nearest rows of b to each row of a, nearest first; `distances`
    is how blocks of them are measured (Euclidean by default; a modality's own, e.g. `Modality.distances`)."""
    if len(b) < k:
        raise UserError(f"need at least {k} points to find {k} nearest neighbours (got {len(b)})")
    dist, index = np.empty((len(a), k)), np.empty((len(a), k), dtype=np.int64)
    for rows, d in distances(a, b, chunk):
        values, indices = torch.topk(d, k, dim=1, largest=False)
        dist[rows], index[rows] = values.numpy(), indices.numpy()
    return dist, index


def radii(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in x, itself excluded.

    Taken as the (k+1)-th smallest distance, the smallest being the point itself, as both reference
    implementations do; a duplicate of the point then counts as a neighbour at distance 0.
    """
    return nearest(x, x, k + 1, chunk)[0][:, k]


def manifold_metrics(real: np.ndarray, fake: np.ndarray, *, k: int = 5, chunk: int = 1024) -> dict:
    """Precision, recall, density and coverage of fake features against real ones.

    precision: fraction of fake points inside some real ball; recall: fraction of real points inside
    some fake ball; density: real balls containing each fake point, averaged and divided by k;
    coverage: fraction of real balls that contain some fake point.
    """
    real_radii, fake_radii = torch.from_numpy(radii(real, k, chunk)), torch.from_numpy(radii(fake, k, chunk))
    precise = torch.zeros(len(fake), dtype=torch.bool)
    density_count = torch.zeros(len(fake), dtype=torch.int64)
    recalled = torch.zeros(len(real), dtype=torch.bool)
    covered = torch.zeros(len(real), dtype=torch.bool)
    for rows, d in distance_blocks(real, fake, chunk):
        r = real_radii[rows, None]
        # Inside means "<=" for precision and recall, as in Kynkaanniemi et al.'s code (and StyleGAN2-ADA's),
        # but "<" for density and coverage, as in Naeem et al.'s prdc package.
        precise |= (d <= r).any(dim=0)
        recalled[rows] = (d <= fake_radii[None, :]).any(dim=1)
        density_count += (d < r).sum(dim=0)
        covered[rows] = d.min(dim=1).values < real_radii[rows]
    return {
        "precision": float(precise.double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(density_count.sum()) / (k * len(fake)),
        "coverage": float(covered.double().mean()),
        "k": k,
    }
