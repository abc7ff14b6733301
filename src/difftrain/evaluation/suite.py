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
from difftrain.modalities import FeatureExtractor
from difftrain.evaluation.frechet import frechet_between
from difftrain.evaluation.kid import kernel_distance
from difftrain.evaluation.neighbours import manifold_metrics
from difftrain.evaluation.reference import floor_pool, reference_features

# Sample metrics; "nll" is a model metric (run_eval computes it from the denoiser, not from samples).
METRICS = {"fid": "Frechet distance in feature space", "kid": "kernel distance (polynomial-kernel MMD^2)",
           "pr": "precision, recall, density, coverage (k-NN in feature space)",
           "dist": "data-space scores of the samples against held-out data (vectors: sliced Wasserstein, energy distance; "
                   "series: discriminative, predictive and correlational scores of TimeGAN / Diffusion-TS)",
           "cas": "classification accuracy score (classifier trained on samples, tested on real)",
           "mem": "memorization: samples much closer to one training image than to any other (text: also verbatim overlap)",
           "judge": "text: generative perplexity of the samples under an autoregressive judge of the run's size trained on "
                    "the training text (cached beside the dataset); floor: real text the judge never saw",
           "nll": "negative log-likelihood of held-out data, bits per dimension (probability-flow ODE)",
           "forecast": "series: CRPS, MAE, MSE of forecasts of held-out windows' ends, beside seasonal-naive and VAR baselines",
           "impute": "series: CRPS, MAE, MSE of values hidden at random in held-out windows, beside linear interpolation"}
# Metrics of the model itself (run_eval computes them from the denoiser), not of a set of samples.
MODEL_METRICS = ("nll", "forecast", "impute")
FLOOR_REPEATS = 5
LOWER_IS_BETTER = {"fid", "kid", "nll_bits_per_dim", "memorized_fraction", "sliced_wasserstein", "energy_distance",
                   "discriminative", "predictive", "correlational", "column_shape_error", "pair_trend_error", "c2st_auc",
                   "longest_overlap", "longest_overlap_max", "ngram_overlap", "judge_perplexity"}


def parse_metrics(text: str | list[str]) -> list[str]:
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from: {', '.join(METRICS)}")
    return names


def check_samples(images: np.ndarray, labels: np.ndarray | None, ds: PreparedDataset) -> None:
    if images.shape[1:] != tuple(ds.sample_shape):
        raise UserError(f"samples have shape {images.shape[1:]}, the dataset {ds.path} has {tuple(ds.sample_shape)}")
    if len(images) < 10 or len(ds.test_data) < 10:
        raise UserError(f"evaluation needs at least 10 samples and 10 held-out images (got {len(images)} and "
                        f"{len(ds.test_data)}); prepare {ds.path} with a --test-fraction above 0 or generate more samples")
    if labels is not None and ds.num_classes and (not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),)
                                                  or labels.min() < 0 or labels.max() >= ds.num_classes):
        raise UserError(f"sample labels must be {len(images)} integers in 0..{ds.num_classes - 1} (the dataset's classes), "
                        f"got {labels.dtype} {labels.shape}")


def floor_subsets(ds: PreparedDataset, pool: np.ndarray, labels: np.ndarray | None, n: int, seed: int,
                  repeats: int = FLOOR_REPEATS) -> list[np.ndarray]:
    """Positions in the floor pool of `repeats` real stand-ins for n samples. With sample labels, each subset holds as
    many items of each class as the samples do: a perfect class-conditional generator asked for balanced classes
    draws a balanced set, and an unbalanced real subset would score worse on distances between sets for that alone
    (on the 25-Gaussian grid, a sliced Wasserstein floor of 0.063 against 0.004). Random subsets when a class has too few."""
    subsets = []
    rng = np.random.default_rng(seed)  # one stream for all repeats (the unlabelled floors are what they always were)
    for _ in range(repeats):
        if labels is not None and ds.train_labels is not None:
            pool_labels = ds.train_labels[pool]
            wanted = np.bincount(labels, minlength=ds.num_classes)
            by_class = [np.flatnonzero(pool_labels == c) for c in range(len(wanted))]
            if all(len(members) >= count for members, count in zip(by_class, wanted, strict=True)):
                picked = np.concatenate([rng.choice(members, count, replace=False)
                                         for members, count in zip(by_class, wanted, strict=True)])
                subsets.append(rng.permutation(picked))
                continue
        subsets.append(rng.choice(len(pool), n, replace=False))
    return subsets


