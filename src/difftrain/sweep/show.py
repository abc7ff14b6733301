"""`difftrain sweep show`: the leaderboard, parameter importances, optimisation history and slice plots, and
best.yaml, the best trial's config to train again."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from difftrain import atomic
from difftrain.folder_lock import taking_turns
from difftrain.sweep.space import Space
from difftrain.sweep.study import SweepSpec, load


@dataclass
class Summary:
    objectives: list[str]
    directions: list[str]
    rows: list[dict]  # one per trial, best first: number, state, values, params, images, run_dir, reason
    best: list[int]  # the best trial (one objective) or the Pareto front (several)
    importances: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    compute_images: int = 0  # training images of every trial together


def _images(frozen) -> int:
    """Training images a trial ran: what its run logged, or its last report."""
    steps = sorted(frozen.intermediate_values)
    run_dir = frozen.user_attrs.get("run_dir")
    logged = 0
    if run_dir and (Path(run_dir) / "metrics.jsonl").is_file():
        for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
            try:
                logged = max(logged, int(json.loads(line).get("images", 0)))
            except (ValueError, TypeError, AttributeError):
                continue
    return max(logged, steps[-1] if steps else 0)


def summarize(out: Path) -> Summary:
    """The sweep's trials, best first, with the best trial (or Pareto front) and parameter importances."""
    import optuna

    spec = SweepSpec.load(out)
    space: Space = spec.parsed_space()
    study = load(out)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    sign = [1 if d == "minimize" else -1 for d in space.directions]

    def key(t):
        if t.values is not None:
            return (0, *(s * v for s, v in zip(sign, t.values)))
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.inf * sign[0]
        return (1 if t.state.name == "PRUNED" else 2, sign[0] * last)

    rows = []
    for t in sorted(trials, key=key):
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "values": t.values, "last_reported": last,
                     "images": _images(t),
                     "params": {k: _decoded(v) for k, v in t.params.items()}, "run_dir": t.user_attrs.get("run_dir"),
                     "reason": t.user_attrs.get("fail_reason")})
    best = [t.number for t in study.best_trials] if complete else []
    if len(space.objectives) == 1 and complete:
        best = [study.best_trial.number]
    importances = {}
    varied = {k for t in complete for k in t.params if len({json.dumps(u.params.get(k)) for u in complete}) > 1}
    if len(complete) >= 3 and varied:
        try:
            importances = dict(optuna.importance.get_param_importances(
                study, params=sorted(varied), target=(lambda t: t.values[0]) if len(space.objectives) > 1 else None))
        except (ValueError, RuntimeError):
            importances = {}
    return Summary(space.objectives, space.directions, rows, best, importances,
                   compute_images=sum(r["images"] for r in rows))


def _decoded(value):
    """A categorical parameter as the config reads it (Optuna stores lists as JSON text)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


OUTPUTS = ("leaderboard.csv", "best.yaml", "summary.json", "history.png", "slices.png", "intermediate.png",
           "importances.png", "pareto.png")


def write_outputs(out: Path, summary: Summary) -> list[str]:
    """leaderboard.csv, summary.json, best.yaml and the plots; the files written. One writer at a time (the sweep's
    own show at its end, a user's `sweep show`), which first removes what a killed one left half-written."""
    with taking_turns(out):
        for name in OUTPUTS:
            atomic.remove_leftovers(out / name, inside=False)
        return _write_outputs(out, summary)


def _write_outputs(out: Path, summary: Summary) -> list[str]:
    import optuna

    files = []
    header = ["rank", "trial", "state", *summary.objectives, "images", "params", "reason"]
    lines = [",".join(header)]
    for rank, r in enumerate(summary.rows, 1):
        values = r["values"] or [None] * len(summary.objectives)
        cells = [rank, r["trial"], r["state"], *("" if v is None else f"{v:.6g}" for v in values), r["images"],
                 json.dumps(json.dumps(r["params"])), json.dumps(r["reason"] or "")]
        lines.append(",".join(map(str, cells)))
    atomic.write_text(out / "leaderboard.csv", "\n".join(lines) + "\n")
    files.append("leaderboard.csv")
    if summary.best:
        best_run = Path(summary.rows[[r["trial"] for r in summary.rows].index(summary.best[0])]["run_dir"])
        if (best_run / "config.yaml").is_file():
            atomic.write_text(out / "best.yaml", f"# trial {summary.best[0]} of {out}: train it with "
                              f"`difftrain train --config {out / 'best.yaml'} --out runs/best`\n"
                              + (best_run / "config.yaml").read_text())
            files.append("best.yaml")
    atomic.write_text(out / "summary.json", json.dumps({
        "objectives": summary.objectives, "directions": summary.directions, "best": summary.best,
        "importances": summary.importances, "compute_images": summary.compute_images, "trials": summary.rows}, indent=2) + "\n")
    files.append("summary.json")

    study = load(out)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return files
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    several = len(summary.objectives) > 1
    target = (lambda t: t.values[0]) if several else None
    plots = {"history.png": lambda: vis.plot_optimization_history(study, target=target, target_name=summary.objectives[0]),
             "slices.png": lambda: vis.plot_slice(study, target=target, target_name=summary.objectives[0]),
             "intermediate.png": lambda: vis.plot_intermediate_values(study)}
    if summary.importances:
        plots["importances.png"] = lambda: vis.plot_param_importances(study, target=target, target_name=summary.objectives[0])
    if several:
        plots["pareto.png"] = lambda: vis.plot_pareto_front(study, target_names=summary.objectives)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in plots.items():
            if several and name == "intermediate.png":
                continue
            try:
                axes = plot()
            except (ValueError, RuntimeError):  # too few trials for this plot
                continue
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
            atomic.write_figure(figure, out / name)
            plt.close(figure)
            files.append(name)
    return files
