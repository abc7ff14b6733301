"""Is synthetic data worth having? One classifier recipe trained on real, synthetic and real+synthetic images.

Every arm is tested on the same real held-out images. Fairness rule: every arm trains the same network for
the same number of optimizer steps of the same batch size with the same seeds, so a gain comes from the
data, not from more compute (a bigger training set would otherwise get more steps per epoch).
The segmentation counterpart is modalities/segmenter.segmentation_utility.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from difftrain.errors import UserError
from difftrain.evaluation.arms import seed_summary, step_budget, verdict

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


def classification_utility(real_train: Labelled, real_test: Labelled, synth: Labelled, num_classes: int, *, modality,
                           seeds: tuple[int, ...] = (0, 1, 2), steps: int | None = None, batch: int = 128,
                           fractions: tuple[float, ...] = FRACTIONS,
                           progress: Callable[[str], None] | None = None) -> dict:
    """Accuracy on the real test images of fit_classifier trained on real, synthetic and real+synthetic images,
    mean and std over `seeds`, and against the synthetic set's size (nested, class-balanced `fractions` of it).

    `steps` None: 20 epochs of the real training images, for every arm. "synthetic_helps": real+synthetic
    beats real by more than the larger seed std of the two arms (None with one seed). `progress(stage)` is called before each training.
    """
    real_test = _check(real_test, num_classes, "real test images", np.asarray(real_test[0]).shape[1:], modality)
    shape = real_test[0].shape[1:]
    real_train = _check(real_train, num_classes, "real training images", shape, modality)
    synth = _check(synth, num_classes, "synthetic images", shape, modality)
    if not seeds:
        raise UserError("classification utility: give at least one seed")
    if steps is not None and steps < 1:
        raise UserError(f"classification utility: steps must be at least 1 (got {steps})")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise UserError(f"classification utility: fractions of the synthetic set must be in (0, 1], got {list(fractions)}")
    steps = steps or step_budget(len(real_train[0]), 20, batch)

    def score(arm: str, images: np.ndarray, labels: np.ndarray) -> dict:
        values = []
        for seed in seeds:
            if progress is not None:
                progress(f"{arm}, seed {seed}")
            model = modality.fit_classifier(images, labels, num_classes, epochs=20, steps=steps, seed=seed, batch=batch)
            values.append(model.accuracy(*real_test))
        return {**seed_summary("accuracy", values), "images": len(images)}

    def synthetic_arms(part: Labelled) -> dict:
        both = (np.concatenate([real_train[0], part[0]]), np.concatenate([real_train[1], part[1]]))
        return {"synthetic": score(f"synthetic ({len(part[0])})", *part),
                "real+synthetic": score(f"real+synthetic ({len(part[0])} synthetic)", *both)}

    results = {"real": score("real", *real_train), **synthetic_arms(synth)}
    order = balanced_order(synth[1], seeds[0])
    curve = []
    for fraction in sorted(set(fractions)):
        n = max(1, round(fraction * len(order)))
        arms = results if n == len(order) else synthetic_arms((synth[0][order[:n]], synth[1][order[:n]]))
        point = {arm: {k: arms[arm][k] for k in ("accuracy_mean", "accuracy_std")} for arm in ("synthetic", "real+synthetic")}
        curve.append({"fraction": fraction, "synthetic_images": n, **point})
    return {
        "task": "classification", "model": modality.classifier_name, "items": f"{modality.item}s",
        "metric": "accuracy", "metric_name": "accuracy", "num_classes": num_classes, "seeds": list(seeds), "steps": steps,
        "batch": batch, "counts": {"real_train": len(real_train[0]), "synthetic": len(synth[0]), "real_test": len(real_test[0])},
        "fairness": (f"every arm trains the same classifier recipe for the same {steps} optimizer steps of batch {batch} "
                     f"with the same seeds; only the training {modality.item}s differ; all are tested on the same real held-out "
                     f"{modality.item}s"),
        "arms": results,
        "size_curve": curve,
        **verdict(results, "accuracy", "accuracy", len(seeds)),
    }
