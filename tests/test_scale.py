"""Training in two processes (gloo on CPU, through `accelerate launch`) against one process:
the same global batch gives the same losses and weights, and stop-and-resume stays exact."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from rich.console import Console
from safetensors.torch import load_file

from difftrain.config import load_config
from difftrain.errors import UserError
from difftrain.launch import free_port
from difftrain.store.checkpoint import latest_checkpoint
from difftrain.training.sharding import float32_weights_and_gradients, is_sharded, sharded_config
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides


# What `accelerate launch --config_file fsdp.yaml` (docs/scale.md) sets in each process's environment.
FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


def train_in_two_processes(out, overrides, *extra, launch_env=None):
    """`difftrain train --processes 2`, as a user runs it; one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(launch_env or {})}
    done = subprocess.run([sys.executable, "-m", "difftrain", "train", "--processes", "2", "--out", str(out), "--no-progress",
                           *extra, *overrides], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def losses(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if "loss" in r]


def weights(run, name="model.safetensors"):
    return load_file(latest_checkpoint(run).path / name)


@pytest.mark.slow
def test_two_processes_follow_the_one_process_trajectory(tmp_path, small_digits_dir):
    overrides = tiny_overrides(small_digits_dir, **{"train.duration_steps": 6})
    train(load_config(overrides=overrides), tmp_path / "one", progress=False)
    done = train_in_two_processes(tmp_path / "two", overrides)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _, _ in one] == [s for s, _, _ in two] == [1, 2, 3, 4, 5, 6]
    # Each process computes half of every batch and DDP averages the gradients: the same sums in
    # another order, so float32 rounding is the only difference (measured: about 1e-6 relative).
    for (_, loss1, grad1), (_, loss2, grad2) in zip(one, two):
        assert loss2 == pytest.approx(loss1, rel=1e-4)
        assert grad2 == pytest.approx(grad1, rel=1e-3)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "one", name), weights(tmp_path / "two", name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-3, msg=lambda m: f"{name} {key}: {m}")
    # One process wrote the run: one checkpoint, one report.
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == ["ckpt-000000096"]
    assert (tmp_path / "two" / "README.md").is_file()
    assert "training in 2 processes" in done.stdout + done.stderr
    assert len(latest_checkpoint(tmp_path / "two").training_state()["torch_rng_per_process"]) == 2

    # Half in two processes, the rest resumed in one: the same run again (no dropout here, so no
    # random number depends on the process count), and a warning about dropout's streams.
    train_in_two_processes(tmp_path / "mixed", [*overrides, "train.duration_steps=3"])
    said = io.StringIO()
    train(load_config(overrides=overrides), tmp_path / "mixed", progress=False, resume=True, console=Console(file=said))
    assert "written by 2 process(es)" in said.getvalue()
    a, b = weights(tmp_path / "two"), weights(tmp_path / "mixed")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-3, msg=lambda m: f"{key}: {m}")


@pytest.mark.slow
def test_two_processes_stop_and_resume_exactly(tmp_path, small_digits_dir):
    # Dropout draws from each process's own generator: resuming must restore every process's.
    overrides = tiny_overrides(small_digits_dir, **{"train.duration_steps": 6, "model.dropout": 0.1})
    train_in_two_processes(tmp_path / "full", overrides)
    train_in_two_processes(tmp_path / "split", [*overrides, "train.duration_steps=3"])
    assert latest_checkpoint(tmp_path / "split").info["step"] == 3
    train_in_two_processes(tmp_path / "split", ["train.duration_steps=6"], "--resume")
    assert latest_checkpoint(tmp_path / "split").info["step"] == 6
    state = latest_checkpoint(tmp_path / "split").training_state()
    assert len(state["torch_rng_per_process"]) == 2
    assert not torch.equal(state["torch_rng_per_process"][0], state["torch_rng_per_process"][1])
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(tmp_path / "full", name), weights(tmp_path / "split", name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5, msg=lambda m: f"{name} {key}: {m}")
    assert losses(tmp_path / "split")[-3:] == losses(tmp_path / "full")[-3:]


