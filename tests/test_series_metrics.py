"""Known answers for the time-series generation scores, the forecasting scores and the forecasting baselines.
Step counts are tiny: the whole file runs in seconds on one thread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from statsmodels.tsa.api import VAR

from difftrain.evaluation.forecast_baselines import fit_var, seasonal_naive, var_forecast
from difftrain.evaluation.series_metrics import (context_fid, correlational_score, crps, discriminative_score,
                                                 fit_series_encoder, mae, mse, predictive_score, quantiles, repeated)


def sines(n: int, length: int = 24, channels: int = 5, seed: int = 0) -> np.ndarray:
    """TimeGAN's sines data: each channel sin(2 pi f t + phase), random f and phase, scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.05, 0.15, (n, 1, channels))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, channels))
    return ((np.sin(2 * np.pi * freq * np.arange(length)[None, :, None] + phase) + 1) / 2).astype(np.float32)


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return sines(300)


def time_shuffled(windows: np.ndarray, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([w[rng.permutation(len(w))] for w in windows])


# ------------------------------------------------------------------------------------------ discriminative


def test_discriminative_identical_sets_near_zero(real):
    assert discriminative_score(real, real, steps=200, batch=64) < 0.1


def test_discriminative_catches_time_shuffled(real):
    assert discriminative_score(real, time_shuffled(sines(300, seed=1)), steps=300, batch=64, hidden=16) > 0.3


def test_torch_scores_are_seeded_and_leave_global_state_alone(real):
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = discriminative_score(real, real[::-1], steps=5, seed=7, threads=1)
    predictive_score(real, real, steps=5, seed=7)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert discriminative_score(real, real[::-1], steps=5, seed=7) == first


# --------------------------------------------------------------------------------------------- predictive


def test_predictive_learns_a_predictable_channel():
    """The last channel is channel 0 one step later: trained on such windows the predictor beats one trained
    on noise, tested on the same windows."""
    x = sines(300, channels=3)
    x[:, 1:, 2] = x[:, :-1, 0]
    noise = np.random.default_rng(0).random(x.shape).astype(np.float32)
    learned = predictive_score(x, x, steps=300, hidden=8)
    assert learned < predictive_score(noise, x, steps=300, hidden=8) - 0.05


def test_predictive_one_channel_and_deterministic():
    x = sines(50, channels=1)
    a = predictive_score(x, x, steps=10, seed=3)
    assert a == predictive_score(x, x, steps=10, seed=3) and 0 <= a < 1


# -------------------------------------------------------------------------------------------- Context-FID


@pytest.fixture(scope="module")
def encoder(real):
    return fit_series_encoder(real, steps=30, seed=0)


def test_encoder_is_reusable_and_identified(real, encoder):
    assert encoder.embed(real[:7]).shape == (7, 32)
    assert fit_series_encoder(real, steps=30, seed=0).sha256 == encoder.sha256
    assert fit_series_encoder(real, steps=30, seed=1).sha256 != encoder.sha256


def test_context_fid_zero_against_itself_larger_when_shifted(real, encoder):
    assert abs(context_fid(encoder, real, real)) < 1e-6
    shifted = context_fid(encoder, real, real + 0.2)
    noised = context_fid(encoder, real, real + 0.2 * np.random.default_rng(0).standard_normal(real.shape))
    other = context_fid(encoder, real, sines(300, seed=1))  # the same distribution: the real-vs-real floor
    assert shifted > 10 * other and noised > other > 0


# ------------------------------------------------------------------------------------------ correlational


def test_correlational_identical_is_zero_and_one_channel_is_zero(real):
    assert correlational_score(real, real) == 0.0
    assert correlational_score(real[..., :1], sines(40, channels=1, seed=2)) == 0.0


def test_correlational_known_answer():
    """Two channels equal in the real set, opposite in the fake: the pooled correlation goes from 1 to -1
    (times (n - 1) / n for the unbiased std), the diagonal terms agree, so the score is 2 (n - 1) / n / 10."""
    base = np.random.default_rng(0).random((40, 24, 1))
    real, fake = np.concatenate([base, base], -1), np.concatenate([base, 1 - base], -1)
    n = 40 * 24
    assert correlational_score(real, fake) == pytest.approx(2 * (n - 1) / n / 10, rel=1e-12)


def test_correlational_matches_diffusion_ts_code(real):
    """Their cacf_torch at lag 0 and CrossCorrelLoss, transcribed in torch."""
    def cacf(x):
        i, j = torch.tril_indices(x.shape[2], x.shape[2])
        x = (x - x.mean((0, 1), keepdim=True)) / x.std((0, 1), keepdim=True)
        return (x[..., i] * x[..., j]).mean(1).mean(0)

    fake = sines(200, seed=4) ** 2
    expected = (cacf(torch.from_numpy(fake).double()) - cacf(torch.from_numpy(real).double())).abs().sum() / 10
    assert correlational_score(real, fake) == pytest.approx(float(expected), rel=1e-5)
    assert correlational_score(real, fake, sample=60, seed=1) == correlational_score(real, fake, sample=60, seed=1)


def test_repeated_mean_and_std():
    assert repeated(lambda s: float(s), seeds=(1, 2, 3)) == (2.0, 1.0)
    assert repeated(lambda s: 5.0, seeds=(0,)) == (5.0, 0.0)


# ------------------------------------------------------------------------------------------- forecasting


def test_crps_of_one_sample_is_mae():
    rng = np.random.default_rng(0)
    forecast, target = rng.standard_normal((1, 10, 4)), rng.standard_normal((10, 4))
    assert crps(forecast, target) == mae(forecast[0], target) == np.abs(forecast[0] - target).mean()


def test_crps_matches_pairwise_form():
    rng = np.random.default_rng(1)
    samples, target = rng.standard_normal((7, 5, 3)), rng.standard_normal((5, 3))
    pairs = np.abs(samples[:, None] - samples[None, :]).mean((0, 1))
    assert crps(samples, target) == pytest.approx((np.abs(samples - target).mean(0) - pairs / 2).mean(), rel=1e-12)


def test_crps_of_standard_normal_at_zero():
    closed = 2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)  # 2 phi(0) - 1/sqrt(pi) ~ 0.2337
    samples = np.random.default_rng(0).standard_normal((2000, 200))
    assert crps(samples, np.zeros(200)) == pytest.approx(closed, abs=0.01)


