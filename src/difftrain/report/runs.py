"""`difftrain runs FOLDER`: every run under a folder, one row each: its data, preset, images trained of its goal, its
best evaluation beside the floor, and its state (running, finished, resumable, stopped before any checkpoint, or before
it began training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from difftrain.config import read_config
from difftrain.errors import UserError
from difftrain.evaluation.suite import LOWER_IS_BETTER
from difftrain.folder_lock import lock_holder
from difftrain.store.checkpoint import checkpoint_images, list_checkpoints
from difftrain.store.metrics_log import read_metrics
from difftrain.store.run import open_run
from difftrain.training.trainer import total_images


def _run_config(path: Path) -> bool:
    """Whether a config.yaml is a run's (a run stopped before its dataset.json has only that): a run's holds every section
    of a config; anyone's other config.yaml rarely does."""
    try:
        top = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(top, dict) and {"data", "model", "diffusion", "train", "eval"} <= set(top)


def find_runs(root: Path) -> list[Path]:
    """Run folders (config.yaml beside dataset.json, or a run's config.yaml alone) under `root`, itself included, sorted;
    hidden folders skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder that holds the runs (e.g. runs)")
    found = [p.parent for p in root.rglob("config.yaml") if ((p.parent / "dataset.json").is_file() or _run_config(p))
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
    if not (path / "dataset.json").is_file():  # starting, or stopped before it began training (killed, or refused)
        try:
            config = read_config(path / "config.yaml")
        except UserError as e:
            return {"run": name, "state": f"unreadable: {e}"}
        holder = lock_holder(path)
        return {"run": name, "data": str(config.data.path or "?").removeprefix("builtin:"), "preset": config.preset,
                "images": 0, "goal": total_images(config.train), "metric": None, "best": None, "floor": None,
                "state": f"running ({holder})" if holder else "stopped before it began training"}
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
