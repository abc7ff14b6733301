"""Comparing models trained on different data ("arms") over a few seeds: the training budget every arm gets,
the spread of a score over seeds, and whether one arm's gain over another stands out of that spread."""

from __future__ import annotations

import numpy as np


def step_budget(n_images: int, epochs: int, batch: int) -> int:
    """Optimizer steps for `epochs` passes over `n_images` in batches of `batch` (at least one step per epoch)."""
    return epochs * max(1, n_images // batch)


def seed_std(values: list[float]) -> float:
    """Sample standard deviation over seeds; 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def clear_gain(gain: float, std_a: float, std_b: float, seeds: int) -> bool | None:
    """Whether `gain` (mean of arm b minus mean of arm a) exceeds both arms' seed spread; None with one seed,
    which shows no spread to judge a gain by."""
    return bool(gain > max(std_a, std_b)) if seeds > 1 else None


def gain_rule(score: str) -> str:
    """`clear_gain` in words, for a report."""
    return (f"helps when the real+synthetic {score} mean beats real's by more than the larger seed std of the two; "
            "no verdict with one seed")


def seed_summary(metric: str, values: list[float]) -> dict:
    """One arm's score over seeds: {metric}_mean, {metric}_std and {metric}_per_seed."""
    return {f"{metric}_mean": float(np.mean(values)), f"{metric}_std": seed_std(values), f"{metric}_per_seed": list(values)}


def verdict(arms: dict[str, dict], metric: str, name: str, seeds: int, lower_is_better: bool = False) -> dict:
    """What adding synthetic data to real data did, from the arms' seed summaries: the synthetic-only arm against real,
    the gain of real+synthetic over real (positive = better, whichever way the metric points) and whether it stands out."""
    real, both = arms["real"], arms["real+synthetic"]
    gain = both[f"{metric}_mean"] - real[f"{metric}_mean"]
    gain = -gain if lower_is_better else gain
    return {f"synthetic_minus_real_{metric}": arms["synthetic"][f"{metric}_mean"] - real[f"{metric}_mean"],
            "real_plus_synthetic_gain": gain,
            "synthetic_helps": clear_gain(gain, real[f"{metric}_std"], both[f"{metric}_std"], seeds),
            "synthetic_helps_rule": gain_rule(name)}
