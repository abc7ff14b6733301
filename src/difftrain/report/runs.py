"""`difftrain runs FOLDER`: every run under a folder, one row each: its data, preset, images trained of its goal, its
best evaluation beside the floor, and its state (running, finished, resumable, or stopped before any checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difftrain.errors import UserError
from difftrain.evaluation.suite import LOWER_IS_BETTER
from difftrain.folder_lock import lock_holder
from difftrain.store.checkpoint import checkpoint_images, list_checkpoints
from difftrain.store.metrics_log import read_metrics
from difftrain.store.run import open_run
from difftrain.training.trainer import total_images


def find_runs(root: Path) -> list[Path]:
    """Run folders (config.yaml beside dataset.json) under `root`, itself included, sorted; hidden folders skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder that holds the runs (e.g. runs)")
    found = [p.parent for p in root.rglob("config.yaml") if (p.parent / "dataset.json").is_file()
             and not any(part.startswith(".") for part in p.parent.relative_to(root).parts)]
    return sorted(set(found))


def best_evaluation(path: Path, metric: str) -> dict[str, Any] | None:
    """The evaluation record with the best `metric` (during training or after), or None."""
    scored = [r for r in read_metrics(path) if r.get("event") == "eval" and isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    return (min if metric in LOWER_IS_BETTER else max)(scored, key=lambda r: r[metric])


def run_row(path: Path, root: Path) -> dict[str, Any]:
    name = path.relative_to(root).as_posix() if path != root else path.name
    try:
        run = open_run(path)
    except UserError as e:
        return {"run": name, "state": f"unreadable: {e}"}
    config, checkpoints = run.config, list_checkpoints(path)
    images, goal = (checkpoint_images(checkpoints[-1]) if checkpoints else 0), total_images(config.train)
    holder = lock_holder(path)
    state = (f"running ({holder})" if holder else "finished" if images >= goal
             else "resumable" if checkpoints else "stopped before its first checkpoint")
    metric = config.eval.best_metric
    best = best_evaluation(path, metric)
    source = (run.dataset.get("source") or {}).get("path") or run.dataset.get("path") or "?"
    return {"run": name, "data": source.removeprefix("builtin:"), "preset": config.preset, "images": images, "goal": goal,
            "metric": metric if best else None, "best": best.get(metric) if best else None,
            "floor": best.get(f"{metric}_floor") if best else None, "state": state}
