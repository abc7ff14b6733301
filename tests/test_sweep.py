"""`difftrain sweep`: the search space, pruning, a killed study resumed without lost or repeated trials, failures
recorded, `sweep show` and best.yaml, and the learning-rate range test."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from difftrain.config import load_config
from difftrain.errors import UserError
from difftrain.sweep.lr_range import lr_schedule, suggest
from difftrain.sweep.space import parse_space, read_space
from tests.conftest import tiny_overrides
from tests.test_cli import difftrain


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_space_reads_ranges_choices_and_conditions(tmp_path):
    base = load_config("digits")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"objective": "fid", "pruner": "hyperband", "params": {
        "optim.lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "train.ema_halflife_images": {"low": 1000, "high": 9000, "step": 1000},
        "model.unet.channels": {"choices": [[32, 64], [64, 128]]},
        "model.dit.width": {"choices": [64, 128], "when": {"model.arch": "dit"}}}}))
    space = read_space(path, base, 30_000)
    kinds = {p.key: p.kind for p in space.params}
    assert kinds == {"optim.lr": "float", "train.ema_halflife_images": "int", "model.unet.channels": "categorical",
                     "model.dit.width": "categorical"}
    assert space.directions == ["minimize"] and space.pruner == "hyperband"

    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    settings = space.draw(trial, base)
    # A list choice comes back as the list the config reads; the DiT's width is not drawn for a UNet.
    assert settings["model.unet.channels"] in ([32, 64], [64, 128])
    assert "model.dit.width" not in settings
    assert 1e-4 <= settings["optim.lr"] <= 1e-2 and settings["train.ema_halflife_images"] % 1000 == 0
    # Reading the same trial again gives the same settings (a resumed trial keeps its parameters).
    assert space.draw(trial, base) == settings
    # The saved form reads back as the same space.
    assert parse_space(space.to_dict(), "sweep.json", []).to_dict() == space.to_dict()


@pytest.mark.parametrize("raw, message", [
    ({"params": {"optim.lrate": {"low": 1, "high": 2}}}, "params.optim.lrate: no such setting"),
    ({"params": {"optim.lr": {"low": 2, "high": 1}}}, "give numbers low < high"),
    ({"params": {"optim.lr": {"low": 0, "high": 1, "log": True}}}, "a log range needs low > 0"),
    ({"objective": "fidd"}, "objective 'fidd' is neither a metric"),
    ({"objective": ["fid", "nfe"], "pruner": "median"}, "pruning needs one objective"),
    ({"sampler": "grid"}, "sampler 'grid': choose one of"),
])
def test_space_mistakes_are_named(raw, message):
    with pytest.raises(UserError) as e:
        parse_space(raw, "sweep.yaml", [])
    assert message in _norm(str(e.value)) and "sweep.yaml" in str(e.value)


def test_several_objectives_default_to_nsga2_without_pruning():
    space = parse_space({"objective": ["fid", "nfe"]}, "sweep.yaml", [])
    assert (space.sampler, space.pruner, space.directions) == ("nsga2", "none", ["minimize", "minimize"])


def test_default_space_follows_the_network():
    cfg = load_config("digits")
    keys = [p.key for p in read_space(None, cfg, 30_000).params]
    assert keys[:3] == ["optim.lr", "train.batch_size", "train.ema_halflife_images"]
    assert {"diffusion.p_mean", "model.unet.dropout", "model.unet.channels"} <= set(keys)
    channels = next(p for p in read_space(None, cfg, 30_000).params if p.key == "model.unet.channels")
    assert [64, 128] in channels.choices and all(c % cfg.model.unet.norm_groups == 0 for ch in channels.choices for c in ch)
    dit = load_config("text2image")
    assert "model.dit.width" in [p.key for p in read_space(None, dit, 30_000).params]


def test_pruning_stops_the_run_after_its_checkpoint(monkeypatch, tiny_config):
    """The evaluation during training is reported to the trial at its image count, and a pruned trial stops there."""
    from difftrain.sweep import study as sweeps
    import difftrain.training.trainer as trainer

    class Trial:
        reports = []

        def report(self, value, step):
            self.reports.append((value, step))

        def should_prune(self):
            return len(self.reports) >= 2

    monkeypatch.setattr(trainer, "evaluate_ema", lambda state: {"fid": 10.0 / state.images})
    trial = Trial()
    hooks = sweeps._pruning_hooks(tiny_config(), trial, "fid")
    state = type("State", (), {"images": 100, "goal": 1000})()
    assert hooks.evaluate(state) == {"fid": 0.1}
    state.images = 200
    with pytest.raises(sweeps._Pruned) as e:
        hooks.evaluate(state)
    assert e.value.images == 200 and trial.reports == [(0.1, 100), (0.05, 200)]
    state.images = 1000  # the last evaluation is the trial's result: never pruned
    hooks.evaluate(state)


def test_lr_range_suggestion_on_a_known_curve():
    lrs = lr_schedule(1e-6, 1.0, 121)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0) and lrs[60] == pytest.approx(1e-3)
    # A loss that falls until lr 1e-2, fastest around 1e-4, then rises: the suggestion is a tenth of 1e-2.
    losses = [1 / (1 + math.exp(2 * (math.log10(lr) + 4))) + 0.1 + max(0.0, math.log10(lr) + 2) ** 2 for lr in lrs]
    s = suggest(lrs, losses)
    assert 0.5e-2 < s["lr_at_minimum"] < 2e-2  # the smoothing lags a few steps of 10^0.05
    assert s["lr"] == pytest.approx(s["lr_at_minimum"] / 10)
    assert 10**-4.6 < s["lr_steepest"] < 10**-3.4


def _sweep_args(digits_dir, out, trials, *extra):
    tiny = tiny_overrides(digits_dir, **{"eval.every_images": 32, "eval.during_n": 32, "eval.classifier_epochs": 1,
                                         "train.log_every_images": 32})
    tiny = [t for t in tiny if not t.startswith(("data.path", "train.duration_steps"))]
    return ["sweep", "--data", digits_dir, "--out", out, "--trials", trials, "--budget-images", 96, "--no-progress",
            *extra, *tiny]


def _study(out: Path):
    from difftrain.sweep.study import load

    return load(out).get_trials(deepcopy=False)


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_losing_or_repeating_trials(tmp_path, digits_dir):
    out = tmp_path / "sweep"
    args = [sys.executable, "-c", "from difftrain.cli import main; main()",
            *map(str, _sweep_args(digits_dir, out, 3, "--space", _write_space(tmp_path)))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # Kill it (-9) once the second trial has written its first checkpoint.
    deadline = time.time() + 240
    while not list((out / "trials" / "trial-0001" / "checkpoints").glob("ckpt-*")) and time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t.state.name for t in _study(out)}
    assert before[0] == "COMPLETE" and before[1] == "RUNNING" and 2 not in before

    resumed = difftrain("sweep", "--resume", out, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "trial 1 (resumed)" in resumed.stderr
    trials = _study(out)
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in trials)
    # Trial 1 went on from its checkpoint at 32 images (its log holds one run of records, no repeats).
    log = [json.loads(line) for line in (out / "trials" / "trial-0001" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["images"] for r in log if r.get("during_training")]
    assert evals == sorted(set(evals)) and evals[-1] == 96
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 3

    # More trials on the same study: the total grows, nothing earlier is run again.
    more = difftrain("sweep", "--resume", out, "--trials", 4, "--no-progress")
    assert more.returncode == 0, more.stderr
    assert sorted(t.number for t in _study(out)) == [0, 1, 2, 3]
    assert "trial 3" in more.stderr and "resumed" not in more.stderr

    show = difftrain("sweep", "show", out)
    assert show.returncode == 0, show.stderr
    for name in ("leaderboard.csv", "summary.json", "best.yaml", "history.png", "slices.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"][0]
    values = {r["trial"]: r["values"][0] for r in summary["trials"]}
    assert values[best] == min(values.values())
    # best.yaml is the best trial's own config: training it again starts from exactly those settings.
    again = load_config(file=out / "best.yaml")
    assert again == load_config(file=out / "trials" / f"trial-{best:04d}" / "config.yaml")
    assert again.train.duration_images == 96


def _write_space(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"objective": "fid", "pruner": "none", "sampler": "random", "params": {
        "optim.lr": {"low": 1e-4, "high": 3e-3, "log": True}, "diffusion.p_mean": {"low": -1.6, "high": -0.8}}}))
    return path


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path, digits_dir):
    out = tmp_path / "sweep"
    space = tmp_path / "sweep.yaml"
    # Every draw of eval.during_n breaks its minimum of 10: each trial fails before training, with the reason.
    space.write_text(yaml.safe_dump({"params": {"eval.during_n": {"low": 1, "high": 5}}}))
    result = difftrain(*_sweep_args(digits_dir, out, 2, "--space", space))
    assert result.returncode == 0, result.stderr
    trials = _study(out)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("eval.during_n" in t.user_attrs["fail_reason"] for t in trials)
    assert "failed" in result.stderr and "eval.during_n" in _norm(result.stdout)


def test_sweep_mistakes_are_clear(tmp_path, digits_dir):
    result = difftrain("sweep", "--resume", tmp_path / "nothing")
    assert result.returncode == 2 and "is not a sweep folder" in _norm(result.stderr)
    space = tmp_path / "sweep.yaml"
    space.write_text("params: {optim.lrate: {low: 1, high: 2}}\n")
    result = difftrain(*_sweep_args(digits_dir, tmp_path / "s", 2, "--space", space))
    assert result.returncode == 2 and "params.optim.lrate: no such setting" in _norm(result.stderr)
    assert not (tmp_path / "s").exists()
    result = difftrain("sweep", "--resume", tmp_path / "s", "--preset", "digits")
    assert result.returncode == 2


def test_lr_range_test_writes_its_plot_and_suggestion(tmp_path, digits_dir):
    out = tmp_path / "lr"
    tiny = [t for t in tiny_overrides(digits_dir) if not t.startswith("data.path")]
    result = difftrain("sweep", "--lr-range", "--data", digits_dir, "--out", out, "--lr-steps", 30, "--no-progress", *tiny)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "lr-range.json").read_text())
    assert (out / "lr-range.png").is_file() and record["lrs"] == sorted(record["lrs"])
    assert result.stdout.strip() == f"optim.lr={record['lr']:.3g}"


def test_several_objectives_give_the_pareto_front(tmp_path, digits_dir):
    out = tmp_path / "sweep"
    space = tmp_path / "sweep.yaml"
    space.write_text(yaml.safe_dump({"objective": ["fid", "nfe"], "sampler": "random",
                                     "params": {"sample.steps": {"choices": [2, 4]}}}))
    # A budget that is not a whole number of batches: training (and its last evaluation) ends at 112 images.
    result = difftrain(*_sweep_args(digits_dir, out, 2, "--space", space, "--seed", 1, "--budget-images", 100))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["state"], r["images"]) for r in summary["trials"]] == [("complete", 112)] * 2
    assert summary["objectives"] == ["fid", "nfe"] and summary["directions"] == ["minimize", "minimize"]
    rows = {r["trial"]: r for r in summary["trials"]}
    # nfe is Heun's 2 x steps - 1; the front holds every trial that no other beats on both objectives.
    assert all(r["values"][1] == 2 * r["params"]["sample.steps"] - 1 for r in rows.values())
    dominated = {a for a in rows for b in rows if a != b and all(x <= y for x, y in zip(rows[b]["values"], rows[a]["values"]))
                 and rows[b]["values"] != rows[a]["values"]}
    assert sorted(summary["best"]) == sorted(set(rows) - dominated)
    assert (out / "pareto.png").is_file() and "Pareto front" in result.stdout


def test_sweep_show_removes_what_a_killed_show_left_and_nothing_else(tmp_path, monkeypatch):
    """Found by the kill points of `sweep`: a show killed in its plots left .slices.png.*.tmp beside them."""
    from difftrain.sweep import show

    out = tmp_path / "sweep"
    leftovers = [out / ".slices.png.z8ewwsv1.tmp", out / ".summary.json.k2j4h5g6.tmp"]
    others = [out / ".notes.txt.abcdefgh.tmp",  # not a show's file
              out / "trials" / "trial-0000" / ".config.yaml.abcdefgh.tmp"]  # a trial's, which a worker may be writing
    for path in leftovers + others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    monkeypatch.setattr(show, "_write_outputs", lambda out, summary: [])  # (the writing itself is tested above)
    show.write_outputs(out, None)
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in others)
