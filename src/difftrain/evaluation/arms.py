"""Comparing models trained on different data ("arms") over a few seeds: the training budget every arm gets,
the spread of a score over seeds, and whether one arm's gain over another is significant (a paired test over seeds)."""

from __future__ import annotations

import numpy as np


def step_budget(n_images: int, epochs: int, batch: int) -> int:
    """Optimizer steps for `epochs` passes over `n_images` in batches of `batch` (at least one step per epoch)."""
    return epochs * max(1, n_images // batch)


def seed_std(values: list[float]) -> float:
    """Sample standard deviation over seeds; 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def paired_test(a: list[float], b: list[float]) -> dict:
    """b against a, paired by seed: the mean difference b - a, its 95% confidence interval and the two-sided p-value of
    a paired t-test (None for both with one seed). Differences that agree exactly have p 0 (1 when all are 0)."""
    from scipy import stats

    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    n, mean = len(d), float(d.mean())
    if n < 2:
        return {"mean": mean, "ci95": None, "p_value": None}
    sd = float(d.std(ddof=1))
    if sd == 0:
        return {"mean": mean, "ci95": [mean, mean], "p_value": 0.0 if mean else 1.0}
    se = sd / np.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1) * se)
    return {"mean": mean, "ci95": [mean - half, mean + half], "p_value": float(2 * stats.t.sf(abs(mean / se), n - 1))}


def gain_rule(score: str) -> str:
    """The verdict's rule in words, for a report."""
    return (f"helps when real+synthetic beats real in {score} in a paired t-test over the seeds (each seed: the same "
            "validation split and initial weights for both arms) at p < 0.05; no verdict with one seed")


def seed_summary(metric: str, values: list[float]) -> dict:
    """One arm's score over seeds: {metric}_mean, {metric}_std and {metric}_per_seed."""
    return {f"{metric}_mean": float(np.mean(values)), f"{metric}_std": seed_std(values), f"{metric}_per_seed": list(values)}


def verdict(arms: dict[str, dict], metric: str, name: str, seeds: int, lower_is_better: bool = False) -> dict:
    """What adding synthetic data to real data did, from the arms' per-seed scores: the synthetic-only arm against real,
    the gain of real+synthetic over real (positive = better, whichever way the metric points), its 95% interval and
    paired-test p-value, and whether it is significant."""
    real, both = arms["real"], arms["real+synthetic"]
    sign = -1.0 if lower_is_better else 1.0
    test = paired_test([sign * v for v in real[f"{metric}_per_seed"]], [sign * v for v in both[f"{metric}_per_seed"]])
    helps = None if test["p_value"] is None else bool(test["mean"] > 0 and test["p_value"] < 0.05)
    return {f"synthetic_minus_real_{metric}": arms["synthetic"][f"{metric}_mean"] - real[f"{metric}_mean"],
            "real_plus_synthetic_gain": test["mean"], "gain_ci95": test["ci95"], "gain_p_value": test["p_value"],
            "synthetic_helps": helps, "synthetic_helps_rule": gain_rule(name)}
