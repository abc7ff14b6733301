"""`difftrain synth --optimize-for utility`: the search picks what helps the judge on held-back real images, the
dataset is written with what it picked, the card shows every trial, and a second run reuses the search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from difftrain.cli import app
from difftrain.data import load_dataset
from difftrain.errors import UserError
from difftrain.modalities.base import Classifier
from difftrain.modalities.image import ImageModality
from difftrain.sampling import SamplingSpec
from difftrain.synth import search as search_module
from difftrain.synth.generate import synthesize
from difftrain.synth.search import SELECTION, search_utility
from tests.test_synth import run_dir, train_tiny  # noqa: F401 - the module's tiny class-conditional run

FAST = SamplingSpec(sampler="euler", steps=2)
GOOD = 2.0  # the planted guidance whose samples are real images of the right class


class NearestMean(Classifier):
    """A judge that trains in milliseconds: the softmax of minus the squared distance to each class's mean image."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int):
        x = images.reshape(len(images), -1).astype(np.float64) / 255
        self.means = np.stack([x[labels == c].mean(0) if (labels == c).any() else np.full(x.shape[1], np.inf)
                               for c in range(num_classes)])

    def probabilities(self, data: np.ndarray) -> np.ndarray:
        x = data.reshape(len(data), -1).astype(np.float64) / 255
        logits = -((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        logits = np.nan_to_num(logits, neginf=-1e9)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


@pytest.fixture
def planted(monkeypatch, digits_dir):
    """The judge and the confidence classifier are NearestMean; sampling at guidance GOOD returns real held-out digits of the
    asked class, any other guidance real digits of the next class (wrong labels, which hurt any judge)."""
    real = load_dataset(digits_dir)
    by_class = [real.test_data[real.test_labels == c] for c in range(10)]
    trainings = []

    def fit_downstream(self, data, labels, num_classes, *, validation, seed, max_steps=None):
        trainings.append(len(data))
        return NearestMean(data, labels, num_classes), {}

    def confidence_classifier(self, dataset, epochs):
        return NearestMean(dataset.train_data, dataset.train_labels, dataset.num_classes), {}

    def generate(denoiser, modality, n, labels, spec, **kwargs):
        shift = 0 if spec.guidance == GOOD else 1
        return np.stack([by_class[(label + shift) % 10][i % len(by_class[(label + shift) % 10])]
                         for i, label in enumerate(labels)])

    monkeypatch.setattr(ImageModality, "fit_downstream", fit_downstream)
    monkeypatch.setattr(ImageModality, "confidence_classifier", confidence_classifier)
    monkeypatch.setattr(search_module, "generate", generate)
    return trainings


def test_the_search_picks_the_guidance_whose_samples_help_and_records_every_trial(run_dir, digits_dir, planted):  # noqa: F811
    from difftrain.store.run import open_run

    run, real = open_run(run_dir), load_dataset(digits_dir)
    result = search_utility(run, real, [str(c) for c in range(10)], 60, FAST, batch_size=64, device="cpu")
    stages = [t["stage"] for t in result["trials"]]
    assert stages == ["guidance"] * 4 + ["confidence"] * 2 + ["count"] * 2  # 1, 1.5, 2, 3; no best checkpoint here
    guidance = {t["guidance"]: t for t in result["trials"] if t["stage"] == "guidance"}
    assert sorted(guidance) == [1.0, 1.5, 2.0, 3.0]
    # Wrong labels on 600 synthetic images pull every class mean towards the next class: far below the right ones.
    assert all(guidance[GOOD]["accuracy"] > guidance[g]["accuracy"] + 0.1 for g in (1.0, 1.5, 3.0))
    assert result["chosen"]["guidance"] == GOOD and result["chosen"]["checkpoint"].endswith("ckpt-000000064")
    assert result["chosen_trial"]["accuracy"] == max(t["accuracy"] for t in result["trials"])
    assert [t["per_class"] for t in result["trials"] if t["stage"] == "count"] == [15, 30]  # a quarter, a half
    assert [t["synthetic_items"] for t in result["trials"][:4]] == [600] * 4
    # Every training saw the same real images (the selection share held back, then the judge's stopping share).
    n_train = len(real.train_data)
    sel = result["selection"]
    assert sel["items"] + sel["stopping_items"] + sel["real_training_items"] == n_train
    assert sel["items"] == pytest.approx(SELECTION * n_train, abs=10)
    assert planted == [sel["real_training_items"]] + [sel["real_training_items"] + t["synthetic_items"] for t in result["trials"]]
    assert result["helps"] == (result["chosen_trial"]["accuracy"] > result["real_only"]["accuracy"])


def test_synth_writes_the_chosen_dataset_and_a_second_run_reuses_the_search(run_dir, tmp_path, planted):  # noqa: F811
    out = tmp_path / "out"
    args = ["synth", str(run_dir), "--out", str(out), "--per-class", "40", "--sampler", "euler", "--steps", "2",
            "--optimize-for", "utility", "--no-report"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "chosen for utility: guidance 2" in result.output
    m = json.loads((out / "manifest.json").read_text())
    chosen = m["search"]["chosen"]
    assert m["guidance"] == chosen["guidance"] == GOOD and m["checkpoint"] == str(Path(chosen["checkpoint"]).resolve())
    assert [c["requested"] for c in m["counts"]] == [chosen["per_class"]] * 10
    confidence = [f for f in m["filters"] if f["name"] == "confidence"]
    assert [f["threshold"] for f in confidence] == ([] if chosen["confidence"] is None else [chosen["confidence"]])
    card = (out / "README.md").read_text()
    assert "`--optimize-for utility`" in card and card.count("**(chosen)**") == 1
    assert card.count("\n| guidance") == 4 and "| real only | – | – | – | 0 |" in card

    trained = len(planted)
    result = CliRunner().invoke(app, args, catch_exceptions=False)  # the same command: the dataset is complete
    assert result.exit_code == 0 and len(planted) == trained  # no search again
    result = CliRunner().invoke(app, [*args, "--overwrite"], catch_exceptions=False)
    assert result.exit_code == 0 and len(planted) > trained  # --overwrite starts the search again
    assert json.loads((out / "manifest.json").read_text())["search"]["trials"] == m["search"]["trials"]


def test_what_the_search_chooses_cannot_also_be_given(run_dir, tmp_path, digits_dir):  # noqa: F811
    base = ["synth", str(run_dir), "--out", str(tmp_path / "o"), "--optimize-for", "utility", "--no-report"]
    for extra, message in [(["--per-class", "2", "--guidance", "2"], "leave --guidance out"),
                           (["--per-class", "2", "--checkpoint", "latest"], "leave --checkpoint out"),
                           (["--per-class", "2", "--filter", "confidence:0.5"], "leave confidence out of --filter"),
                           (["--n", "20"], "needs --per-class"),
                           (["--per-class", "2", "--optimize-for", "fid"], "choose utility")]:
        result = CliRunner().invoke(app, [*base, *extra])
        assert isinstance(result.exception, UserError) and message in str(result.exception), result.output
    assert not (tmp_path / "o").exists()  # refused before anything is written
    unconditional = train_tiny(tmp_path / "uncond", digits_dir, **{"model.conditional": False})
    with pytest.raises(UserError, match="not a class-conditional classification model"):
        synthesize(unconditional, tmp_path / "u", n=4, spec=FAST, optimize_for="utility", report=False)
