"""A first evaluation of samples: Frechet distance (with its real-data floor) and label agreement."""

from __future__ import annotations

import numpy as np

from difftrain.data import PreparedDataset
from difftrain.errors import UserError
from difftrain.evaluation import classifier as clf
from difftrain.evaluation.frechet import frechet_between


def evaluate_samples(images: np.ndarray, labels: np.ndarray | None, ds: PreparedDataset, model: clf.SmallClassifier,
                     seed: int = 0) -> dict:
    """Frechet distance of samples and of real training images to the held-out images.

    Both distances use the same held-out set and the same sample count, so the floor
    (real vs real) is the number a perfect generator would get.
    """
    if images.shape[1:] != tuple(ds.image_shape):
        raise UserError(f"samples have shape {images.shape[1:]}, the dataset {ds.path} has {tuple(ds.image_shape)}")
    if len(images) < 10 or len(ds.test_images) < 10:
        raise UserError(f"a Frechet distance needs at least 10 samples and 10 held-out images (got {len(images)} and "
                        f"{len(ds.test_images)}); prepare {ds.path} with a --test-fraction above 0 or generate more samples")
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
