"""Pictures of table rows: each column's distribution (samples against real rows), and rows side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from difftrain import atomic

_DPI = 110
_SHOWN = 12  # columns in a preview


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_marginals(frame, path: str | Path, schema: list[dict[str, Any]], *, reference=None) -> Path:
    """One panel per column (up to 12): a histogram for numbers and datetimes, bars of category shares for categories,
    the samples filled and `reference` (real rows) outlined; missing cells as their own bar or a note."""
    plt = _pyplot()
    shown = schema[:_SHOWN]
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.2 * rows), squeeze=False)
    for ax, column in zip(axes.flat, shown):
        name = column["name"]
        if column.get("categories"):
            names = [*column["categories"][:15], "<missing>"]
            for data, style in ((frame, {"color": "tab:blue", "alpha": 0.7}), (reference, {"fill": False, "edgecolor": "black"})):
                if data is None:
                    continue
                values = data[name].astype(object).where(data[name].notna(), "<missing>")
                shares = values.value_counts(normalize=True).reindex(names, fill_value=0.0).to_numpy()
                ax.bar(np.arange(len(names)), shares, **style)
            ax.set_xticks(np.arange(len(names)), [n[:10] for n in names], rotation=60, fontsize=5, ha="right")
        else:
            data = frame[name].dropna()
            numbers = (data.astype("int64") / 1e9 if column["type"] == "datetime" else data.astype(float)).to_numpy()
            ref = None
            if reference is not None:
                r = reference[name].dropna()
                ref = (r.astype("int64") / 1e9 if column["type"] == "datetime" else r.astype(float)).to_numpy()
            both = numbers if ref is None else np.concatenate([numbers, ref])
            bins = np.histogram_bin_edges(both, bins=30) if len(both) else 10
            if len(numbers):
                ax.hist(numbers, bins=bins, density=True, color="tab:blue", alpha=0.7)
            if ref is not None and len(ref):
                ax.hist(ref, bins=bins, density=True, histtype="step", color="black")
            missing = frame[name].isna().mean()
            if missing:
                ax.text(0.98, 0.95, f"{missing:.0%} missing", transform=ax.transAxes, ha="right", va="top", fontsize=6)
        ax.set_title(f"{name} ({column['type']})", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    title = "samples (blue)" + (", real rows (black outline)" if reference is not None else "")
    if len(schema) > _SHOWN:
        title += f"; first {_SHOWN} of {len(schema)} columns"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return atomic.write_figure(fig, path, _DPI)


def save_row_pairs(left, right, path: str | Path, *, right_name: str, count: int = 12) -> Path:
    """Rows of `left` each above its partner in `right`, as a table picture (memorization: sample and nearest row)."""
    plt = _pyplot()
    n = min(count, len(left))
    columns = list(left.columns)[:10]
    cells, colours = [], []
    for i in range(n):
        for frame, shade in ((left, "white"), (right, "#e8e8e8")):
            cells.append([_cell(frame[c].iloc[i]) for c in columns])
            colours.append([shade] * len(columns))
    fig, ax = plt.subplots(figsize=(min(1.3 * len(columns) + 1, 14), 0.25 * max(2 * n, 1) + 0.8))
    ax.axis("off")
    if cells:
        table = ax.table(cellText=cells, cellColours=colours, colLabels=[c[:14] for c in columns], loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(6)
    ax.set_title(f"each sample (white) above its {right_name} (grey)", fontsize=8)
    fig.tight_layout()
    return atomic.write_figure(fig, path, _DPI)


def _cell(value: Any) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)[:14]