def launch_with_the_documented_fsdp_config(tmp_path, out, overrides):
    """`accelerate launch --config_file fsdp.yaml -m difftrain train ...` with the config of docs/scale.md, two processes."""
    docs = (Path(__file__).parents[1] / "docs" / "scale.md").read_text()
    config = re.search(r"```yaml\n(# fsdp\.yaml.*?)```", docs, re.S).group(1).replace("num_processes: 8", "num_processes: 2")
    (tmp_path / "fsdp.yaml").write_text(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp.yaml"),
                           "--main_process_port", str(free_port()), "-m", "difftrain", "train", "--out", str(out), "--no-progress",
                           *overrides], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_fsdp_shards_the_model_follows_one_process_and_resumes(tmp_path, small_digits_dir):
    overrides = tiny_overrides(small_digits_dir, **{"train.duration_steps": 6})
    train(load_config(overrides=overrides), tmp_path / "one", progress=False)
    first = launch_with_the_documented_fsdp_config(tmp_path, tmp_path / "fsdp", [*overrides, "train.duration_steps=3"])
    said = " ".join((first.stdout + first.stderr).split())  # as one line, whatever the console's width
    assert "training in 2 processes (FSDP, cpu)" in said
    found = re.search(r"each process holds ([\d,]+) of the network's ([\d,]+) weights", said)
    held, total = (int(n.replace(",", "")) for n in found.groups())
    assert total / 2 <= held < total * 0.6  # half of every weight tensor (the odd rows go to the first process)
    # A sharded run's checkpoint holds the full weights: FSDP resumes it, and so does one process; FSDP
    # resumes a one-process checkpoint (the optimizer state goes from torch's positional layout to names),
    # here with gradient accumulation (under FSDP each micro-batch's gradients are reduced to shards).
    shutil.copytree(tmp_path / "fsdp", tmp_path / "fsdp-then-one")
    train(load_config(overrides=overrides), tmp_path / "fsdp-then-one", progress=False, resume=True)
    train_in_two_processes(tmp_path / "fsdp", overrides, "--resume", launch_env=FSDP)
    accumulating = [*overrides, "train.accumulation=2"]
    train(load_config(overrides=[*accumulating, "train.duration_steps=3"]), tmp_path / "one-then-fsdp", progress=False)
    train_in_two_processes(tmp_path / "one-then-fsdp", accumulating, "--resume", launch_env=FSDP)
    for run in ("fsdp", "fsdp-then-one", "one-then-fsdp"):
        assert [s for s, _, _ in losses(tmp_path / run)] == [1, 2, 3, 4, 5, 6]
        for (_, loss1, grad1), (_, loss2, grad2) in zip(losses(tmp_path / "one"), losses(tmp_path / run)):
            assert loss2 == pytest.approx(loss1, rel=1e-4)
            assert grad2 == pytest.approx(grad1, rel=1e-3)
        # The optimizer's moments came back (lost moments would move the weights by ~1e-3).
        for name in ("model.safetensors", "ema.safetensors"):
            a, b = weights(tmp_path / "one", name), weights(tmp_path / run, name)
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-3, msg=lambda m: f"{run} {name} {key}: {m}")
    # The grid of a sharded run, drawn by the main process from the gathered EMA.
    assert (tmp_path / "one-then-fsdp" / "samples" / "grid-000000096.png").is_file()


def test_what_fsdp_cannot_do_is_refused_with_the_fix():
    config = load_config(overrides=["optim.name=lamb"])
    with pytest.raises(UserError, match="optim.name=adamw with FSDP"):
        sharded_config(config)
    with pytest.raises(UserError, match="train.compile=auto"):
        sharded_config(load_config(overrides=["train.compile=on"]))
    plain = sharded_config(load_config()).train  # "auto" device features are off when sharded
    assert (plain.compile, plain.channels_last, plain.cuda_graphs) == ("off", "off", "off")

    # Under bf16 accelerate would gather bf16 weights and average bf16 gradients: difftrain keeps both
    # float32, with autocast doing the bf16 math, as under DDP.
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    plugin.set_mixed_precision("bf16")
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16
    float32_weights_and_gradients(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))
    assert plugin.mixed_precision_policy is None

    def launch(kind, version=2):
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version)))

    assert is_sharded(launch(DistributedType.FSDP)) and not is_sharded(launch(DistributedType.MULTI_GPU))
    with pytest.raises(UserError, match="fsdp_version: 2"):
        is_sharded(launch(DistributedType.FSDP, version=1))
    with pytest.raises(UserError, match="DDP or FSDP2, not DEEPSPEED"):
        is_sharded(launch(DistributedType.DEEPSPEED))


def test_a_user_mistake_under_two_processes_is_one_clear_error(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "difftrain", "train", "--processes", "2", "--out", str(tmp_path / "run"),
                           "--data", str(tmp_path / "missing"), "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error" in done.stderr and str(tmp_path / "missing") in done.stderr
    assert "Traceback" not in done.stderr
