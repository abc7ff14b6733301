"""Forecasting baselines scored in the same run as the model: seasonal naive and a Gaussian VAR, both on
contexts (N, Lc, C). The VAR returns sample paths, so its CRPS is measured the same way as a sampler's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _contexts(contexts: np.ndarray) -> np.ndarray:
    c = np.asarray(contexts, dtype=np.float64)
    if c.ndim != 3 or not c.shape[1] or not c.shape[2]:
        raise ValueError(f"expected contexts (N, Lc, C), got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("the contexts hold NaN or infinite values")
    return c


def seasonal_naive(context: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Repeat the last `season` steps of each context over the horizon: (N, horizon, C). season 1 is the
    naive forecast (the last value held)."""
    context = _contexts(context)
    if not 1 <= season <= context.shape[1]:
        raise ValueError(f"season must be in [1, {context.shape[1]}] (the context length), got {season}")
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    steps = context.shape[1] - season + np.arange(horizon) % season
    return context[:, steps]


@dataclass
class VarModel:
    """x_t = intercept + sum_i coefs[i] x_{t-1-i} + e_t, e_t ~ N(0, sigma), on the channels `kept`; the
    other channels were constant in the history and are forecast as their last context value."""

    intercept: np.ndarray  # (K,)
    coefs: np.ndarray  # (p, K, K)
    sigma: np.ndarray  # (K, K)
    kept: np.ndarray  # (K,) indices into the C channels
    channels: int

    @property
    def order(self) -> int:
        return len(self.coefs)

    def simulate(self, contexts: np.ndarray, horizon: int, *, n_paths: int = 100, seed: int = 0) -> np.ndarray:
        """n_paths paths (n_paths, N, horizon, C) from each context's last p steps, Gaussian innovations."""
        contexts = _contexts(contexts)
        n, length, c = contexts.shape
        if c != self.channels:
            raise ValueError(f"the model has {self.channels} channels, the contexts {c}")
        if length < self.order:
            raise ValueError(f"the contexts have {length} steps, fewer than the VAR order {self.order}")
        if horizon < 1 or n_paths < 1:
            raise ValueError(f"horizon and n_paths must be at least 1, got {horizon} and {n_paths}")
        out = np.repeat(contexts[None, :, -1:, :], n_paths, axis=0).repeat(horizon, axis=2)  # constant channels
        k, p = len(self.kept), self.order
        if not k:
            return out
        w, v = np.linalg.eigh(self.sigma)
        root = v * np.sqrt(np.clip(w, 0, None))  # root @ root.T = sigma, also when sigma is singular
        noise = np.random.default_rng(seed).standard_normal((n_paths, n, horizon, k)) @ root.T
        # state[..., j, :] is x_{t-1-j}: the most recent step first
        state = np.repeat(contexts[None, :, length - p:, :][..., self.kept][:, :, ::-1], n_paths, axis=0)
        for t in range(horizon):
            x = self.intercept + np.einsum("pnjk,jlk->pnl", state, self.coefs) + noise[:, :, t]
            out[:, :, t, self.kept] = x
            state = np.concatenate([x[:, :, None], state[:, :, :-1]], axis=2) if p else state
        return out


def fit_var(history: np.ndarray, *, maxlags: int = 10) -> VarModel:
    """A VAR with a constant fitted by least squares (statsmodels) to one history (T, C), its order chosen by
    AIC in 0..maxlags. Constant channels are dropped (statsmodels refuses them beside the intercept) and held
    at their last value; one remaining channel is fitted as an AR(p) (statsmodels AutoReg, same AIC choice),
    as statsmodels' VAR refuses a single series. sigma is the df-adjusted residual covariance for the VAR,
    AutoReg's ML residual variance for one channel."""
    from statsmodels.tsa.api import VAR
    from statsmodels.tsa.ar_model import AutoReg, ar_select_order

    history = np.asarray(history, dtype=np.float64)
    if history.ndim != 2 or not history.shape[1]:
        raise ValueError(f"expected a history (T, C), got shape {history.shape}")
    if not np.isfinite(history).all():
        raise ValueError("the history holds NaN or infinite values")
    t, c = history.shape
    kept = np.flatnonzero(np.ptp(history, axis=0) > 0)
    k = len(kept)
    # Enough observations for the largest model: T - p rows, 1 + p K regressors, plus residual degrees of freedom.
    maxlags = max(0, min(maxlags, (t - 2) // (k + 1) - 1))
    if k == 0:
        return VarModel(np.zeros(0), np.zeros((0, 0, 0)), np.zeros((0, 0)), kept, c)
    x = history[:, kept]
    if k == 1:
        lags = ar_select_order(x[:, 0], maxlag=maxlags, ic="aic", trend="c").ar_lags if maxlags else None
        p = max(lags) if lags else 0
        fit = AutoReg(x[:, 0], lags=p, trend="c").fit()
        return VarModel(fit.params[:1].copy(), fit.params[1:].reshape(p, 1, 1).copy(),
                        np.array([[fit.sigma2]]), kept, c)
    try:
        fit = VAR(x).fit(maxlags=maxlags, ic="aic", trend="c")
    except np.linalg.LinAlgError:
        # Columns that copy each other (Stocks' Close and Adj_Close) make the residual covariance singular, whose
        # log-determinant AIC needs: pick the order on the data with a whisper of noise, then fit the data itself.
        noise = np.random.default_rng(0).normal(0.0, 1e-6, x.shape) * x.std(axis=0)
        p = VAR(x + noise).select_order(maxlags, trend="c").aic
        fit = VAR(x).fit(p, trend="c")
    return VarModel(np.asarray(fit.intercept), np.asarray(fit.coefs), np.asarray(fit.sigma_u), kept, c)


def var_forecast(history: np.ndarray, contexts: np.ndarray, horizon: int, *, n_paths: int = 100,
                 maxlags: int | None = None, seed: int = 0) -> np.ndarray:
    """Sample paths (n_paths, N, horizon, C) of a VAR fitted once to the training history (T, C) (fit_var,
    order by AIC up to min(maxlags or 10, Lc - 1)), simulated from each context's last p steps."""
    contexts = _contexts(contexts)
    model = fit_var(history, maxlags=min(maxlags or 10, contexts.shape[1] - 1))
    return model.simulate(contexts, horizon, n_paths=n_paths, seed=seed)
