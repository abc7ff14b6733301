"""Is synthetic data worth having? One judge trained on real, synthetic and real+synthetic images.

Every arm is tested on the same real held-out images. Fairness rule: every arm trains the same recipe (the modality's
`fit_downstream`: for images a ResNet with augmentation, to convergence with early stopping) with the same seeds, and
stops early on the same real validation images, held back from the real training images for every arm (a stratified
10%, drawn anew for each seed). Arms are paired by seed, so the verdict is a paired test (evaluation/arms.py).
The segmentation counterpart is modalities/segmenter.segmentation_utility.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from difftrain.errors import UserError
from difftrain.evaluation.arms import seed_summary, verdict

Labelled = tuple[np.ndarray, np.ndarray]  # uint8 images (N, H, W, C), int labels (N,)
FRACTIONS = (0.125, 0.25, 0.5, 1.0)  # of the synthetic set, for the accuracy-against-size curve


def _check(data: Labelled, num_classes: int, what: str, shape: tuple[int, ...], modality) -> Labelled:
    images, labels = np.asarray(data[0]), np.asarray(data[1])
    if images.dtype != modality.dtype or images.ndim != 1 + len(modality.shape):
        raise UserError(f"{what}: must be {modality.dtype} (N, {', '.join(map(str, modality.shape))}), got {images.dtype} {images.shape}")
    if not len(images):
        raise UserError(f"classification utility: there are no {what}; it needs some of each")
    if images.shape[1:] != shape:
        raise UserError(f"classification utility: {what} are {images.shape[1:]} but the real test items are "
                        f"{shape}; synthesize from a model trained on this dataset")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{what}: labels must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"{what}: label {int(labels.max() if labels.max() >= num_classes else labels.min())} is not a class "
                        f"index below {num_classes}; labels must index the real dataset's classes")
    return images, labels.astype(np.int64)


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A random order of the indices that takes the classes in turn, so every prefix is as class-balanced as it can be."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(perm), np.int64)  # each item's place among the items of its class, in the random order
    for c in np.unique(labels):
        rank[labels[perm] == c] = np.arange(np.count_nonzero(labels == c))
    return perm[np.argsort(rank, kind="stable")]


def validation_split(labels: np.ndarray, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: a stratified `fraction` of every class with two or more items held back (at least
    one of each), the rest to train on."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) > 1:
            held.append(members[:max(1, round(fraction * len(members)))])
    validation = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), validation), validation


def classification_utility(real_train: Labelled, real_test: Labelled, synth: Labelled, num_classes: int, *, modality,
                           seeds: tuple[int, ...] = (0, 1, 2), steps: int | None = None,
                           fractions: tuple[float, ...] = FRACTIONS, real_share: float | None = None,
                           progress: Callable[[str], None] | None = None) -> dict:
    """Accuracy on the real test images of the modality's judge (`fit_downstream`) trained on real, synthetic and
    real+synthetic images, per seed, mean and std over `seeds`, and against the synthetic set's size (nested,
    class-balanced `fractions` of it, with the first seed).

    `steps`: the most optimizer steps of any training (None: the judge's own cap; early stopping ends it first).
    `real_share`: the share of the real+synthetic arm's training draws that are real images, whatever the counts
    (None: every image alike, so the larger set dominates).
    "synthetic_helps": real+synthetic beats real in a paired t-test over the seeds (arms.verdict).
    `progress(stage)` is called before each training.
    """
    real_test = _check(real_test, num_classes, "real test images", np.asarray(real_test[0]).shape[1:], modality)
    shape = real_test[0].shape[1:]
    real_train = _check(real_train, num_classes, "real training images", shape, modality)
    synth = _check(synth, num_classes, "synthetic images", shape, modality)
    if not seeds:
        raise UserError("classification utility: give at least one seed")
    if steps is not None and steps < 1:
        raise UserError(f"classification utility: steps must be at least 1 (got {steps})")
    if real_share is not None and not 0 < real_share < 1:
        raise UserError(f"classification utility: the real share of the mixed arm's draws must be between 0 and 1 "
                        f"(exclusive), got {real_share}")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise UserError(f"classification utility: fractions of the synthetic set must be in (0, 1], got {list(fractions)}")
    splits = {seed: validation_split(real_train[1], seed) for seed in seeds}
    if any(not len(validation) for _, validation in splits.values()):
        raise UserError("classification utility: no class has two real training images, so none can be held back "
                        "to stop training on; give more real training images")

    def score(arm: str, part: Labelled | None, with_real: bool, seeds: tuple[int, ...] = seeds) -> dict:
        values, trainings = [], []
        for seed in seeds:
            train, validation = splits[seed]
            parts = ([(real_train[0][train], real_train[1][train])] if with_real else []) + ([part] if part else [])
            images, labels = (np.concatenate(p) for p in zip(*parts))
            weights = None
            if real_share is not None and with_real and part:  # each real image drawn as often as the share asks
                weights = np.concatenate([np.full(len(train), real_share / len(train)),
                                          np.full(len(part[0]), (1 - real_share) / len(part[0]))])
            if progress is not None:
                progress(f"{arm}, seed {seed}")
            model, training = modality.fit_downstream(images, labels, num_classes, seed=seed, max_steps=steps,
                                                      validation=(real_train[0][validation], real_train[1][validation]),
                                                      weights=weights)
            values.append(model.accuracy(*real_test))
            trainings.append(training)
        return {**seed_summary("accuracy", values), "images": len(images), "training": trainings}

    def synthetic_arms(part: Labelled, seeds: tuple[int, ...] = seeds) -> dict:
        return {"synthetic": score(f"synthetic ({len(part[0])})", part, False, seeds),
                "real+synthetic": score(f"real+synthetic ({len(part[0])} synthetic)", part, True, seeds)}

    results = {"real": score("real", None, with_real=True), **synthetic_arms(synth)}
    # The size curve is a trend, trained with the first seed only: trainings to convergence are too dear to repeat.
    order = balanced_order(synth[1], seeds[0])
    curve = []
    for fraction in sorted(set(fractions)):
        n = max(1, round(fraction * len(order)))
        arms = results if n == len(order) else synthetic_arms((synth[0][order[:n]], synth[1][order[:n]]), seeds[:1])
        point = {arm: {"accuracy": arms[arm]["accuracy_per_seed"][0]} for arm in ("synthetic", "real+synthetic")}
        curve.append({"fraction": fraction, "synthetic_images": n, "seed": seeds[0], **point})
    validation = len(splits[seeds[0]][1])
    return {
        "task": "classification", "model": modality.downstream_name or modality.classifier_name, "items": f"{modality.item}s",
        "metric": "accuracy", "metric_name": "accuracy", "num_classes": num_classes, "seeds": list(seeds), "steps": steps,
        "real_share": real_share,
        "counts": {"real_train": len(real_train[0]) - validation, "real_validation": validation,
                   "synthetic": len(synth[0]), "real_test": len(real_test[0])},
        "judge_real_score": results["real"]["accuracy_mean"],
        "fairness": (f"every arm trains the same judge with the same seeds, stopping early on the same {validation} real "
                     f"validation {modality.item}s held back from the real training {modality.item}s (drawn anew per "
                     f"seed); only the training {modality.item}s differ; all are tested on the same real held-out "
                     f"{modality.item}s"
                     + (f"; the real+synthetic arm draws real {modality.item}s {real_share:.0%} of the time, whatever "
                        "the counts" if real_share is not None else "")),
        "arms": results,
        "size_curve": curve,
        **verdict(results, "accuracy", "accuracy", len(seeds)),
    }
