"""Which labels the next round of sampling draws: a pure function of the request and of what was kept so far.

Filters remove some samples, so a synthetic dataset is drawn in rounds: each round draws, for every
class still short of its target, the shortfall divided by the share of that class kept so far. Because
the plan depends only on (targets, kept, generated), an interrupted run replays the same rounds.
"""

from __future__ import annotations

import math

# A class that keeps less than 1 in 20 of its samples is given up at 20x its request, with a warning.
MAX_ATTEMPTS = 20


def round_sizes(targets: list[int], kept: list[int], generated: list[int], max_attempts: int = MAX_ATTEMPTS) -> list[int]:
    """Samples to draw for each class in the next round; all zero when every class is full or given up."""
    sizes = []
    for target, k, g in zip(targets, kept, generated, strict=True):
        need, left = target - k, max_attempts * target - g
        # (kept + 1) / (generated + 1): the share that passed so far, 1 before anything was drawn.
        sizes.append(max(0, min(left, math.ceil(need * (g + 1) / (k + 1)))) if need > 0 else 0)
    return sizes


def round_slots(sizes: list[int]) -> list[int]:
    """The class (index into `sizes`) of each sample of a round, round-robin, so every batch mixes the classes."""
    return [c for r in range(max(sizes, default=0)) for c, size in enumerate(sizes) if r < size]


def shortfall(targets: list[int], kept: list[int]) -> list[int]:
    return [max(0, t - k) for t, k in zip(targets, kept, strict=True)]
