"""Evaluation numbers against closed forms, and their behaviour on real and broken samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difftrain.data import load_dataset
from difftrain.evaluation.classifier import load_or_train_classifier
from difftrain.evaluation.first_eval import evaluate_samples
from difftrain.evaluation.frechet import feature_stats, frechet_between, frechet_distance


def test_frechet_distance_closed_form_for_commuting_covariances():
    # For diagonal covariances: ||mu1-mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_is_rotation_invariant_and_zero_on_itself():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    c1 = q @ np.diag([1.0, 2.0, 3.0, 4.0]) @ q.T
    c2 = q @ np.diag([4.0, 3.0, 2.0, 1.0]) @ q.T
    # Same eigenbasis: (sqrt(1)-sqrt(4))^2 + (sqrt(2)-sqrt(3))^2, twice.
    expected = 2 * ((1 - 2) ** 2 + (np.sqrt(2) - np.sqrt(3)) ** 2)
    assert frechet_distance(np.zeros(4), c1, np.zeros(4), c2) == pytest.approx(expected)
    assert frechet_distance(np.zeros(4), c1, np.zeros(4), c1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_from_samples_approaches_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200_000, 2)) * [1.0, 2.0]
    y = rng.normal(size=(200_000, 2)) * [2.0, 2.0] + [3.0, 0.0]
    assert frechet_between(x, y) == pytest.approx(9 + 1, rel=0.02)
    mu, cov = feature_stats(x)
    assert cov.shape == (2, 2) and abs(mu).max() < 0.02


@pytest.fixture(scope="module")
def digits_and_classifier(digits_dir):
    ds = load_dataset(digits_dir)
    model, meta = load_or_train_classifier(ds, epochs=10)
    return ds, model, meta


def test_feature_classifier_is_accurate_and_cached(digits_and_classifier, digits_dir):
    ds, _, meta = digits_and_classifier
    assert meta["test_accuracy"] > 0.9
    cached = [json.loads(p.read_text()) for p in (digits_dir / "classifier").glob("*.json")]
    assert [m["weights_sha256"] for m in cached if m["epochs"] == 10] == [meta["weights_sha256"]]
    _, again = load_or_train_classifier(ds, epochs=10)
    assert again["weights_sha256"] == meta["weights_sha256"]


def test_real_images_score_at_the_floor_and_noise_far_above(digits_and_classifier):
    ds, model, _ = digits_and_classifier
    # Half the training images as "samples": the floor draws its own random half, so the two differ.
    half = len(ds.train_images) // 2
    real = evaluate_samples(ds.train_images[:half], ds.train_labels[:half], ds, model)
    assert real["frechet_distance"] != real["frechet_floor"]
    assert real["frechet_distance"] == pytest.approx(real["frechet_floor"], rel=0.3)
    assert real["label_agreement"] > 0.95
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(300, *ds.image_shape), dtype=np.uint8)
    bad = evaluate_samples(noise, ds.train_labels[:300], ds, model)
    assert bad["frechet_distance"] > 5 * bad["frechet_floor"]
    assert bad["label_agreement"] < 0.3
    shuffled = evaluate_samples(ds.train_images, rng.permutation(ds.train_labels), ds, model)
    assert shuffled["label_agreement"] < 0.2
