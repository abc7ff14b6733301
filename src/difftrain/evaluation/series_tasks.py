"""Forecasting and imputation scores of a model conditioned on observed values, on the held-out windows, each next to
baselines measured in the same run (CSDI's protocol: CRPS of sample paths, MAE of their median, MSE of their mean).

forecast: each window's last `horizon` steps are hidden; the model draws `paths` futures from the rest. Baselines:
seasonal naive (the last season repeated) and a VAR fitted on the training windows, which draws as many paths.
impute: a fraction of each window's values is hidden at random; baseline: linear interpolation in time per channel.
Scores are in the dataset's scaling (standardised with --scaling standard, as Informer's protocol; [-1, 1] for minmax).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from difftrain.evaluation.series_metrics import crps, mae, mse
from difftrain.sampling import SamplingSpec, generate


def held_out_windows(test: np.ndarray, count: int) -> np.ndarray:
    """`count` held-out windows evenly spread over the tail (all when there are fewer)."""
    if len(test) <= count:
        return test
    return test[np.linspace(0, len(test) - 1, count).round().astype(np.int64)]


def _paths(denoiser, modality, known: np.ndarray, paths: int, spec: SamplingSpec, batch_size: int, device) -> np.ndarray:
    """`paths` samples of every window of `known` (NaN where to generate): (paths, W, L, C)."""
    many = np.repeat(known, paths, axis=0)
    drawn = generate(denoiser, modality, len(many), None, spec, batch_size=batch_size, device=device, known=many)
    return drawn.reshape(len(known), paths, *known.shape[1:]).swapaxes(0, 1)


def _scores(prefix: str, samples: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {f"{prefix}_crps": crps(samples, target), f"{prefix}_mae": mae(samples, target), f"{prefix}_mse": mse(samples, target)}


def forecast_scores(denoiser, modality, train: np.ndarray, test: np.ndarray, *, horizon: int, season: int, windows: int,
                    paths: int, spec: SamplingSpec, batch_size: int, device, seed: int = 0) -> dict[str, Any]:
    from difftrain.evaluation.forecast_baselines import seasonal_naive, var_forecast

    length = modality.shape[0]
    horizon = horizon or max(1, length // 4)
    if not 1 <= horizon < length:
        from difftrain.errors import UserError

        raise UserError(f"eval.horizon={horizon} must leave some of the {length}-step window as context: choose 1..{length - 1}, "
                        f"or prepare longer windows (--window: context + horizon)")
    target = held_out_windows(test, windows)
    known = target.copy()
    known[:, length - horizon:] = np.nan
    drawn = _paths(denoiser, modality, known, paths, spec, batch_size, device)
    scaled = modality.scaled
    future = scaled(target)[:, length - horizon:]
    context = scaled(target)[:, :length - horizon]
    record = {"forecast_horizon": horizon, "forecast_windows": len(target), "forecast_paths": paths,
              **_scores("forecast", scaled(drawn)[:, :, length - horizon:], future)}
    season = min(season or horizon, length - horizon)
    naive = seasonal_naive(context, horizon, season)
    record |= {"forecast_season": season, "forecast_mae_naive": mae(naive, future), "forecast_mse_naive": mse(naive, future),
               "forecast_crps_naive": crps(naive[None], future)}
    history = scaled(train)[::length].reshape(-1, train.shape[-1])  # training windows end to end: the series, for stride 1
    try:
        var = var_forecast(history, context, horizon, n_paths=paths, seed=seed)
        record |= {f"{k}_var": v for k, v in _scores("forecast", var, future).items()}
    except (ValueError, np.linalg.LinAlgError) as e:  # a VAR that cannot be fitted is reported, not fatal
        record["forecast_var_error"] = str(e)
    return record


def interpolate(known: np.ndarray) -> np.ndarray:
    """Each channel of each window (N, L, C) linearly interpolated in time over its NaN (the ends held flat)."""
    filled = known.astype(np.float64).copy()
    steps = np.arange(known.shape[1])
    for i in range(known.shape[0]):
        for c in range(known.shape[2]):
            seen = np.isfinite(known[i, :, c])
            if seen.any():
                filled[i, :, c] = np.interp(steps, steps[seen], known[i, seen, c])
            else:
                filled[i, :, c] = 0.0
    return filled


def impute_scores(denoiser, modality, test: np.ndarray, *, fraction: float, windows: int, paths: int, spec: SamplingSpec,
                  batch_size: int, device, seed: int = 0) -> dict[str, Any]:
    target = held_out_windows(test, windows)
    hide = np.random.default_rng(seed).random(target.shape) < fraction
    known = np.where(hide, np.nan, target)
    drawn = _paths(denoiser, modality, known, paths, spec, batch_size, device)
    scaled = modality.scaled
    truth = np.where(hide, scaled(target), np.nan)  # only the hidden values are scored
    linear = scaled(interpolate(known))
    return {"impute_fraction": fraction, "impute_windows": len(target), "impute_paths": paths,
            **_scores("impute", scaled(drawn), truth),
            "impute_mae_interp": mae(linear, truth), "impute_mse_interp": mse(linear, truth)}
