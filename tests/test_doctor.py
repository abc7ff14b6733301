"""`difftrain doctor`: the report is complete and typed, the probe measures for real, the fit trains
within its budget, and a failing check exits non-zero with its fix."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import types
import typing
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from difftrain.cli import app
from difftrain.config import load_config
from difftrain.modalities import modality_for
from difftrain.hardware.probe import DataShape, data_shape, fit_micro_batch, probe_config
from difftrain.hardware.report import collect_environment
from difftrain.hardware import probe as probe_mod
from difftrain.hardware import report as report_mod
from difftrain.training.memory import PeakMemory, release_memory
from difftrain.hardware.report import distributed_info
from difftrain.hardware.verdicts import check_cuda, check_distributed
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides

runner = CliRunner()
DIGITS = DataShape(modality_for({"kind": "image", "shape": [8, 8, 1]}), 10, "random tensors of the digits' shape")


def doctor(*args: str):
    return runner.invoke(app, ["doctor", *map(str, args)], catch_exceptions=False)


def assert_typed(obj) -> None:
    """Every field of a dataclass holds a value of its annotated type, recursively."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        assert any(_is(value, t) for t in allowed), f"{type(obj).__name__}.{f.name} = {value!r} is not {hint}"
        for item in value if isinstance(value, list) else [value]:
            if dataclasses.is_dataclass(item):
                assert_typed(item)


def _is(value, hint) -> bool:
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is list:
        return isinstance(value, list) and all(_is(v, typing.get_args(hint)[0]) for v in value)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def test_report_fields_are_present_and_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    env = collect_environment(tmp_path / "not" / "yet" / "there")
    assert_typed(env)
    assert env.python and env.torch == torch.__version__ and env.accelerate and env.diffusers
    assert env.cpu_cores >= 1 and env.ram_total_bytes >= env.ram_available_bytes > 0
    assert env.disk.checked == str(tmp_path) and env.disk.free_bytes > 0  # the nearest existing parent
    assert env.distributed.world_size == 1 and env.cuda.available == torch.cuda.is_available()
    assert len(env.gpus) == (torch.cuda.device_count() if env.cuda.available else 0)
    json.dumps(dataclasses.asdict(env))


def test_probe_measures_real_memory_and_speed(digits_dir):
    small = load_config(overrides=tiny_overrides(digits_dir, **{"train.batch_size": 32, "sample.batch_size": 16}))
    big = load_config(overrides=tiny_overrides(digits_dir, **{
        "train.batch_size": 32, "sample.batch_size": 16, "model.channels": "[64, 128]", "model.layers_per_block": 2,
        "model.norm_groups": 32, "model.attention_head_dim": 32}))
    probes = {}
    for name, cfg in (("small", small), ("big", big)):
        probes[name], fit = probe_config(cfg, DIGITS, memory_budget=8 * 2**30, timed_steps=2)
        assert_typed(probes[name])
        assert_typed(fit)
        # A bigger micro-batch measures more memory: compare clearly separated sizes.
        peaks = {r.micro_batch: r.peak_bytes for r in fit.by_batch}
        assert peaks[32] > peaks[2]
        assert fit.micro_batch == 32 and fit.accumulation == 1 and fit.fits_as_configured
    small_p, big_p = probes["small"], probes["big"]
    assert big_p.parameters > 10 * small_p.parameters
    # Weights, EMA, gradients and two Adam moments are all held at the peak.
    assert big_p.peak_memory_bytes > 4 * 4 * big_p.parameters
    assert big_p.peak_memory_bytes > small_p.peak_memory_bytes
    assert big_p.step_seconds > small_p.step_seconds
    assert big_p.images_per_second == pytest.approx(32 / big_p.step_seconds)
    assert big_p.checkpoint_bytes == pytest.approx(4 * 4 * big_p.parameters, rel=0.05)  # fp32: weights + EMA + 2 moments
    assert big_p.disk_needed_bytes == big_p.checkpoint_bytes * (big.train.keep_checkpoints + 1)
    assert big_p.network_evaluations == 2 * 4 - 1 and big_p.sample_seconds_per_image > 0


def _fit_in_child(overrides: list[str], budget: int) -> dict:
    """The fit, measured in a fresh process as `difftrain doctor` and `difftrain train` each run in one."""
    config = load_config(overrides=overrides)
    return dataclasses.asdict(fit_micro_batch(config, data_shape(config), memory_budget=budget))


