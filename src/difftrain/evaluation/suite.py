"""Score a set of samples against a prepared dataset with one protocol for every metric.

Samples are compared with the held-out images. Each feature metric is printed next to its
floor: the same metric for real training images of the same count, which is what a
perfect generator would get. Every record carries its counts, seed and extractor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from difftrain.data import PreparedDataset
from difftrain.errors import UserError
from difftrain.evaluation.extractors import FeatureExtractor
from difftrain.evaluation.frechet import frechet_between
from difftrain.evaluation.kid import kernel_distance
from difftrain.evaluation.neighbours import manifold_metrics
from difftrain.evaluation.reference import floor_pool, reference_features

# Sample metrics; "nll" is a model metric (run_eval computes it from the denoiser, not from samples).
METRICS = {"fid": "Frechet distance in feature space", "kid": "kernel distance (polynomial-kernel MMD^2)",
           "pr": "precision, recall, density, coverage (k-NN in feature space)",
           "cas": "classification accuracy score (classifier trained on samples, tested on real)",
           "mem": "memorization: samples much closer to one training image than to any other",
           "nll": "negative log-likelihood of held-out data, bits per dimension (probability-flow ODE)"}
FLOOR_REPEATS = 5
LOWER_IS_BETTER = {"fid", "kid", "nll_bits_per_dim", "memorized_fraction"}


def parse_metrics(text: str | list[str]) -> list[str]:
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from: {', '.join(METRICS)}")
    return names


def check_samples(images: np.ndarray, labels: np.ndarray | None, ds: PreparedDataset) -> None:
    if images.shape[1:] != tuple(ds.image_shape):
        raise UserError(f"samples have shape {images.shape[1:]} (H, W, C), the dataset {ds.path} has {tuple(ds.image_shape)}")
    if len(images) < 10 or len(ds.test_images) < 10:
        raise UserError(f"evaluation needs at least 10 samples and 10 held-out images (got {len(images)} and "
                        f"{len(ds.test_images)}); prepare {ds.path} with a --test-fraction above 0 or generate more samples")
    if labels is not None and ds.num_classes and (not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),)
                                                  or labels.min() < 0 or labels.max() >= ds.num_classes):
        raise UserError(f"sample labels must be {len(images)} integers in 0..{ds.num_classes - 1} (the dataset's classes), "
                        f"got {labels.dtype} {labels.shape}")


def evaluate_samples(images: np.ndarray, labels: np.ndarray | None, ds: PreparedDataset, extractor: FeatureExtractor | None, *,
                     metrics: list[str] = ("fid", "kid", "pr"), seed: int = 0, k: int = 5,
                     classifier_epochs: int = 20, memorization_png: str | Path | None = None) -> dict[str, Any]:
    """All requested sample metrics of uint8 (N, H, W, C) `images` (with their class `labels`, if any)."""
    check_samples(images, labels, ds)
    pool = floor_pool(ds)
    n = min(len(images), len(pool))
    warnings: list[str] = []
    if len(images) > n:
        warnings.append(f"only the first {n} of {len(images)} samples are scored: as many as the real training images "
                        "set aside for the floors (see docs/evaluation.md)")
    images = images[:n]
    labels = labels[:n] if labels is not None else None
    record: dict[str, Any] = {"n_samples": int(n), "n_reference": int(len(ds.test_images)), "eval_seed": seed,
                              **(extractor.identity if extractor is not None else {})}

    if {"fid", "kid", "pr"} & set(metrics):
        f_test, f_pool = reference_features(ds, extractor)
        f_fake = extractor.features(images)
        # The floor is averaged over several real subsets of the samples' count from the floor pool;
        # its spread (`*_floor_std`) shows how far apart two equally good sample sets can score.
        rng = np.random.default_rng(seed)
        f_reals = [f_pool[rng.choice(len(f_pool), n, replace=False)] for _ in range(FLOOR_REPEATS)]
        dim = f_fake.shape[1]
        if min(n, len(f_test)) < 5 * dim:
            warnings.append(f"{n} samples and {len(f_test)} held-out images are few for {dim}-d features "
                            f"(at least {5 * dim} each is advisable): FID and KID are biased at this count, so compare "
                            "only numbers with the same counts and extractor, and read them against their floor")

        def with_floor(key: str, metric, value: float | None = None) -> None:
            record[key] = metric(f_fake) if value is None else value
            floors = [metric(f_real) for f_real in f_reals]
            record[f"{key}_floor"] = float(np.mean(floors))
            if n < len(f_pool):  # with the whole pool every subset is the same: no spread to measure
                record[f"{key}_floor_std"] = float(np.std(floors))

        if "fid" in metrics:
            with_floor("fid", lambda f: frechet_between(f, f_test))
        if "kid" in metrics:
            size = min(1000, n, len(f_test))
            kid, record["kid_std"] = kernel_distance(f_fake, f_test, subset_size=size, seed=seed)
            with_floor("kid", lambda f: kernel_distance(f, f_test, subset_size=size, seed=seed)[0], kid)
            record["kid_subset_size"] = size
        if "pr" in metrics:
            results = {id(f): manifold_metrics(f_test, f, k=k) for f in [f_fake, *f_reals]}
            for key in ("precision", "recall", "density", "coverage"):
                with_floor(key, lambda f: results[id(f)][key])
            record["k"] = k

    if labels is not None and ds.num_classes:
        from difftrain.evaluation import classifier as clf

        model, meta = clf.load_or_train_classifier(ds, epochs=classifier_epochs)
        record["label_agreement"] = float((clf.predict(model, images) == labels).mean())
        if "cas" in metrics:
            # The same network and budget trained on real images of the same count: the score to reach.
            real_idx = pool[np.random.default_rng(seed).choice(len(pool), n, replace=False)]
            fake_model = clf.fit_classifier(images, labels, ds.num_classes, epochs=classifier_epochs, seed=seed)
            real_model = clf.fit_classifier(ds.train_images[real_idx], ds.train_labels[real_idx], ds.num_classes,
                                            epochs=classifier_epochs, seed=seed)
            record["cas"] = clf.accuracy(fake_model, ds.test_images, ds.test_labels)
            record["cas_real"] = clf.accuracy(real_model, ds.test_images, ds.test_labels)
    elif "cas" in metrics:
        warnings.append("cas skipped: it needs class labels on both the samples and the dataset")

    if "mem" in metrics:
        from difftrain.evaluation.memorization import memorization, save_closest_pairs

        result = memorization(images, ds.train_images)
        record.update(result.summary())
        if memorization_png is not None:
            record["memorization_png"] = str(save_closest_pairs(images, ds.train_images, result, memorization_png,
                                                                image_channels=ds.image_channels))
    record["warnings"] = warnings
    return record
