"""data.unlabelled: labels for the few, items for all. A share of every batch comes from a second dataset under the
model's "no label" condition; what cannot work is refused with the setting named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from difftrain.config import load_config
from difftrain.data import prepare_dataset
from difftrain.data.loader import MixedBatches
from difftrain.errors import UserError
from difftrain.training import trainer as trainer_module
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def white_dir(tmp_path_factory):
    """40 white 8x8 images in a flat folder (no classes), prepared: unlike any digit, so each batch row tells its source."""
    source = tmp_path_factory.mktemp("white-src")
    for i in range(40):
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(source / f"{i:02d}.png")
    return prepare_dataset(source, tmp_path_factory.mktemp("white") / "prepared", test_fraction=0.0, progress=False).path


def test_a_share_of_every_batch_is_unlabelled_items_under_no_label(tmp_path, digits_dir, white_dir, monkeypatch):
    seen = []

    class Recording(MixedBatches):
        def batch(self, start, count):
            x, y = super().batch(start, count)
            seen.append((x.clone(), y.clone()))
            return x, y

    monkeypatch.setattr(trainer_module, "MixedBatches", Recording)
    config = load_config(overrides=tiny_overrides(digits_dir, **{"data.unlabelled": str(white_dir),
                                                                 "data.unlabelled_share": 0.25, "train.duration_steps": 5}))
    train(config, tmp_path / "run", progress=False)
    x = torch.cat([b[0] for b in seen])
    y = torch.cat([b[1] for b in seen])
    assert len(y) == 5 * 16
    white = (x == 1).flatten(1).all(1)  # a white image in model space is all ones
    assert int(white.sum()) == 5 * 16 // 4  # a quarter of the stream
    assert (y[white] == 10).all()  # the network's "no label" row (10 digit classes: rows 0-9 are theirs)
    assert (y[~white] < 10).all()  # the digits keep their labels
    assert "unlabelled" in (tmp_path / "run" / "config.yaml").read_text()


def test_unlabelled_data_that_cannot_work_is_refused_by_name(tmp_path, digits_dir, white_dir):
    for extra, message in [({"data.unlabelled": str(tmp_path / "nowhere")}, "is not a prepared dataset"),
                           ({"data.unlabelled": str(white_dir), "model.conditional": False}, "not class-conditional")]:
        config = load_config(overrides=tiny_overrides(digits_dir, **extra))
        with pytest.raises(UserError, match=message):
            train(config, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()  # refused before the run folder is made
    big = tmp_path / "big-src"
    big.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(big / f"{i}.png")
    bigger = prepare_dataset(big, tmp_path / "big", test_fraction=0.0, progress=False).path
    config = load_config(overrides=tiny_overrides(digits_dir, **{"data.unlabelled": str(bigger)}))
    with pytest.raises(UserError, match=r"same kind and shape"):
        train(config, tmp_path / "run", progress=False)