def _train_in_child(overrides: list[str], run_dir: str) -> dict:
    """Train in a fresh process and measure its peak memory the way the probe does."""
    import torch.utils.tensorboard  # noqa: F401 - an import, not training memory

    config = load_config(overrides=overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    release_memory(device)
    with PeakMemory(device) as meter:
        result = train(config, run_dir, progress=False)
    return {"peak": meter.peak, "steps": result.steps, "images": result.images, "nonfinite": result.nonfinite_steps}


def in_child(function: str, *args) -> dict:
    code = f"import json, sys; from tests.test_doctor import {function}; print(json.dumps({function}(*json.loads(sys.argv[1]))))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_fit_finds_a_batch_that_trains_within_the_budget(tmp_path, digits_dir):
    # Batch 256 of a tiny model: activations dominate, so the micro-batches differ clearly in memory.
    overrides = tiny_overrides(digits_dir, **{"train.batch_size": 256, "train.duration_steps": 3, "sample.steps": 2})
    peaks = {r["micro_batch"]: r["peak_bytes"] for r in in_child("_fit_in_child", overrides, 8 * 2**30)["by_batch"]}
    assert peaks[256] > peaks[128] > peaks[64] > peaks[16]
    budget = (peaks[64] + peaks[128]) // 2
    fit = in_child("_fit_in_child", overrides, budget)
    assert fit["budget_bytes"] == budget and fit["micro_batch"] is not None and fit["micro_batch"] < 256
    assert fit["accumulation"] * fit["micro_batch"] == 256 and fit["need_bytes"] <= budget
    assert not fit["by_batch"][-1]["fits"]  # the sweep stopped at the first micro-batch over the budget

    trained = in_child("_train_in_child", overrides + [f"train.accumulation={fit['accumulation']}"], str(tmp_path / "run"))
    assert trained["steps"] == 3 and trained["images"] == 3 * 256 and trained["nonfinite"] == 0
    assert trained["peak"] <= budget, f"training took {trained['peak']:,} bytes, over the {budget:,} budget the fit promised"


def test_memory_fail_exits_nonzero_with_the_fix(digits_dir):
    result = doctor(*tiny_overrides(digits_dir), "--memory-budget", "0.001")
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "fix:" in result.output


def test_fit_that_needs_accumulation_fails_with_its_fix(digits_dir, monkeypatch):
    cfg = load_config(overrides=tiny_overrides(digits_dir, **{"train.batch_size": 64}))
    peaks = {r.micro_batch: r.peak_bytes for r in fit_micro_batch(cfg, data_shape(cfg), 8 * 2**30).by_batch}
    budget = (peaks[16] + peaks[64]) / 2 / 2**30
    result = doctor(*tiny_overrides(digits_dir, **{"train.batch_size": 64}), "--memory-budget", budget, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    memory = next(v for v in report["verdicts"] if v["check"] == "memory")
    fit = report["fit"]
    assert memory["status"] == "FAIL" and f"x accumulation {fit['accumulation']} fits" in memory["message"]
    assert f"train.accumulation={fit['accumulation']}" in memory["fix"] and "--auto-batch" in memory["fix"]
    # The probe then timed the fitted split, not the configured one.
    assert report["probe"]["accumulation"] == fit["accumulation"] > 1


def test_disk_fail_exits_nonzero_with_the_fix(tmp_path, digits_dir, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(report_mod.shutil, "disk_usage", lambda path: usage(10**8, 10**8 - 10**7, 10**7))
    result = doctor(*tiny_overrides(digits_dir), "--out", tmp_path / "run", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False
    disk = next(v for v in report["verdicts"] if v["check"] == "disk")
    assert disk["status"] == "FAIL" and "need" in disk["message"] and str(tmp_path) in disk["fix"]
    ckpt = report["probe"]["checkpoint_bytes"]
    assert f"train.keep_checkpoints={10**7 // ckpt - 1}" in disk["fix"]  # what 10 MB hold


def test_doctor_passes_and_prints_json(tmp_path, digits_dir):
    result = doctor(*tiny_overrides(digits_dir), "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and {v["status"] for v in report["verdicts"]} == {"PASS"}
    assert set(report) == {"ok", "environment", "probe", "fit", "verdicts", "seconds"}
    assert report["probe"]["images_per_second"] > 0 and report["fit"]["micro_batch"] == 16


def test_doctor_help_has_an_example():
    result = runner.invoke(app, ["doctor", "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_auto_batch_sets_the_accumulation(tmp_path, digits_dir, monkeypatch):
    cfg = load_config(overrides=tiny_overrides(digits_dir))
    peaks = {r.micro_batch: r.peak_bytes for r in fit_micro_batch(cfg, data_shape(cfg), 8 * 2**30).by_batch}
    monkeypatch.setattr(probe_mod, "default_budget", lambda device: ((peaks[4] + peaks[16]) // 2, "a test budget"))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--auto-batch", "--out", str(run), "--no-progress", *tiny_overrides(digits_dir)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = load_config(file=run / "config.yaml")
    assert saved.train.batch_size == 16 and saved.train.accumulation > 1 and 16 % saved.train.accumulation == 0
    assert f"accumulation {saved.train.accumulation}" in result.output


def test_data_shape_without_preparing(digits_dir):
    assert data_shape(load_config("digits")).modality.shape == (8, 8, 1)
    assert data_shape(load_config("digits")).dataset is None
    mnist = data_shape(load_config("mnist"), "mnist")
    assert (mnist.modality.shape, mnist.num_classes) == ((28, 28, 1), 10)
    prepared = data_shape(load_config(overrides=[f"data.path={digits_dir}"]))
    assert prepared.dataset is not None and prepared.num_classes == 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is not usable")
def test_visible_but_unusable_cuda_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    env = collect_environment(tmp_path)
    verdict = check_cuda(env, load_config())
    assert env.cuda.visible_but_unusable and verdict.status == "FAIL"
    assert "unusable" in verdict.message and "train.device=cpu" in verdict.fix
    assert check_cuda(env, load_config(overrides=["train.device=cpu"])).status == "WARN"


def test_distributed_backend_that_does_not_initialise_fails(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    verdict = check_distributed(distributed_info(), timeout_s=2)
    assert verdict.status == "FAIL" and "MASTER_ADDR" in verdict.message and "accelerate launch" in verdict.fix
    # The other process never comes: the process group times out instead of hanging the run.
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    verdict = check_distributed(distributed_info(), timeout_s=2)
    assert verdict.status == "FAIL" and "did not initialise" in verdict.message
    assert not torch.distributed.is_initialized()
    # Single-process runs are not checked.
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert check_distributed(distributed_info()) is None
