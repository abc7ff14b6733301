"""Kill -9 at random points of `train`, `synth`, `data prepare`, `sample` and `eval`, then the same command again: every
checkpoint loads, the resumed run ends bit for bit where an uninterrupted one does, and the others write exactly the
uninterrupted outputs. The harness is benchmarks/kill_points.py, whose full run (20 points per verb) is in
docs/benchmarks.md."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kill_points import measure  # noqa: E402


def test_the_long_verbs_survive_kill_9_at_random_points(tmp_path):
    verbs = ["train", "synth", "data prepare", "sample", "eval"]
    results = measure(tmp_path, points=2, seed=1, env={**os.environ, "OMP_NUM_THREADS": "1"}, only=verbs)
    assert list(results) == verbs
    for verb, outcome in results.items():
        assert outcome["problems"] == [] and outcome["survived"] == 2, (verb, outcome)
    assert sum(o["killed"] for o in results.values()) >= 5  # most points fell inside the runs, not after them


def test_resuming_a_run_killed_before_its_first_save_starts_it(tmp_path, digits_dir):
    """Found by the kill points: killed in its first seconds, a run has no folder yet, and `--resume` must not fail."""
    import subprocess

    from tests.conftest import tiny_overrides

    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "difftrain", "train", "--out", str(run), "--resume",
                             *tiny_overrides(digits_dir)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "holds no run to resume yet" in " ".join(result.stderr.split()) and (run / "config.yaml").is_file()


def test_a_run_killed_before_its_first_checkpoint_logs_only_the_run_that_follows(tmp_path, digits_dir):
    """Found by the kill points: the killed run's log lines stayed in metrics.jsonl when the rerun started from nothing."""
    import json

    from difftrain.config import load_config
    from difftrain.training.trainer import train
    from tests.conftest import tiny_overrides

    config = load_config(overrides=tiny_overrides(digits_dir))
    train(config, tmp_path / "clean", progress=False)
    killed = tmp_path / "killed"
    train(config, killed, progress=False, stop_at_step=2)  # as if killed: two steps logged ...
    for ckpt in (killed / "checkpoints").glob("ckpt-*"):  # ... and no checkpoint written yet
        __import__("shutil").rmtree(ckpt)
    train(config, killed, resume=True, progress=False)

    def records(run):
        return [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "peak_memory_bytes")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert records(killed) == records(tmp_path / "clean")
