"""The trainer against its own invariants: resume == uninterrupted, accumulation == big batch,
non-finite steps never reach the weights, damaged checkpoints are detected and skipped."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from difftrain.errors import UserError
from difftrain.store import checkpoint as ckpt_mod
from difftrain.store.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, open_checkpoint
from difftrain.diffusion import Denoiser
from difftrain.training.trainer import train


def weights(run, name="model.safetensors"):
    return load_file(latest_checkpoint(run).path / name)


def assert_same(a: dict, b: dict, atol=0.0, rtol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_equals_uninterrupted(tmp_path, small_digits_dir, accumulation):
    # Dropout and label dropout draw random numbers too: resume must restore every RNG.
    # 40 training images and batch 16: the 6 steps cross two epoch boundaries.
    from difftrain.config import load_config
    from tests.conftest import tiny_overrides

    cfg = load_config(overrides=tiny_overrides(small_digits_dir, **{
        "train.duration_steps": 6, "model.dropout": 0.1, "optim.schedule": "cosine", "train.accumulation": accumulation}))
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_at_step=3)
    assert latest_checkpoint(tmp_path / "split").info["step"] == 3
    result = train(cfg, tmp_path / "split", progress=False, resume=True)
    assert result.steps == 6
    assert_same(weights(tmp_path / "full"), weights(tmp_path / "split"), atol=1e-6, rtol=1e-5)
    assert_same(weights(tmp_path / "full", "ema.safetensors"), weights(tmp_path / "split", "ema.safetensors"), atol=1e-6, rtol=1e-5)


def test_accumulation_equals_large_batch(tmp_path, tiny_config):
    runs, logs = {}, {}
    for k in (1, 4):
        # optim.eps=1e-4: Adam divides by sqrt(v)+eps, so with the default 1e-8 a gradient that is
        # analytically zero (attention key biases) and only float rounding becomes a full step.
        cfg = tiny_config(**{"train.duration_steps": 2, "train.accumulation": k, "optim.warmup_images": 0,
                             "optim.eps": 1e-4})
        logs[k] = train(cfg, tmp_path / f"acc{k}", progress=False).history
        runs[k] = weights(tmp_path / f"acc{k}")
    # The gradient norm is scale-sensitive (Adam's update is not): it pins the 1/batch normalisation.
    for a, b in zip(logs[1], logs[4]):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # atol 1e-6 = 0.1% of one Adam step.
    assert_same(runs[1], runs[4], atol=1e-6, rtol=1e-5)


def test_weights_change_and_loss_is_logged(tmp_path, tiny_config):
    from difftrain.modalities import modality_for
    from difftrain.models import build_network

    cfg = tiny_config()
    torch.manual_seed(cfg.train.seed)
    initial = build_network(cfg.model, modality_for({"kind": "image", "shape": [8, 8, 1]}), 10).state_dict()
    result = train(cfg, tmp_path / "run", progress=False)
    trained = weights(tmp_path / "run")
    assert trained.keys() == initial.keys()
    changed = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert len(changed) > 0.9 * len(initial)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in records)
    assert result.images == 4 * 16
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "dataset.json").is_file()
    assert list((tmp_path / "run" / "tensorboard").iterdir()), "TensorBoard events missing"
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["grid-000000064.png"]


def test_nonfinite_loss_is_skipped_and_counted(tmp_path, tiny_config, monkeypatch):
    real_loss = Denoiser.loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(Denoiser, "loss", flaky_loss)
    cfg = tiny_config()
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.nonfinite_steps == 1
    for name in ("model.safetensors", "ema.safetensors"):
        assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run", name).values())
    events = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Counted on the device and reported at the next log (every step here): step 2 holds the skipped one.
    assert [e["step"] for e in events if e.get("event") == "nonfinite_skipped"] == [2]
    assert latest_checkpoint(tmp_path / "run").training_state()["nonfinite_steps"] == 1


def test_a_run_whose_steps_all_fail_stops_with_the_cause(tmp_path, tiny_config, monkeypatch):
    real_loss = Denoiser.loss
    monkeypatch.setattr(Denoiser, "loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    cfg = tiny_config(**{"train.duration_steps": 12, "train.max_nonfinite_steps": 3, "train.checkpoint_every_images": 16})
    with pytest.raises(UserError, match=r"last 3 steps all had non-finite.*train.max_nonfinite_steps=3.*optim.lr"):
        train(cfg, tmp_path / "run", progress=False)
    # Stopped at the first log that saw 3 in a row (step 3; logs every step here), before any checkpoint of NaN-free but
    # unlearnt weights that would read as a good run: the checkpoints of steps 1 and 2 are all there is.
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt-000000016", "ckpt-000000032"]
    events = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["nonfinite_steps"] for e in events if "loss" in e] == [1, 2, 3]


def test_resume_after_a_crash_drops_the_records_after_its_checkpoint(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.duration_steps": 4, "train.checkpoint_every_images": 32})
    train(cfg, tmp_path / "whole", progress=False)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    # A crash after step 4 was logged but before its checkpoint was written: only step 2's is there.
    shutil.rmtree(run / "checkpoints" / "ckpt-000000064")
    train(cfg, run, progress=False, resume=True)
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert steps == [1, 2, 3, 4]  # steps 3 and 4 once, from the resumed run
    whole = [json.loads(l)["loss"] for l in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed == pytest.approx(whole, rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast and its loss scaler need a CUDA GPU")
def test_fp16_resume_keeps_the_loss_scale(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.mixed_precision": "fp16", "train.device": "cuda", "train.duration_steps": 8,
                         "train.checkpoint_every_images": 64})
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "run", progress=False, stop_at_step=4)
    train(cfg, tmp_path / "run", progress=False, resume=True)
    whole = latest_checkpoint(tmp_path / "whole").training_state()["grad_scaler"]
    resumed = latest_checkpoint(tmp_path / "run").training_state()["grad_scaler"]
    # The resumed run scales as the unbroken one (scales are powers of two: exact), whose state is not a fresh
    # scaler's (65536, growth count 0), which a resume that forgot it would have restarted from.
    assert resumed == whole and (whole["scale"] != 65536.0 or whole["_growth_tracker"] > 0)
    assert_same(weights(tmp_path / "whole"), weights(tmp_path / "run"), atol=1e-4)  # GPU kernels sum in no fixed order


def test_checkpoints_keep_last_k_and_skip_damaged(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.duration_steps": 6, "train.checkpoint_every_images": 16, "train.keep_checkpoints": 2})
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    names = [p.name for p in list_checkpoints(run)]
    assert names == ["ckpt-000000080", "ckpt-000000096"]
    # Truncate the newest: it is reported by name and the previous one is used.
    newest = run / "checkpoints" / names[-1] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        open_checkpoint(newest.parent)
    warnings = []
    assert latest_checkpoint(run, warn=warnings.append).path.name == names[0]
    assert "corrupted or truncated" in warnings[0] and names[-1] in warnings[0]
    # Resume falls back to the previous valid checkpoint and finishes the run.
    result = train(cfg, run, progress=False, resume=True)
    assert result.steps == 6


def test_existing_run_needs_resume(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.duration_steps": 1})
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)


def test_state_file_loads_with_weights_only(tmp_path, tiny_config):
    train(tiny_config(**{"train.duration_steps": 1}), tmp_path / "run", progress=False)
    state = torch.load(latest_checkpoint(tmp_path / "run").path / "state.pt", weights_only=True)
    assert {"optimizer", "noise_rng", "torch_rng", "nonfinite_steps"} <= state.keys()


def test_resume_with_a_different_network_is_refused_and_keeps_the_run(tmp_path, tiny_config):
    train(tiny_config(**{"train.duration_steps": 1}), tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(UserError, match="does not fit the network"):
        train(tiny_config(**{"train.duration_steps": 2, "model.channels": "[32, 32]"}), tmp_path / "run", progress=False, resume=True)
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def test_checkpoints_are_ordered_by_images_not_by_name(tmp_path):
    for images in (999_999_999, 1_000_000_000, 5):
        (tmp_path / "checkpoints" / f"ckpt-{images:09d}").mkdir(parents=True)
    (tmp_path / "checkpoints" / "damaged-ckpt-000000007").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000000005", "ckpt-999999999", "ckpt-1000000000"]


def test_training_into_a_foreign_folder_is_refused(tmp_path, tiny_config):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):
        train(tiny_config(), tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_sets_aside_damaged_newer_checkpoints(tmp_path, tiny_config):
    cfg = tiny_config(**{"train.duration_steps": 4, "train.checkpoint_every_images": 32})
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    newest = list_checkpoints(run)[-1]
    (newest / "state.pt").write_bytes(b"garbage")
    train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"duration_steps": 5})}), run, progress=False, resume=True)
    assert (run / "checkpoints" / f"damaged-{newest.name}").is_dir()
    assert latest_checkpoint(run).info["step"] == 5


def test_a_nonfinite_evaluation_never_becomes_the_best_checkpoint():
    """A diverged model samples NaN images and scores NaN (or inf): checkpoints/best must keep the last good one."""
    from types import SimpleNamespace

    from difftrain.training.during_training import DuringTraining

    better = DuringTraining.better
    for metric in ("fid", "cas"):
        assert not better(SimpleNamespace(best=None, metric=metric), float("nan"))
        assert not better(SimpleNamespace(best=None, metric=metric), float("inf"))
        assert not better(SimpleNamespace(best=0.5, metric=metric), float("nan"))
    assert not better(SimpleNamespace(best=0.5, metric="fid"), float("inf"))
    assert better(SimpleNamespace(best=0.5, metric="fid"), 0.4) and better(SimpleNamespace(best=0.5, metric="cas"), 0.6)
