"""Kill -9 at random points of `train`, `synth`, `data prepare`, `sample`, `eval` and `sweep`, then the same command
again (`sweep --resume`): every checkpoint loads, the resumed run ends bit for bit where an uninterrupted one does, and
the others write exactly the uninterrupted outputs. The harness is benchmarks/kill_points.py, whose full run (20 points per verb) is in
docs/benchmarks.md."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kill_points import measure  # noqa: E402


def test_the_long_verbs_survive_kill_9_at_random_points(tmp_path):
    verbs = ["train", "synth", "data prepare", "sample", "eval", "sweep"]
    # One point per verb here (each point is two processes; the suite must stay well inside CI's 30 minutes);
    # the benchmark's full run has 20.
    results = measure(tmp_path, points=1, seed=1, env={**os.environ, "OMP_NUM_THREADS": "1"}, only=verbs)
    assert list(results) == verbs
    for verb, outcome in results.items():
        assert outcome["problems"] == [] and outcome["survived"] == 1, (verb, outcome)
    assert sum(o["killed"] for o in results.values()) >= 3  # most points fell inside the runs, not after them


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


def test_a_run_killed_between_a_checkpoint_and_its_evaluation_scores_it_on_resuming(tmp_path, digits_dir, monkeypatch):
    """Found by the kill points of `sweep`: the last checkpoint was written, its evaluation not yet logged; resumed, the
    run had nothing left to train and its objective stayed missing (the trial failed)."""
    import json

    import difftrain.training.trainer as trainer
    from difftrain.config import load_config
    from tests.conftest import tiny_overrides

    config = load_config(overrides=tiny_overrides(digits_dir, **{"train.duration_steps": 4, "eval.every_images": 32,
                                                                 "eval.during_n": 32, "eval.classifier_epochs": 1}))

    def evaluations(run):  # (their checkpoint's path named from the run)
        return [json.loads(line.replace(str(run.resolve()), "RUN")) for line in (run / "metrics.jsonl").read_text().splitlines()
                if '"during_training": true' in line]

    trainer.train(config, tmp_path / "clean", progress=False)
    evaluate = trainer.evaluate_ema

    class Killed(Exception):
        pass

    def killed_at_the_end(state):
        if state.images == 64:  # the last checkpoint is written: killed before its evaluation
            raise Killed
        return evaluate(state)

    monkeypatch.setattr(trainer, "evaluate_ema", killed_at_the_end)
    with pytest.raises(Killed):
        trainer.train(config, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    assert [r["images"] for r in evaluations(tmp_path / "killed")] == [32]
    trainer.train(config, tmp_path / "killed", resume=True, progress=False)
    assert [r["images"] for r in evaluations(tmp_path / "clean")] == [32, 64]
    assert evaluations(tmp_path / "killed") == evaluations(tmp_path / "clean")
