"""`difftrain compare RUN...`: runs side by side. One table and one plot of their latest evaluations, each metric beside
its floor, only where the numbers are like for like (the same features, sample count and sampler; otherwise a note
says what differs), and one picture of each run's latest samples.

Writes OUT/compare.md, compare.json, compare.png (the metrics) and samples.png (the grids, one column per run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.evaluation.plots import PLOTTED
from difftrain.store.metrics_log import read_metrics
from difftrain.store.run import open_run

# What makes two evaluations comparable: the feature space (its weights' hash), the sample count, the sampler.
PROTOCOL = ("extractor", "extractor_sha256", "n_samples", "sampler", "steps", "guidance")


def latest_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The run's latest evaluation: by `difftrain eval` when it has one, else the last one during training."""
    evals = [r for r in read_metrics(run_dir) if r.get("event") == "eval" and r.get("ema_length") is None]
    final = [r for r in evals if not r.get("during_training")]
    return (final or evals or [None])[-1]


def compare_runs(runs: list[Path]) -> dict[str, Any]:
    """The runs' latest evaluations, the metrics they share, and whether (or why not) they are like for like."""
    if len(runs) < 2:
        raise UserError("compare needs at least two runs")
    rows = []
    for path in runs:
        run = open_run(path)  # a clear error for a folder that is not a run
        rows.append({"run": str(path), "name": path.name, "evaluation": latest_evaluation(path),
                     "grid": next(iter(sorted((path / "samples").glob("grid-*.png"))[-1:]), None), "dataset": run.dataset})
    scored = [r for r in rows if r["evaluation"]]
    differ = [key for key in PROTOCOL if len({str(r["evaluation"].get(key)) for r in scored}) > 1]
    unscored = [r["name"] for r in rows if not r["evaluation"]]
    notes = []
    if unscored:
        notes.append(f"{', '.join(unscored)} never evaluated, so left out of the metrics: run `difftrain eval RUN` on each")
    if differ:
        notes.append("not like for like, so no metric is set side by side: the runs differ in " + "; ".join(
            f"{key} ({', '.join(str(r['evaluation'].get(key)) for r in scored)})" for key in differ)
                     + ". Evaluate them with the same --n, sampler and steps on the same dataset")
    metrics = [] if differ or len(scored) < 2 else [
        key for key in PLOTTED if all(isinstance(r["evaluation"].get(key), (int, float)) for r in scored)]
    return {"runs": [{"run": r["run"], "name": r["name"], "grid": str(r["grid"]) if r["grid"] else None,
                      "evaluation": r["evaluation"]} for r in rows],
            "protocol": {key: scored[0]["evaluation"].get(key) for key in PROTOCOL} if scored and not differ else None,
            "metrics": metrics, "notes": notes}


def metric_cell(e: dict, key: str) -> str:
    """'value (floor)'."""
    floor = e.get(f"{key}_floor", e.get("cas_real") if key == "cas" else None)
    return f"{e[key]:.4g}" + (f" ({floor:.4g})" if isinstance(floor, (int, float)) else "")


def markdown(c: dict[str, Any]) -> str:
    names = [r["name"] for r in c["runs"]]
    lines = ["# Runs compared", ""]
    if c["protocol"]:
        p = c["protocol"]
        lines += [f"Latest evaluation of each run: {p['n_samples']} samples, {p['sampler']} {p['steps']} steps, guidance "
                  f"{p['guidance']}, features `{p['extractor']}`. In brackets: the floor, real data scored the same way.",
                  ""]
    lines += [f"- {note}" for note in c["notes"]] + ([""] if c["notes"] else [])
    if c["metrics"]:
        scored = [r for r in c["runs"] if r["evaluation"]]
        lines += ["| metric | " + " | ".join(r["name"] for r in scored) + " |", "|---|" + "---:|" * len(scored)]
        lines += [f"| {PLOTTED[k]} | " + " | ".join(metric_cell(r["evaluation"], k) for r in scored) + " |"
                  for k in c["metrics"]]
        lines += ["", "![metrics](compare.png)", ""]
    lines += ["Latest samples of each run:", "", "![latest samples of each run, left to right: " + ", ".join(names)
              + "](samples.png)", ""]
    return "\n".join(lines)


def plot_metrics(c: dict[str, Any], path: Path) -> Path | None:
    """One panel per metric, one bar per run, the floor as a dashed line: the axis starts at zero, so one point is
    never a lone dot on an arbitrary scale."""
    if not c["metrics"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in c["runs"] if r["evaluation"]]
    names = [r["name"] for r in scored]
    cols = min(3, len(c["metrics"]))
    rows = -(-len(c["metrics"]) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, c["metrics"]):
        values = [r["evaluation"][key] for r in scored]
        ax.bar(range(len(names)), values, color="tab:blue")
        floors = [r["evaluation"].get(f"{key}_floor") for r in scored]
        for i, floor in enumerate(floors):
            if isinstance(floor, (int, float)):
                ax.hlines(floor, i - 0.4, i + 0.4, colors="black", linestyles="--", label="floor" if i == 0 else None)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_ylim(0, max([*values, *[f for f in floors if isinstance(f, (int, float))]]) * 1.15 or 1)
        ax.set_title(PLOTTED[key])
        ax.grid(axis="y", alpha=0.3)
        if any(isinstance(f, (int, float)) for f in floors):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(c["metrics"]):]:
        ax.axis("off")
    fig.tight_layout()
    return atomic.write_figure(fig, path)


def sample_grids(c: dict[str, Any], path: Path) -> Path | None:
    """Each run's latest grid of samples, side by side, scaled to one height, its name above it."""
    from PIL import Image, ImageDraw

    named = [(r["name"], Image.open(r["grid"]).convert("RGB")) for r in c["runs"] if r["grid"]]
    if not named:
        return None
    height = max(g.height for _, g in named)
    named = [(n, g.resize((round(g.width * height / g.height), height), Image.Resampling.NEAREST)) for n, g in named]
    gap, title = max(4, height // 40), 16
    canvas = Image.new("RGB", (sum(g.width for _, g in named) + gap * (len(named) - 1), height + title), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for name, g in named:
        canvas.paste(g, (x, title))
        draw.text((x + 2, 2), name, fill="black")
        x += g.width + gap
    with atomic.atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def write_comparison(runs: list[Path], out: Path) -> dict[str, Any]:
    c = compare_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    plot_metrics(c, out / "compare.png")
    sample_grids(c, out / "samples.png")
    atomic.write_json(out / "compare.json", c)
    atomic.write_text(out / "compare.md", markdown(c))
    return c