def evaluate_samples(images: np.ndarray, labels: np.ndarray | None, ds: PreparedDataset, extractor: FeatureExtractor | None, *,
                     metrics: list[str] = ("fid", "kid", "pr"), seed: int = 0, k: int = 5,
                     classifier_epochs: int = 20, memorization_png: str | Path | None = None,
                     judge: dict[str, Any] | None = None) -> dict[str, Any]:
    """All requested sample metrics of `images` (the dataset's kind of data; with their class `labels`, if any).
    `judge`: the settings of the modality's judge ({"network": the run's model config, "steps", "say"})."""
    check_samples(images, labels, ds)
    pool = floor_pool(ds)
    n = min(len(images), len(pool))
    warnings: list[str] = []
    if len(images) > n:
        warnings.append(f"only the first {n} of {len(images)} samples are scored: as many as the real training images "
                        "set aside for the floors (see docs/evaluation.md)")
    images = images[:n]
    labels = labels[:n] if labels is not None else None
    record: dict[str, Any] = {"n_samples": int(n), "n_reference": int(len(ds.test_data)), "eval_seed": seed,
                              **(extractor.identity if extractor is not None else {})}

    # Every floor is averaged over several real subsets of the samples' count from the floor pool, with the samples'
    # classes in the samples' proportions; its spread (`*_floor_std`) shows how far apart two equally good sample
    # sets can score.
    subsets = floor_subsets(ds, pool, labels, n, seed)
    floor_sets = [pool[s] for s in subsets]

    def floored(key: str, metric, value: float, reals: list) -> None:
        record[key] = value
        floors = [metric(real) for real in reals]
        record[f"{key}_floor"] = float(np.mean(floors))
        if n < len(pool):  # with the whole pool every subset is the same: no spread to measure
            record[f"{key}_floor_std"] = float(np.std(floors))

    if "judge" in metrics:
        judged, record["judge"] = ds.modality.judge(ds, **(judge or {}))
        floored("judge_perplexity", judged, judged(images), [ds.train_data[idx] for idx in floor_sets])

    if "dist" in metrics:
        extra = ds.modality.extra_metrics(images, ds.test_data, seed)
        if not extra:
            warnings.append(f"dist skipped: {ds.modality.kind} data has no data-space distances (use fid, kid, pr)")
        for key, metric in extra.items():
            floored(key, metric, metric(images), [ds.train_data[idx] for idx in floor_sets])

    if {"fid", "kid", "pr"} & set(metrics):
        f_test, f_pool = reference_features(ds, extractor)
        f_fake = extractor.features(images)
        f_reals = [f_pool[s] for s in subsets]
        dim = f_fake.shape[1]
        if min(n, len(f_test)) < 5 * dim:
            warnings.append(f"{n} samples and {len(f_test)} held-out images are few for {dim}-d features "
                            f"(at least {5 * dim} each is advisable): FID and KID are biased at this count, so compare "
                            "only numbers with the same counts and extractor, and read them against their floor")

        def with_floor(key: str, metric, value: float | None = None) -> None:
            floored(key, metric, metric(f_fake) if value is None else value, f_reals)

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
        modality = ds.modality
        model, meta = modality.domain_classifier(ds, epochs=classifier_epochs)
        record["label_agreement"] = float((model.predict(images) == labels).mean())
        # The floor: the same classifier on held-out real items of the classes asked for (with captions: prompt
        # following's ceiling, the real image with its own caption).
        asked = np.isin(ds.test_labels, np.unique(labels))
        record["label_agreement_floor"] = model.accuracy(ds.test_data[asked], ds.test_labels[asked])
        if "cas" in metrics:
            # The same network and budget trained on real items of the same count: the score to reach.
            real_idx = floor_sets[0]
            fake_model = modality.fit_classifier(images, labels, ds.num_classes, epochs=classifier_epochs, seed=seed)
            real_model = modality.fit_classifier(ds.train_data[real_idx], ds.train_labels[real_idx], ds.num_classes,
                                                 epochs=classifier_epochs, seed=seed)
            record["cas"] = fake_model.accuracy(ds.test_data, ds.test_labels)
            record["cas_real"] = real_model.accuracy(ds.test_data, ds.test_labels)
    elif "cas" in metrics:
        warnings.append("cas skipped: it needs class labels on both the samples and the dataset")

    if "mem" in metrics:
        from difftrain.evaluation.memorization import memorization, save_closest_pairs

        result = memorization(images, ds.train_data, ds.modality)
        record.update(result.summary())
        # The floor: held-out real items, never trained on, judged by the same rule. Near 0 for images; for dense
        # low-dimensional data the nearest-neighbour ratio is often small by chance, and this shows how often.
        held_out = ds.test_data[:n]
        record["memorized_fraction_floor"] = float(memorization(held_out, ds.train_data, ds.modality).flagged.mean())
        for key, metric in ds.modality.copy_metrics(ds.train_data).items():  # the kind's own measures of copying
            record[key], record[f"{key}_floor"] = metric(images), metric(held_out)
        if memorization_png is not None:
            record["memorization_png"] = str(save_closest_pairs(images, ds.train_data, result, memorization_png, ds.modality))
    record["warnings"] = warnings
    return record
