"""Are synthetic series worth having for forecasting? One forecaster trained on real, synthetic and real+synthetic
windows, each tested on the same real held-out windows.

The forecaster is TimeGAN's post-hoc GRU next-step predictor (series_metrics.predictive_score), so the synthetic-only
arm is the predictive score ("train on synthetic, test on real") and the real arm is its floor. Fairness rule, as the
image utilities (evaluation/utility.py): every arm trains for the same optimizer steps of the same batch with the same
seeds, so a gain comes from the data, not from more compute. Windows are in [0, 1] per channel (the modality's unit()).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from difftrain.errors import UserError
from difftrain.evaluation.arms import seed_summary, step_budget, verdict
from difftrain.evaluation.series_metrics import predictive_score


def forecasting_utility(real_train: np.ndarray, real_test: np.ndarray, synth: np.ndarray, *,
                        seeds: tuple[int, ...] = (0, 1, 2), steps: int | None = None, batch: int = 128,
                        hidden: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Next-step MAE on the real test windows (N, L, C) of one GRU forecaster trained on each arm, mean and std over
    `seeds`. `hidden` None: TimeGAN's int(C / 2). `steps` None: 20 epochs of the real training windows, for every arm. "synthetic_helps": real+synthetic's
    MAE is lower than real's in a paired t-test over the seeds (arms.verdict; None with one seed)."""
    sets = {"real training windows": real_train, "real test windows": real_test, "synthetic windows": synth}
    for what, windows in sets.items():
        if windows.ndim != 3 or not len(windows):
            raise UserError(f"forecasting utility: {what} must be a non-empty (N, L, C) array, got {windows.shape}")
        if windows.shape[1:] != real_test.shape[1:]:
            raise UserError(f"forecasting utility: {what} are (L, C) = {windows.shape[1:]} but the real test windows are "
                            f"{real_test.shape[1:]}; synthesize from a model trained on this dataset")
    if not seeds:
        raise UserError("forecasting utility: give at least one seed")
    if steps is not None and steps < 1:
        raise UserError(f"forecasting utility: steps must be at least 1 (got {steps})")
    steps = steps or step_budget(len(real_train), 20, batch)
    arms = {"real": real_train, "synthetic": synth, "real+synthetic": np.concatenate([real_train, synth])}
    results = {}
    for arm, windows in arms.items():
        values = []
        for seed in seeds:
            if progress is not None:
                progress(f"{arm}, seed {seed}")
            values.append(predictive_score(windows, real_test, seed=seed, steps=steps, batch=batch, hidden=hidden))
        results[arm] = seed_summary("mae", values)
    return {
        "task": "forecasting", "model": "GRU next-step forecaster (TimeGAN's predictive score)", "items": "windows",
        "metric": "mae", "metric_name": "next-step MAE (lower is better, data scaled to [0, 1])",
        "seeds": list(seeds), "steps": steps, "batch": batch,
        "counts": {"real_train": len(real_train), "synthetic": len(synth), "real_test": len(real_test)},
        "fairness": (f"every arm trains the same forecaster for the same {steps} optimizer steps of batch {batch} with the "
                     "same seeds; only the training windows differ; all are tested on the same real held-out windows"),
        "arms": results,
        **verdict(results, "mae", "MAE", len(seeds), lower_is_better=True),
    }
