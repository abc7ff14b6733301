"""`difftrain runs`: every run under a folder with its data, preset, images, best evaluation beside its floor, and
state, read from the run's own files."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from difftrain.cli import app
from difftrain.config import load_config, save_config
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides
from tests.test_folder_lock import HOLD


def test_runs_lists_each_run_with_its_state_and_best_evaluation(tmp_path, digits_dir):
    root = tmp_path / "runs"
    done = root / "done"
    train(load_config("digits", overrides=tiny_overrides(digits_dir)), done, progress=False)
    with open(done / "metrics.jsonl", "a") as f:  # two evaluations: the better FID is the lower one
        f.write(json.dumps({"event": "eval", "images": 32, "fid": 0.9, "fid_floor": 0.2}) + "\n")
        f.write(json.dumps({"event": "eval", "images": 64, "fid": 0.5, "fid_floor": 0.2}) + "\n")
    stopped = root / "group" / "stopped"
    train(load_config(overrides=tiny_overrides(digits_dir, **{"train.checkpoint_every_images": 32})), stopped,
          progress=False, stop_at_step=3)
    busy = root / "busy"
    train(load_config(overrides=tiny_overrides(digits_dir)), busy, progress=False)
    killed = root / "killed"  # killed while loading its libraries: its config.yaml alone
    killed.mkdir()
    save_config(load_config("mnist"), killed / "config.yaml")
    (root / "project").mkdir()
    (root / "project" / "config.yaml").write_text("model: resnet\nlr: 0.1\n")  # someone's other config: no run
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(busy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["runs", str(root), "--json"], catch_exceptions=False)
        table = CliRunner().invoke(app, ["runs", str(root)], catch_exceptions=False).output
    finally:
        holder.kill()
        holder.wait()
    rows = {r["run"]: r for r in json.loads(result.stdout)}
    assert list(rows) == ["busy", "done", "group/stopped", "killed"]
    assert rows["killed"]["state"] == "stopped before it began training" and rows["killed"]["preset"] == "mnist"
    assert rows["done"] == {"run": "done", "data": "digits", "preset": "digits", "images": 64, "goal": 64,
                            "metric": "fid", "best": 0.5, "floor": 0.2, "state": "finished"}
    assert rows["group/stopped"]["state"] == "resumable" and rows["group/stopped"]["images"] == 48
    assert rows["group/stopped"]["preset"] is None and rows["group/stopped"]["best"] is None
    assert rows["busy"]["state"].startswith(f"running (process {holder.pid} on ")
    assert "fid 0.5 (0.2)" in table and "48 / 64" in table
    empty = CliRunner().invoke(app, ["runs", str(tmp_path / "nothing")])
    assert empty.exception is not None and "is not a folder" in str(empty.exception)
