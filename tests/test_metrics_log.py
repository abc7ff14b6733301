"""metrics.jsonl: a repeated evaluation replaces its record (and TensorBoard is not sent it twice), a line a killed
writer cut short does not swallow the next record, and a killed rewrite's temporary goes."""

from __future__ import annotations

import json

import pytest

from difftrain.store.metrics_log import EVALUATION, MetricsLog, read_metrics

EVAL = {"event": "eval", "images": 64, "checkpoint": "/runs/a/checkpoints/ckpt-000000064", "data": "/data/digits",
        "eval_seed": 0, "sampler": "heun", "steps": 18, "guidance": 1.0, "seed": 0, "n_samples": 500}


def lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_evaluation_run_again_replaces_its_record_and_keeps_its_other_scores(tmp_path):
    log = MetricsLog(tmp_path)
    log.write({"event": "train", "images": 64, "loss": 0.5})
    log.write({**EVAL, "fid": 9.0, "kid": 0.1}, same=EVALUATION)
    log.write({**EVAL, "steps": 32, "fid": 7.0}, same=EVALUATION)  # another measurement: its own record
    log.write({**EVAL, "fid": 8.5, "precision": 0.7}, same=EVALUATION)  # the first again, with other metrics
    log.close()
    assert lines(tmp_path) == [{"event": "train", "images": 64, "loss": 0.5}, {**EVAL, "steps": 32, "fid": 7.0},
                               {**EVAL, "fid": 8.5, "kid": 0.1, "precision": 0.7}]


def test_an_evaluation_run_again_sends_tensorboard_only_the_scores_it_does_not_hold(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path)
    log.write({**EVAL, "during_training": True, "images": 32, "fid": 12.0})
    log.write({**EVAL, "fid": 9.0, "kid": 0.1}, same=EVALUATION)
    log.close()
    log = MetricsLog(tmp_path)  # a later `difftrain eval`
    log.write({**EVAL, "fid": 8.5, "kid": 0.1, "precision": 0.7}, same=EVALUATION)
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["fid", "kid", "precision"]  # not steps, guidance, seed...
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("fid", "kid", "precision")}
    assert scalars == {"fid": [(32, 12.0), (64, 9.0), (64, 8.5)], "kid": [(64, pytest.approx(0.1))],
                       "precision": [(64, pytest.approx(0.7))]}


def test_training_records_are_never_merged(tmp_path):
    log = MetricsLog(tmp_path)
    for loss in (0.5, 0.4):
        log.write({"event": "train", "images": 64, "loss": loss})
    log.close()
    assert [r["loss"] for r in lines(tmp_path)] == [0.5, 0.4]


def test_a_line_cut_short_by_a_kill_does_not_swallow_the_next_record(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "images": 32, "loss": 0.6}\n{"event": "tra')
    leftover = tmp_path / ".metrics.jsonl.k3j9x0ab.tmp"  # a rewrite killed before its rename
    leftover.write_text("half")
    log = MetricsLog(tmp_path)
    assert not leftover.exists()
    log.write({"event": "train", "images": 64, "loss": 0.5})
    log.close()
    assert read_metrics(tmp_path) == [{"event": "train", "images": 32, "loss": 0.6},
                                      {"event": "train", "images": 64, "loss": 0.5}]


def test_a_resume_drops_what_came_after_its_checkpoint_but_not_difftrain_eval(tmp_path):
    log = MetricsLog(tmp_path)
    for images in (32, 64, 96):
        log.write({"event": "train", "images": images})
    log.write({**EVAL, "images": 96, "fid": 5.0}, same=EVALUATION)
    log.close()
    MetricsLog(tmp_path, resume_at=64).close()
    assert [(r["event"], r["images"]) for r in lines(tmp_path)] == [("train", 32), ("train", 64), ("eval", 96)]