def test_nan_targets_are_ignored():
    rng = np.random.default_rng(2)
    samples, target = rng.standard_normal((9, 6, 2)), rng.standard_normal((6, 2))
    holed = target.copy()
    holed[[0, 3], 1] = np.nan
    keep = ~np.isnan(holed)
    for score in (crps, mae, mse):
        assert score(samples, holed) == pytest.approx(score(samples[:, keep], target[keep]), rel=1e-12)
    with pytest.raises(ValueError):
        crps(samples, np.full_like(target, np.nan))


def test_point_forecasts_are_median_and_mean():
    samples, target = np.array([[0.0], [0.0], [3.0]]), np.array([1.0])
    assert mae(samples, target) == 1.0  # median 0
    assert mse(samples, target) == 0.0  # mean 1
    assert quantiles(samples, (0.0, 0.5, 1.0))[:, 0].tolist() == [0.0, 0.0, 3.0]
    assert quantiles(np.zeros((10, 4, 3))).shape == (3, 4, 3)


# -------------------------------------------------------------------------------------------- baselines


def test_seasonal_naive_exact_on_periodic_series():
    t = np.arange(40)
    series = np.stack([np.sin(2 * np.pi * t / 8), np.cos(2 * np.pi * t / 8) ** 3], -1)
    contexts = np.stack([series[s:s + 24] for s in range(5)])
    futures = np.stack([series[s + 24:s + 36] for s in range(5)])
    np.testing.assert_allclose(seasonal_naive(contexts, 12, season=8), futures, atol=1e-12)
    assert (seasonal_naive(contexts, 3, season=1) == contexts[:, -1:]).all()
    with pytest.raises(ValueError):
        seasonal_naive(contexts, 3, season=25)


