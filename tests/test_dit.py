"""DiT for images: shapes, the untrained network, patches folded back where they came from, and training through the
one trainer like any other network."""

from __future__ import annotations

import json

import pytest
import torch

from difftrain.config import DiTConfig
from difftrain.errors import UserError
from difftrain.models.dit import DiT, build_dit
from tests.conftest import tiny_overrides
from tests.test_cli import cli

TINY = DiTConfig(width=32, depth=2, heads=2, patch=2, embedding_dim=16)


def test_an_untrained_dit_is_zero_on_square_and_wide_images():
    torch.manual_seed(0)
    net = build_dit(TINY, (3, 8, 16), num_classes=4)
    for shape in ((5, 3, 8, 16), (2, 3, 6, 6)):  # any size the patch divides
        out = net(torch.randn(shape), torch.rand(shape[0]), {"label": torch.tensor([0, 3, 1, 2, 4][:shape[0]])})
        assert out.shape == shape and torch.count_nonzero(out) == 0


def test_patches_are_folded_back_where_they_came_from(monkeypatch):
    """With a patch embedding that copies each patch's pixels, an identity transformer and a read-out of those
    features, the network returns its input exactly: tokenising and folding back are inverse, for C, H != W, p."""
    c, p = 3, 2
    net = DiT(c, 0, TINY)
    features = p * p * c
    with torch.no_grad():
        net.patch_in.weight.zero_()
        net.patch_in.bias.zero_()
        for i in range(p):
            for k in range(p):
                for ch in range(c):
                    net.patch_in.weight[(i * p + k) * c + ch, ch, i, k] = 1.0  # the order patch_out's reshape reads
        net.patch_out.weight.zero_()
        net.patch_out.weight[:, :features] = torch.eye(features)
    monkeypatch.setattr(net, "transform", lambda h, emb, context=None: h)
    monkeypatch.setattr(net, "positions", lambda rows, cols, device: torch.zeros(rows * cols, TINY.width))
    x = torch.randn(2, c, 6, 10)
    assert torch.equal(net(x, torch.zeros(2)), x)


def test_a_patch_that_does_not_divide_the_image_is_refused():
    with pytest.raises(UserError, match="do not split into 3x3 patches"):
        build_dit(DiTConfig(patch=3), (1, 8, 8), 0)
    with pytest.raises(UserError, match="takes images"):
        build_dit(TINY, (2, 16), 0)


def test_train_and_sample_a_class_conditional_dit(digits_dir, tmp_path):
    run = tmp_path / "dit"
    cli("train", "--out", run, *tiny_overrides(digits_dir, **{"model.arch": "dit", "model.dit.width": 32,
                                                                "model.dit.depth": 1, "model.dit.heads": 2,
                                                                "model.dit.embedding_dim": 16, "train.duration_steps": 6}))
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and all(loss == loss for loss in losses)
    cli("sample", run, "--n", "4", "--class", "3", "--guidance", "2", "--steps", "3", "--out", tmp_path / "s.npz")
    import numpy as np

    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape[0] == 4 and f["labels"].tolist() == [3, 3, 3, 3]
