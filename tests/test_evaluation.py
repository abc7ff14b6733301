"""Evaluation numbers against closed forms, and their behaviour on real and broken samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difftrain.data import load_dataset
from difftrain.modalities.image_classifier import load_or_train_classifier
from difftrain.modalities.image_features import domain_extractor
from difftrain.evaluation.reference import classifier_pool, floor_pool
from difftrain.evaluation.suite import evaluate_samples
from difftrain.evaluation.frechet import feature_stats, frechet_between, frechet_distance
from difftrain.models import build_network


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
    assert [m["weights_sha256"] for m in cached if m.get("epochs") == 10] == [meta["weights_sha256"]]
    _, again = load_or_train_classifier(ds, epochs=10)
    assert again["weights_sha256"] == meta["weights_sha256"]


def test_real_images_score_at_the_floor_and_noise_far_above(digits_and_classifier):
    ds, _, _ = digits_and_classifier
    extractor = domain_extractor(ds, epochs=10)
    every = ["fid", "kid", "pr", "mem"]
    # Unseen real images as "samples" (the floor pool, in another order): they score at the floor.
    pool = floor_pool(ds)
    assert not set(pool) & set(classifier_pool(ds)) and len(pool) + len(classifier_pool(ds)) == len(ds.train_data)
    half = np.random.default_rng(5).permutation(pool)[:len(pool) // 2]
    real = evaluate_samples(ds.train_data[half], ds.train_labels[half], ds, extractor, metrics=every)
    assert real["fid"] != real["fid_floor"] and real["fid_floor_std"] > 0
    # Near the floor: 359 samples against 359 held-out images leave FID ~20% and KID ~0.003 of noise.
    assert real["fid"] == pytest.approx(real["fid_floor"], rel=0.3)
    assert real["kid"] == pytest.approx(real["kid_floor"], abs=0.005)
    for key in ("precision", "recall", "density", "coverage"):
        assert real[key] == pytest.approx(real[f"{key}_floor"], abs=0.1), key
    assert real["label_agreement"] > 0.95
    # Training images are training images: every one is an exact copy of itself.
    assert real["memorized_fraction"] == 1.0
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(300, *ds.sample_shape), dtype=np.uint8)
    bad = evaluate_samples(noise, ds.train_labels[:300], ds, extractor, metrics=every)
    assert bad["fid"] > 5 * bad["fid_floor"] and bad["kid"] > 5 * bad["kid_floor"]
    # Noise lands partly inside the real balls (precision's known weakness); density and coverage are robust to it.
    assert bad["precision"] < 0.5 * bad["precision_floor"] and bad["recall"] < 0.5 * bad["recall_floor"]
    assert bad["density"] < 0.2 and bad["coverage"] < 0.2 and bad["memorized_fraction"] == 0.0
    assert bad["label_agreement"] < 0.3
    shuffled = evaluate_samples(ds.train_data, rng.permutation(ds.train_labels), ds, extractor, metrics=["fid"])
    assert shuffled["label_agreement"] < 0.2


def test_every_number_carries_its_protocol(digits_and_classifier):
    ds, _, meta = digits_and_classifier
    record = evaluate_samples(ds.test_data, ds.test_labels, ds, domain_extractor(ds, epochs=10), metrics=["fid"], seed=3)
    assert record["extractor"] == "difftrain-small-classifier" and record["extractor_sha256"] == meta["weights_sha256"]
    assert record["extractor_test_accuracy"] == meta["test_accuracy"]
    assert record["n_samples"] == len(ds.test_data) and record["n_reference"] == len(ds.test_data) and record["eval_seed"] == 3
    # The real data's features are cached per dataset and extractor (name and weights hash in the file name).
    key = f"difftrain-small-classifier-{meta['weights_sha256'][:12]}"
    assert (ds.path / "eval-cache" / f"{key}-test.npy").is_file() and list((ds.path / "eval-cache").glob(f"{key}-floor-*.npy"))
    # 360 held-out images are enough for 64-d features; 40 samples are not, and the record says so.
    assert record["warnings"] == []
    few = evaluate_samples(ds.test_data[:40], None, ds, domain_extractor(ds, epochs=10), metrics=["fid"])
    assert any("biased" in w for w in few["warnings"]) and "label_agreement" not in few


@pytest.fixture(scope="module")
def trained_and_untrained(tmp_path_factory, digits_dir):
    """A tiny model after 9,600 training images, and the same network untrained."""
    from difftrain.config import load_config
    from difftrain.diffusion import Denoiser
    from difftrain.store.run import formulation_of, open_run
    from difftrain.training.trainer import train
    from tests.conftest import tiny_overrides

    run_dir = tmp_path_factory.mktemp("runs") / "brief"
    cfg = load_config(overrides=tiny_overrides(digits_dir, **{"train.batch_size": 32, "train.duration_steps": 300,
                                                               "optim.lr": 2e-3, "train.log_every_images": 3200}))
    train(cfg, run_dir, progress=False)
    run = open_run(run_dir)
    trained = run.denoiser(run.checkpoint())
    untrained = Denoiser(build_network(run.config.model, run.modality, run.num_classes).eval(), formulation_of(run.config))
    return run, trained, untrained


def test_a_briefly_trained_model_beats_an_untrained_one_on_every_metric(trained_and_untrained, digits_dir):
    from difftrain.evaluation.run_eval import likelihood
    from difftrain.sampling import SamplingSpec, balanced_labels, generate

    run, trained, untrained = trained_and_untrained
    ds = load_dataset(digits_dir)
    extractor = domain_extractor(ds, epochs=run.config.eval.classifier_epochs)
    labels = balanced_labels(300, ds.num_classes)
    spec = SamplingSpec(steps=8)
    scores = {}
    for name, denoiser in (("trained", trained), ("untrained", untrained)):
        images = generate(denoiser, ds.modality, 300, labels, spec)
        scores[name] = evaluate_samples(images, labels, ds, extractor, metrics=["fid", "kid", "pr", "cas"],
                                        classifier_epochs=run.config.eval.classifier_epochs)
        ec = run.config.eval.model_copy(update={"nll_images": 32, "nll_steps": 16})
        scores[name].update(likelihood(denoiser, ds, list(range(ds.num_classes)), ec))
    good, bad = scores["trained"], scores["untrained"]
    for lower in ("fid", "kid", "nll_bits_per_dim"):
        assert good[lower] < bad[lower], (lower, good[lower], bad[lower])
    for higher in ("precision", "recall", "density", "coverage", "cas", "label_agreement"):
        assert good[higher] > bad[higher], (higher, good[higher], bad[higher])
    # An untrained network's samples are noise to a classifier: CAS about chance, far below real data.
    assert bad["cas"] < 0.3 < good["cas_real"]


def test_inception_extractor_feeds_torch_fidelity_uint8_rgb(tmp_path, monkeypatch, digits_dir):
    """torch-fidelity needs torchvision, which cannot be installed here: a stand-in with its
    interface (uint8 (N, 3, H, W) in, a tuple of (N, 2048) features out) checks our side."""
    import sys
    import types

    import torch

    from difftrain.modalities.image_features import build_extractor
    from difftrain.hashing import sha256_file

    seen = {}

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            seen.update(name=name, features=features_list, weights=feature_extractor_weights_path)

        def forward(self, x):
            seen["input"] = (x.dtype, tuple(x.shape[1:]))
            return (x.float().mean(dim=(2, 3)).repeat(1, 683)[:, :2048],)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"stand-in weights")
    ds = load_dataset(digits_dir)
    extractor = build_extractor("auto", ds, inception_weights=str(weights))
    features = extractor.features(ds.test_data[:10])
    assert features.shape == (10, 2048) and extractor.name == "inception-v3-fid" and extractor.sha256 == sha256_file(weights)
    assert seen == {"name": "inception-v3-compat", "features": ["2048"], "weights": str(weights),
                    "input": (torch.uint8, (3, 8, 8))}