def simulated_var(steps: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([[0.6, 0.2, 0.0], [-0.3, 0.5, 0.1], [0.0, 0.25, 0.7]])
    rng = np.random.default_rng(seed)
    x = np.zeros((steps, 3))
    for t in range(1, steps):
        x[t] = 0.1 + a @ x[t - 1] + 0.3 * rng.standard_normal(3)
    return x, a


def test_var_recovers_a_var1_and_beats_naive():
    x, a = simulated_var()
    model = fit_var(x[:2000], maxlags=5)
    np.testing.assert_allclose(model.coefs[0], a, atol=0.06)
    assert np.abs(model.coefs[1:]).max(initial=0) < 0.1
    contexts = np.stack([x[s:s + 16] for s in range(2000, 2900, 9)])
    futures = np.stack([x[s + 16:s + 20] for s in range(2000, 2900, 9)])
    paths = var_forecast(x[:2000], contexts, 4, n_paths=50, seed=0)
    assert paths.shape == (50, len(contexts), 4, 3)
    assert (var_forecast(x[:2000], contexts, 4, n_paths=50, seed=0) == paths).all()
    naive = seasonal_naive(contexts, 4, season=1)
    assert mse(paths, futures) < 0.8 * mse(naive, futures)
    assert crps(paths, futures) < mae(naive, futures)


def test_var_constant_channel_and_one_channel():
    x, _ = simulated_var(800)
    x[:, 1] = 0.5
    contexts = np.stack([x[s:s + 10] for s in range(0, 700, 50)])
    paths = var_forecast(x, contexts, 5, n_paths=4)
    assert (paths[..., 1] == 0.5).all() and np.isfinite(paths).all()
    rng = np.random.default_rng(1)
    ar = np.zeros(1500)
    for t in range(1, len(ar)):
        ar[t] = 0.2 + 0.8 * ar[t - 1] + rng.standard_normal()
    model = fit_var(ar[:, None], maxlags=3)
    assert model.order >= 1 and model.coefs[0, 0, 0] == pytest.approx(0.8, abs=0.06)
    one = var_forecast(ar[:, None], ar[None, -10:, None], 5, n_paths=4, maxlags=3)
    assert one.shape == (4, 1, 5, 1) and np.isfinite(one).all()


def test_var_fits_columns_that_copy_each_other():
    # Stocks' Close and Adj_Close are one column twice: the residual covariance is singular, which AIC cannot take.
    x, a = simulated_var(2000)
    copied = np.concatenate([x, x[:, 2:]], axis=1)
    with pytest.raises(np.linalg.LinAlgError):
        VAR(copied).fit(maxlags=5, ic="aic", trend="c")
    model = fit_var(copied, maxlags=5)
    np.testing.assert_allclose(model.coefs[0][:3, :3] + np.pad(model.coefs[0][:3, 3:], ((0, 0), (2, 0)))[:, :3], a,
                               atol=0.06)
    paths = var_forecast(copied, copied[None, -10:], 4, n_paths=20, maxlags=5)
    assert np.isfinite(paths).all() and np.allclose(paths[..., 2], paths[..., 3])


def test_encoder_takes_missing_values_the_scores_refuse_them(real):
    holed = real[:40].copy()
    holed[::3, 5:9, 1] = np.nan
    holed[7] = np.nan  # a window with no value: dropped from training
    encoder = fit_series_encoder(holed, steps=3)
    assert np.isfinite(encoder.embed(holed[:6])).all()
    with pytest.raises(ValueError):
        discriminative_score(real, holed, steps=1)


# ------------------------------------------------------------------------------------------ utility (synth report)


def test_forecasting_utility_prefers_real_over_noise_and_checks_shapes():
    from difftrain.errors import UserError
    from difftrain.evaluation.series_utility import forecasting_utility

    x = sines(300, channels=3)
    x[:, 1:, 2] = x[:, :-1, 0]  # a predictable channel, as test_predictive_learns_a_predictable_channel
    noise = np.random.default_rng(1).uniform(0, 1, x.shape).astype(np.float32)
    u = forecasting_utility(x[:200], x[200:], noise, seeds=(0, 1), steps=300, batch=128, hidden=8)
    arms = u["arms"]
    # A forecaster trained on white noise cannot predict sines; adding noise to real windows does not help.
    assert arms["synthetic"]["mae_mean"] > arms["real"]["mae_mean"] + 0.05
    assert u["counts"] == {"real_train": 200, "synthetic": 300, "real_test": 100} and u["steps"] == 300
    assert u["real_plus_synthetic_gain"] == pytest.approx(arms["real"]["mae_mean"] - arms["real+synthetic"]["mae_mean"])
    assert u["synthetic_helps"] in (True, False) and len(arms["real"]["mae_per_seed"]) == 2
    with pytest.raises(UserError, match="synthesize from a model trained on this dataset"):
        forecasting_utility(x[:200], x[200:], noise[:, :12], seeds=(0,), steps=5)
