"""Pictures of point sets: a histogram (1-D), a scatter plot (2-D) or a scatter matrix of the first 4 dimensions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difftrain import atomic

_INCHES = 4.8  # a 1-D or 2-D plot: 480 x 480 pixels
_CELL_INCHES = 2.4  # one panel of a scatter matrix: 240 x 240 pixels
_DPI = 100
_MAX_DIMS = 4
_MAX_LEGEND = 12  # more classes than this: colours only, no legend


def _colours(count: int) -> list:
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(count)]
    return [matplotlib.colormaps["turbo"](i / (count - 1)) for i in range(count)]


def _marker(count: int) -> float:
    """Marker diameter in points: smaller as the plot fills up."""
    return float(np.clip(60 / max(count, 1) ** 0.5, 1.0, 4.5))


def _finite(values: np.ndarray | None, dims: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if values is None:
        return None, None
    values = np.asarray(values, dtype=np.float64)
    values = (values[:, None] if values.ndim == 1 else values.reshape(values.shape[0], int(np.prod(values.shape[1:]))))[:, :dims]
    keep = np.isfinite(values).all(axis=1)
    return values[keep], keep


def save_scatter(points: np.ndarray, path: str | Path, *, labels: np.ndarray | None = None,
                 class_names: list[str] | None = None, reference: np.ndarray | None = None, title: str | None = None,
                 columns: list[str] | None = None) -> Path:
    """A PNG of `points` (N, D), coloured by `labels` (indices into `class_names`) over the `reference` points in grey.

    D = 1: histograms (densities); D = 2: a scatter plot, 480 x 480 pixels; D >= 3: the lower triangle of a scatter
    matrix of the first 4 dimensions with histograms on its diagonal, 240 pixels per panel. Non-finite rows are left
    out (and counted in the title). Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    path = Path(path)
    raw = np.asarray(points)
    dims_total = raw.shape[1] if raw.ndim == 2 else 1
    dims = min(dims_total, _MAX_DIMS)
    pts, keep = _finite(raw, dims)
    ref, _ = _finite(reference, dims)
    names = columns[:dims] if columns else [f"x{i}" for i in range(dims)]
    hidden = int((~keep).sum())

    # One group per class present, each with the colour of its class index (the same in every plot of a run).
    groups: list[tuple[np.ndarray, str | None, object]] = []  # (points, legend name, colour)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)[keep]
        present = np.unique(labels).tolist()
        count = max(len(class_names or []), (max(present) + 1) if present else 0)
        palette = _colours(count)
        for k in present:
            name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)
            groups.append((pts[labels == k], name, palette[k] if 0 <= k < count else "k"))
    else:
        groups.append((pts, "samples" if ref is not None else None, "C0"))
    legend = len(groups) <= _MAX_LEGEND and (ref is not None or labels is not None)

    def histogram(ax, d: int) -> None:
        data = [g[:, d] for g, _, _ in groups] + ([ref[:, d]] if ref is not None else [])
        values = np.concatenate(data) if data else np.zeros(0)
        bins = np.histogram_bin_edges(values, bins=40) if len(values) else np.linspace(0, 1, 11)
        width = bins[1] - bins[0]
        if ref is not None and len(ref):
            ax.hist(ref[:, d], bins=bins, density=True, color="0.8", label="real data")
        for g, name, colour in groups:
            if len(g):  # each class's share of the samples' density, so the classes add up to it
                ax.hist(g[:, d], bins=bins, weights=np.full(len(g), 1 / (len(pts) * width)), histtype="step",
                        linewidth=1.2, color=colour, label=name)

    def scatter(ax, dx: int, dy: int) -> None:
        # Line2D markers draw far faster than scatter's per-point paths.
        style = dict(linestyle="none", marker="o", markeredgewidth=0)
        if ref is not None and len(ref):
            ax.plot(ref[:, dx], ref[:, dy], color="0.75", label="real data", zorder=0, markersize=_marker(len(ref)), **style)
        for g, name, colour in groups:
            ax.plot(g[:, dx], g[:, dy], color=colour, alpha=0.7, label=name, zorder=1, markersize=_marker(len(pts)), **style)

    if dims <= 2:
        fig, ax = plt.subplots(figsize=(_INCHES, _INCHES), dpi=_DPI)
        if dims == 1:
            histogram(ax, 0)
            ax.set_xlabel(names[0])
            ax.set_ylabel("density")
        else:
            scatter(ax, 0, 1)
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
        handles_ax = ax
    else:
        fig, axes = plt.subplots(dims, dims, figsize=(_CELL_INCHES * dims, _CELL_INCHES * dims), dpi=_DPI, squeeze=False)
        for i in range(dims):
            for j in range(dims):
                ax = axes[i, j]
                if j > i:
                    ax.axis("off")
                    continue
                if i == j:
                    histogram(ax, i)
                else:
                    scatter(ax, j, i)
                ax.tick_params(labelsize=6)
                ax.locator_params(nbins=4)
                if i == dims - 1:
                    ax.set_xlabel(names[j], fontsize=8)
                if j == 0 and i > 0:
                    ax.set_ylabel(names[i], fontsize=8)
        handles_ax = axes[dims - 1, 0]
    if legend:
        handles, texts = handles_ax.get_legend_handles_labels()
        if texts:
            where = axes[0, dims - 1] if dims > 2 else handles_ax  # a matrix: its empty upper-right panel
            # loc="best" scans every point: only for small plots.
            loc = "best" if dims <= 2 and len(pts) + (len(ref) if ref is not None else 0) <= 2000 else "upper right"
            shown = where.legend(handles, texts, fontsize=7, markerscale=max(1.0, 2 / _marker(len(pts))), loc=loc)
            for handle in shown.legend_handles:
                handle.set_alpha(1)

    notes = [title] if title else []
    if dims_total > dims:
        notes.append(f"first {dims} of {dims_total} dimensions")
    if labels is not None and len(groups) > _MAX_LEGEND:
        notes.append(f"{len(groups)} classes")
    if hidden:
        notes.append(f"{hidden} non-finite point{'s' if hidden > 1 else ''} not shown")
    if not len(pts):
        notes.append("no points")
    if notes:
        fig.suptitle("; ".join(notes), fontsize=9)
    fig.tight_layout()
    return atomic.write_figure(fig, path, _DPI)
