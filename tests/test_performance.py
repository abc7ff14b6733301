"""How training uses the device: the fast paths must compute what the plain ones do, skip
non-finite steps without reading back from the device, and resume exactly."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difftrain.config import load_config
from difftrain.data.loader import ArrayBatches
from difftrain.errors import UserError
from difftrain.modalities import modality_for
from difftrain.training import performance
from difftrain.store.checkpoint import latest_checkpoint
from difftrain.training.lamb import Lamb
from difftrain.training.optim import build_optimizer
from difftrain.training.trainee import train_step
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def weights(run, name="model.safetensors"):
    return load_file(latest_checkpoint(run).path / name)


def test_auto_precision_follows_the_hardware(monkeypatch):
    cfg = load_config().train
    monkeypatch.setattr(performance, "cpu_has_native_bf16", lambda: True)
    assert performance.resolve_precision(cfg, "cpu") == "bf16"
    monkeypatch.setattr(performance, "cpu_has_native_bf16", lambda: False)
    assert performance.resolve_precision(cfg, "cpu") == "no"
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        performance.resolve_precision(cfg.model_copy(update={"mixed_precision": "fp16"}), "cpu")
    # YAML reads off/no as False: the switch words still arrive as words.
    train = load_config(overrides=["train.compile=off", "train.channels_last=on", "train.mixed_precision=no"]).train
    assert (train.compile, train.channels_last, train.mixed_precision) == ("off", "on", "no")


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_found_inf_skips_the_step_on_the_device(name):
    """A step flagged non-finite leaves weights and moments as they were; later steps go on as if it never happened."""
    cfg = load_config(overrides=[f"optim.name={name}", "optim.weight_decay=0.1"]).optim
    torch.manual_seed(0)
    grads = [torch.randn(4, 3) for _ in range(3)]
    runs = []
    for skip_second in (False, True):
        p = torch.nn.Parameter(torch.ones(4, 3))
        opt = build_optimizer([p], cfg)
        for i, g in enumerate([grads[0], torch.full((4, 3), float("nan")), grads[1], grads[2]] if skip_second else grads):
            p.grad = g.clone()
            opt.found_inf = torch.tensor(float(not torch.isfinite(g).all()))
            opt.step()
            if skip_second and i == 1:
                assert torch.isfinite(p).all()
        runs.append(p.detach().clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-6, atol=1e-7)


def test_adamw_is_fused():
    opt = build_optimizer([torch.nn.Parameter(torch.ones(2))], load_config().optim)
    assert opt.defaults["fused"]


def test_lamb_skipping_its_first_step_starts_as_if_fresh():
    """A skipped first step leaves no trace: no step counted, no moments (bias correction stays right)."""
    grad = torch.tensor([0.3, -1.0, 2.0])
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    skipped, fresh = Lamb([p], lr=0.1), Lamb([q], lr=0.1)
    p.grad = torch.full((3,), float("inf"))
    skipped.found_inf = torch.ones(())
    skipped.step()
    assert torch.equal(p.detach(), torch.ones(3)) and float(skipped.state[p]["step"]) == 0.0
    p.grad, q.grad = grad.clone(), grad.clone()
    skipped.found_inf = torch.zeros(())
    skipped.step()
    fresh.step()
    torch.testing.assert_close(p.detach(), q.detach())


def test_hflip_mirrors_half_the_stream_reproducibly():
    images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
    plain = ArrayBatches(images, None, modality_for({"kind": "image", "shape": [4, 4, 1]}), seed=3, device=torch.device("cpu"))
    flipped = ArrayBatches(images, None, modality_for({"kind": "image", "shape": [4, 4, 1]}), seed=3, device=torch.device("cpu"), hflip=True)
    x, _ = flipped.batch(30, 40)  # crosses an epoch boundary
    y, _ = plain.batch(30, 40)
    mirrored = [(a == b.flip(-1)).all().item() and not (a == b).all().item() for a, b in zip(x, y)]
    same = [(a == b).all().item() for a, b in zip(x, y)]
    assert all(m or s for m, s in zip(mirrored, same))
    assert 10 <= sum(mirrored) <= 30
    again, _ = ArrayBatches(images, None, modality_for({"kind": "image", "shape": [4, 4, 1]}), seed=3, device=torch.device("cpu"), hflip=True).batch(30, 40)
    assert torch.equal(x, again)  # a pure function of the stream position: resuming keeps it


def test_bf16_autocast_trains_float32_weights(tmp_path, small_digits_dir):
    cfg = load_config(overrides=tiny_overrides(small_digits_dir, **{"train.mixed_precision": "bf16", "train.device": "cpu"}))
    result = train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(result.final_loss) and result.nonfinite_steps == 0
    assert all(t.dtype == torch.float32 for t in weights(tmp_path / "run").values())


def test_channels_last_trains_the_same_and_resumes_exactly(tmp_path, small_digits_dir):
    base = tiny_overrides(small_digits_dir, **{"train.duration_steps": 4, "train.device": "cpu"})
    plain = load_config(overrides=base)
    fast = load_config(overrides=[*base, "train.channels_last=on"])
    train(plain, tmp_path / "plain", progress=False)
    train(fast, tmp_path / "full", progress=False)
    train(fast, tmp_path / "split", progress=False, stop_at_step=2)
    train(fast, tmp_path / "split", progress=False, resume=True)
    assert losses(tmp_path / "full") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4)
    for key, value in weights(tmp_path / "full").items():
        torch.testing.assert_close(weights(tmp_path / "split")[key], value, atol=1e-6, rtol=1e-5)
        assert value.is_contiguous()  # checkpoints hold plain layouts whatever the training used


def _has_compiler() -> bool:
    return torch.cuda.is_available() or any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.mark.slow
@pytest.mark.skipif(not _has_compiler(), reason="torch.compile on CPU needs a C++ compiler (none on PATH)")
def test_compiled_network_trains_the_same_with_plain_checkpoints(tmp_path, small_digits_dir):
    base = tiny_overrides(small_digits_dir, **{"train.duration_steps": 3})
    train(load_config(overrides=base), tmp_path / "eager", progress=False)
    train(load_config(overrides=[*base, "train.compile=on"]), tmp_path / "compiled", progress=False)
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-3)
    eager, compiled = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert compiled.keys() == eager.keys()  # no "_orig_mod." prefixes: the run loads like any other


def test_cuda_graphs_follow_compile_on_cuda_only():
    from difftrain.training.performance import uses_cuda_graphs

    train_cfg = load_config().train
    assert uses_cuda_graphs(train_cfg, "cuda") and not uses_cuda_graphs(train_cfg, "cpu")
    assert not uses_cuda_graphs(load_config(overrides=["train.compile=off"]).train, "cuda")
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        uses_cuda_graphs(load_config(overrides=["train.cuda_graphs=on"]).train, "cpu")
    with pytest.raises(UserError, match="train.compile"):
        uses_cuda_graphs(load_config(overrides=["train.cuda_graphs=on", "train.compile=off"]).train, "cuda")
    # A replay reuses the memory holding the gradients that a second micro-batch adds to.
    assert not uses_cuda_graphs(load_config(overrides=["train.accumulation=2"]).train, "cuda")
    assert not uses_cuda_graphs(train_cfg, "cuda", processes=2)  # measured on one GPU only
    with pytest.raises(UserError, match="accumulate"):
        uses_cuda_graphs(load_config(overrides=["train.cuda_graphs=on", "train.accumulation=2"]).train, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_training_matches_eager_and_resumes(tmp_path, small_digits_dir):
    base = tiny_overrides(small_digits_dir, **{"train.device": "cuda", "train.duration_steps": 4})
    train(load_config(overrides=base), tmp_path / "eager", progress=False)
    graphs = load_config(overrides=[*base, "train.compile=on", "train.cuda_graphs=on"])
    train(graphs, tmp_path / "graphs", progress=False)
    train(graphs, tmp_path / "split", progress=False, stop_at_step=2)
    train(graphs, tmp_path / "split", progress=False, resume=True)
    assert losses(tmp_path / "graphs") == pytest.approx(losses(tmp_path / "eager"), rel=2e-3)
    # GPU kernels sum in no fixed order: two identical eager runs on an H200 differed by 2.3e-5 (docs/benchmarks.md).
    for key, value in weights(tmp_path / "graphs").items():
        torch.testing.assert_close(weights(tmp_path / "split")[key], value, atol=2e-4, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device synchronisation exists on a GPU only")
def test_training_steps_never_wait_for_the_gpu(small_digits_dir):
    from difftrain.data import load_dataset
    from difftrain.hardware.probe import DataShape, _Trainee

    ds = load_dataset(small_digits_dir)
    cfg = load_config(overrides=tiny_overrides(small_digits_dir, **{"train.device": "cuda"}))
    trainee = _Trainee(cfg, DataShape(ds.modality, ds.num_classes, "test", ds))
    trainee.steps(2)  # allocations and kernel choices happen here
    config = trainee.config
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 8):  # positions 32..128 of 40 images: crosses epoch boundaries
            _, _, applied = train_step(config, trainee.accelerator, trainee.net, trainee.denoiser, trainee.optimizer,
                                       trainee.batches, step * 16, trainee.noise_gen, trainee.conditioner)
            trainee.ema.update(trainee.raw_net, 0.99, applied)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert bool(applied)


def test_a_plain_adamw_state_resumes_into_the_fused_optimizer():
    """Checkpoints of earlier versions hold plain AdamW state: it loads, and the next step is AdamW's."""
    from difftrain.training.resume_state import load_optimizer_state

    cfg = load_config(overrides=["optim.weight_decay=0.1"]).optim
    p = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.AdamW([p], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    plain.step()
    q = torch.nn.Parameter(p.detach().clone())
    fused = build_optimizer([q], cfg)
    load_optimizer_state(fused, copy.deepcopy(plain.state_dict()))  # as read from a checkpoint: no shared tensors
    assert fused.param_groups[0]["fused"]
    p.grad, q.grad = torch.tensor([0.5, 0.5, -1.0]), torch.tensor([0.5, 0.5, -1.0])
    plain.step()
    fused.found_inf = torch.zeros(())
    fused.step()
    torch.testing.assert_close(q.detach(), p.detach())
