"""Shared fixtures: a small prepared digits dataset and a tiny, fast model config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The built-in digits, prepared once for the whole session (read-only use)."""
    from difftrain.data import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "digits"
    prepare_dataset("digits", out, test_fraction=0.2, progress=False)
    return out


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> Path:
    """300 of the built-in captioned digit pairs, prepared once for the whole session (read-only use)."""
    from difftrain.data import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "pairs"
    prepare_dataset("digit-pairs", out, limit=300, progress=False)
    return out


@pytest.fixture(scope="session")
def small_digits_dir(tmp_path_factory) -> Path:
    """40 training images: a few steps of batch 16 cross an epoch boundary."""
    from difftrain.data import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "digits50"
    prepare_dataset("digits", out, limit=50, test_fraction=0.2, progress=False)
    return out


def tiny_overrides(data: Path, **extra) -> list[str]:
    """A model small enough that a training step takes milliseconds."""
    base = {
        "data.path": str(data),
        "model.unet.channels": "[16, 32]",
        "model.unet.attention": "[false, true]",
        "model.unet.layers_per_block": 1,
        "model.unet.norm_groups": 8,
        "model.unet.attention_head_dim": 8,
        "train.batch_size": 16,
        "train.mixed_precision": "no",  # float32 everywhere: the tests compare runs to 1e-5
        "train.compile": "off",  # compiling takes longer than these runs (tests/test_performance.py compiles)
        "train.duration_steps": 4,
        "train.log_every_images": 16,
        "train.grid_every_images": 0,
        "train.checkpoint_every_images": 0,
        "train.ema_halflife_images": 64,
        "optim.warmup_images": 32,
        "sample.steps": 4,
        "sample.batch_size": 64,
        "eval.classifier_epochs": 3,
        "eval.nll_images": 16,
        "eval.nll_steps": 8,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_config(digits_dir):
    from difftrain.config import load_config

    def make(**extra):
        return load_config(overrides=tiny_overrides(digits_dir, **extra))

    return make
