"""A small classifier trained on the prepared dataset: its features measure sample quality.

Inception features know nothing of 8x8 digits; a classifier trained on the data itself
is the honest feature space for small grayscale data. It is cached beside the dataset and
never sees the floor pool (see reference.py).
The same network, trained on generated images instead, gives the Classification Accuracy Score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from difftrain.errors import UserError
from difftrain.evaluation.arms import step_budget
from difftrain.modalities import image
from difftrain.modalities.dataset_cache import load_or_train

FEATURES = 64


class SmallClassifier(nn.Module):
    """Three conv stages and global pooling; `features` is the 64-d penultimate layer."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(stage(channels, width, 1), stage(width, 2 * width, 2), stage(2 * width, FEATURES, 2),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _batches(images: np.ndarray, batch: int = 512):
    for i in range(0, len(images), batch):
        yield image.to_model(torch.from_numpy(images[i:i + batch]))


@torch.no_grad()
def features(model: SmallClassifier, images: np.ndarray) -> np.ndarray:
    model.eval()
    return np.concatenate([model.features(x).numpy() for x in _batches(images)]) if len(images) else np.zeros((0, FEATURES))


@torch.no_grad()
def predict(model: SmallClassifier, images: np.ndarray) -> np.ndarray:
    model.eval()
    return np.concatenate([model(x).argmax(1).numpy() for x in _batches(images)])


@torch.no_grad()
def probabilities(model: SmallClassifier, images: np.ndarray) -> np.ndarray:
    """(N, K) softmax class probabilities."""
    model.eval()
    parts = [torch.softmax(model(x).double(), 1).numpy() for x in _batches(images)]  # float64: thresholds compare exactly
    return np.concatenate(parts) if parts else np.zeros((0, model.head.out_features), np.float32)


def accuracy(model: SmallClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(model, images) == labels).mean()) if len(images) else float("nan")


def fit_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = 20, seed: int = 0,
                   batch: int = 128, steps: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> SmallClassifier:
    """Train a SmallClassifier on uint8 (N, H, W, C) images; the seed fixes everything.

    `steps` (optimizer steps) overrides `epochs`, so training sets of different sizes get the same compute.
    `progress(done, steps)` is called every 10 steps.
    """
    # A private RNG stream: evaluating during training must not move the trainer's random numbers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallClassifier(images.shape[3], num_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        x_all = image.to_model(torch.from_numpy(images))
        y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        gen = torch.Generator().manual_seed(seed)
        steps = step_budget(len(x_all), epochs, batch) if steps is None else steps
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        model.train()
        for done in range(steps):
            if progress is not None and done % 10 == 0:
                progress(done, steps)
            idx = torch.randint(len(x_all), (batch,), generator=gen)
            x = x_all[idx]
            # Shift by up to 1/16 of the size (none for 8x8 digits, where a pixel is a stroke) so
            # features do not hinge on exact pixel positions.
            pad = x.shape[-1] // 16
            dx, dy = torch.randint(-pad, pad + 1, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _needs_labels(ds) -> None:
    if not ds.num_classes:
        raise UserError(f"{ds.path} has no labels: the feature classifier needs a labelled dataset "
                        "(use eval.extractor=inception or a TorchScript file for unlabelled data)")


def train_classifier(ds, epochs: int = 20, seed: int = 0, batch: int = 128,
                     progress: Callable[[int, int], None] | None = None) -> tuple[SmallClassifier, float]:
    """Train on the train split less the floor pool; return the classifier and its held-out accuracy."""
    from difftrain.evaluation.reference import classifier_pool

    _needs_labels(ds)
    idx = classifier_pool(ds)
    model = fit_classifier(ds.train_data[idx], ds.train_labels[idx], ds.num_classes, epochs=epochs, seed=seed, batch=batch,
                           progress=progress)
    return model, accuracy(model, ds.test_data, ds.test_labels)


def load_or_train_classifier(ds, epochs: int = 20, seed: int = 0) -> tuple[SmallClassifier, dict]:
    """The dataset's cached classifier, trained and saved beside the dataset on first use."""
    _needs_labels(ds)

    def train(progress: Callable[[int, int], None]) -> tuple[SmallClassifier, dict]:
        model, test_accuracy = train_classifier(ds, epochs, seed, progress=progress)
        return model, {"name": "difftrain-small-classifier", "test_accuracy": test_accuracy, "epochs": epochs, "seed": seed}

    # "floor-pool": trained without the floor pool's images (evaluation/reference.py); older caches are not reused.
    return load_or_train(ds, "classifier", [epochs, seed, "floor-pool"], SmallClassifier(ds.sample_shape[2], ds.num_classes),
                         train, "the evaluation's feature classifier", f"{epochs} epochs")
