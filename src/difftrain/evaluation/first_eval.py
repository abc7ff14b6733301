"""A first evaluation of samples: Frechet distance (with its real-data floor) and label agreement."""

from __future__ import annotations

import numpy as np

from difftrain.data import PreparedDataset
from difftrain.evaluation import classifier as clf
from difftrain.evaluation.frechet import frechet_between


def evaluate_samples(images: np.ndarray, labels: np.ndarray | None, ds: PreparedDataset, model: clf.SmallClassifier,
                     seed: int = 0) -> dict:
    """Frechet distance of samples and of real training images to the held-out images.

    Both distances use the same held-out set and the same sample count, so the floor
    (real vs real) is the number a perfect generator would get.
    """
    if images.shape[1:] != tuple(ds.image_shape):
        raise ValueError(f"samples have shape {images.shape[1:]}, the dataset {tuple(ds.image_shape)}")
    n = min(len(images), len(ds.train_images))
    rng = np.random.default_rng(seed)
    real = ds.train_images[rng.choice(len(ds.train_images), n, replace=False)]
    f_test = clf.features(model, ds.test_images)
    result = {
        "n_samples": int(n),
        "n_reference": int(len(ds.test_images)),
        "frechet_distance": frechet_between(clf.features(model, images[:n]), f_test),
        "frechet_floor": frechet_between(clf.features(model, real), f_test),
    }
    if labels is not None and ds.num_classes:
        result["label_agreement"] = float((clf.predict(model, images[:n]) == labels[:n]).mean())
    return result
