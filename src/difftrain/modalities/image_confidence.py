"""The confidence filter's classifier of images: the ResNet judge, trained on every labelled training image.

The filter keeps a sample when a classifier gives its intended class a probability of at least T, so the classifier must
know the classes as well as the labelled images allow. The evaluation's feature classifier does not: it is small, sees
half of the labelled images (the rest are the floor's), and trains a fixed 20 epochs, which on 600 labelled MNIST images
is 40 steps, 0.29 accuracy and no probability above 0.56 (docs/benchmarks.md), so it rejected every sample. Its recipe
stays as it is, since its features are the evaluation's and a change would move every recorded FID.

This one is the utility reports' judge (image_judge.py): augmentation, trained to convergence with early stopping on a
tenth of the labelled images, without label smoothing, whose targets (0.91 for the true class of ten) would otherwise
put a threshold of 0.9 at the edge of what a right answer scores. Cached beside the dataset.
"""

from __future__ import annotations

from collections.abc import Callable

from difftrain.errors import UserError
from difftrain.evaluation.utility import validation_split
from difftrain.modalities.dataset_cache import load_or_train
from difftrain.modalities.image_classifier import accuracy
from difftrain.modalities.image_judge import ResNetJudge, fit_judge

NAME = "difftrain-resnet-judge (confidence: every labelled training image, no label smoothing)"


def load_or_train_confidence_judge(ds, seed: int = 0) -> tuple[ResNetJudge, dict]:
    """The dataset's cached confidence judge, trained and saved beside the dataset on first use."""
    if not ds.num_classes:
        raise UserError(f"{ds.path} has no labels: the confidence filter needs a classifier of the classes, trained on "
                        "labelled images (prepare the run's data with labels)")

    def train(progress: Callable[[int, int], None]) -> tuple[ResNetJudge, dict]:
        fit, held = validation_split(ds.train_labels, seed)
        model, converged = fit_judge(ds.train_data[fit], ds.train_labels[fit], ds.num_classes,
                                     validation=(ds.train_data[held], ds.train_labels[held]), seed=seed,
                                     label_smoothing=0.0, progress=progress)
        return model, {"name": NAME, "test_accuracy": accuracy(model, ds.test_data, ds.test_labels), "seed": seed,
                       "training_items": len(fit), "validation_items": len(held), **converged.as_dict()}

    return load_or_train(ds, "confidence-judge", [seed, "no-smoothing"], ResNetJudge(ds.sample_shape[2], ds.num_classes),
                         train, "the confidence filter's classifier", "a ResNet, to convergence",
                         converges=True)
