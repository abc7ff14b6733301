"""PNG plots of a run's evaluation records: each metric against training images, against sampling steps and against
the guidance weight, with the real-data floor drawn where the metric has one."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from difftrain import atomic
from difftrain.store.metrics_log import read_metrics

# Metric key -> axis title, in display order.
PLOTTED = {"fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall", "density": "density",
           "coverage": "coverage", "cas": "classification accuracy score", "label_agreement": "label agreement",
           "memorized_fraction": "memorized fraction", "nll_bits_per_dim": "NLL (bits/dim)"}


def _figure(series: dict[str, dict[str, list[tuple[float, float]]]], floors: dict[str, dict[str, float]], xlabel: str, path: Path,
            log_x: bool = False) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    keys = [k for k in PLOTTED if series.get(k)]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, points in sorted(series[key].items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        for (label, value), style in zip(sorted(floors.get(key, {}).items()), ["--", ":", "-.", (0, (1, 3))] * 4):
            ax.axhline(value, color="gray", linestyle=style, linewidth=1, label=label)
        ax.set_title(PLOTTED[key])
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
        xs = {x for points in series[key].values() for x, _ in points}
        ys = [y for points in series[key].values() for _, y in points] + list(floors.get(key, {}).values())
        if len(xs) == 1:  # one point: an axis from zero, not a sliver around it with an offset label
            (x,) = xs
            if not log_x:
                ax.set_xlim(0, 2 * x if x > 0 else 1)
            if min(ys) >= 0:
                ax.set_ylim(0, max(ys) * 1.6 or 1)  # (headroom for the legend)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return atomic.write_figure(fig, path)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write RUN/eval/metrics-vs-images.png and, when several step counts or guidance weights were scored at the latest
    checkpoint, metrics-vs-steps.png and metrics-vs-guidance.png."""
    run_dir = Path(run_dir)
    evals = [r for r in read_metrics(run_dir) if r.get("event") == "eval"]
    if not evals:
        return []
    by_images: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    by_steps: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    by_guidance: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    latest = max(r["images"] for r in evals)
    # Floors depend on the sample count and the feature space: one dashed line per (extractor, n).
    floors: dict[str, dict[str, float]] = defaultdict(dict)
    for r in evals:
        during = " (during training)" if r.get("during_training") else ""
        space = f"n={r.get('n_samples', '-')}" + (f", {r['extractor']}" if r.get("extractor") else "")
        g = f", guidance {r['guidance']:g}" if isinstance(r.get("guidance"), (int, float)) else ""
        for key in PLOTTED:
            if isinstance(r.get(key), (int, float)):
                by_images[key][f"{r.get('sampler', '-')} {r.get('steps', '-')} steps{g}, {space}{during}"].append((r["images"], r[key]))
                # The likelihood does not depend on the sampler: it is plotted against training only.
                if r["images"] == latest and not r.get("during_training") and "steps" in r and key != "nll_bits_per_dim":
                    by_steps[key][f"{r['sampler']}{g}, {space}"].append((r["steps"], r[key]))
                    if g:
                        by_guidance[key][f"{r['sampler']} {r['steps']} steps, {space}"].append((r["guidance"], r[key]))
            floor = r.get("cas_real" if key == "cas" else f"{key}_floor")  # CAS: the same classifier trained on real data
            if isinstance(floor, (int, float)):
                floors[key][f"floor, {space}"] = floor
    written = [_figure(by_images, floors, "training images", run_dir / "eval" / "metrics-vs-images.png")]
    if any(len({x for x, _ in pts}) > 1 for groups in by_steps.values() for pts in groups.values()):
        written.append(_figure(by_steps, floors, "sampling steps", run_dir / "eval" / "metrics-vs-steps.png", log_x=True))
    if any(len({x for x, _ in pts}) > 1 for groups in by_guidance.values() for pts in groups.values()):
        written.append(_figure(by_guidance, floors, "guidance weight", run_dir / "eval" / "metrics-vs-guidance.png"))
    return [p for p in written if p is not None]
