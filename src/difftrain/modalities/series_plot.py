"""Pictures of series windows: a grid of small line plots, one colour per channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difftrain import atomic

_COLUMNS = 4
_PANEL_INCHES = (3.0, 1.8)
_DPI = 90


def save_windows(windows: np.ndarray, path: str | Path, *, columns: list[str], reference: np.ndarray | None = None,
                 paired: np.ndarray | None = None, paired_name: str = "", count: int = 12) -> Path:
    """A PNG of up to `count` windows (N, L, C); with `reference`, real windows in the last row (grey titles); with
    `paired`, each window above its partner (dashed). Every panel shares the y range, so scales compare. Atomic."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    shown = [("sample", w, None) for w in windows[:count]]
    if paired is not None:
        shown = [("sample", w, p) for w, p in zip(windows[:count // 2], paired[:count // 2], strict=False)]
    if reference is not None and len(reference):
        shown = shown[:count - _COLUMNS] + [("real", w, None) for w in reference[:_COLUMNS]]
    rows = max(1, -(-len(shown) // _COLUMNS))
    values = np.concatenate([np.asarray(w, np.float64).ravel() for _, w, _ in shown] +
                            [np.asarray(p, np.float64).ravel() for _, _, p in shown if p is not None] or [np.zeros(1)])
    finite = values[np.isfinite(values)]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    fig, axes = plt.subplots(rows, _COLUMNS, figsize=(_PANEL_INCHES[0] * _COLUMNS, _PANEL_INCHES[1] * rows), squeeze=False,
                             sharex=True)
    colours = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(columns))]
    for ax, (what, window, partner) in zip(axes.flat, shown):
        for c, name in enumerate(columns[:10]):
            ax.plot(window[:, c], color=colours[c], lw=1.0, label=name)
            if partner is not None:
                ax.plot(partner[:, c], color=colours[c], lw=1.0, ls="--")
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(what if partner is None else f"sample (solid), {paired_name} (dashed)", fontsize=7,
                     color="grey" if what == "real" else "black")
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="upper right", ncol=min(len(columns), 5))
    fig.tight_layout()
    return atomic.write_figure(fig, path, _DPI)


def save_forecast(context: np.ndarray, bands: np.ndarray, path: str | Path, *, columns: list[str]) -> Path:
    """One panel per channel (up to 8): the context (L0, C), then the forecast's median with its 25-75% and 5-95% bands
    (`bands`: the 5, 25, 50, 75, 95% quantiles, (5, H, C)). Atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = columns[:8]
    fig, axes = plt.subplots(len(shown), 1, figsize=(7.0, 1.6 * len(shown)), squeeze=False, sharex=True)
    past = np.arange(len(context))
    future = np.arange(len(context), len(context) + bands.shape[1])
    for c, (ax, name) in enumerate(zip(axes[:, 0], shown)):
        ax.plot(past, context[:, c], color="black", lw=1.0)
        ax.fill_between(future, bands[0, :, c], bands[4, :, c], color="tab:blue", alpha=0.2, lw=0)
        ax.fill_between(future, bands[1, :, c], bands[3, :, c], color="tab:blue", alpha=0.4, lw=0)
        ax.plot(future, bands[2, :, c], color="tab:blue", lw=1.2)
        ax.set_ylabel(name, fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].set_title("context (black), forecast median with 50% and 90% bands", fontsize=8)
    fig.tight_layout()
    return atomic.write_figure(fig, path, _DPI)
