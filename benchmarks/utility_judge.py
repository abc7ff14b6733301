"""How strong are the utility reports' judges on real data alone? (issue 22, part 1)

For each labelled fraction of a training split (MNIST: 1% and 10%, and the whole split with --full; the built-in
digits: 10% and 30%), a stratified subset is drawn once; for each seed a stratified 10% of it is held back for early
stopping (evaluation/utility.validation_split, as the reports do) and the judge (modalities/image_judge.fit_judge) trains
on the rest. Accuracy is on the whole test split (MNIST's 10,000 t10k images; digits' held-out 20%). Beside it, the
evaluation suite's small classifier with the reports' old recipe (20 epochs of the subset, no early stopping), the
judge the reports used before, on the same images.

Prints one JSON line.

Run:
    python benchmarks/utility_judge.py --mnist ../shared/data/mnist --seeds 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import common
from difftrain.data import prepare_dataset
from difftrain.data.idx import parse_idx
from difftrain.evaluation.arms import seed_summary
from difftrain.evaluation.utility import validation_split
from difftrain.modalities import modality_for


def stratified(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """The indices of a stratified `fraction` of every class."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:round(fraction * np.sum(labels == c))]
                                   for c in np.unique(labels)]))


def mnist(folder: Path) -> dict[str, np.ndarray]:
    def read(prefix: str, ndim: int) -> np.ndarray:
        path = next(iter(sorted(folder.glob(f"{prefix}-idx{ndim}-ubyte*"))))
        return parse_idx(path.read_bytes(), path, ndim)

    return {"train": read("train-images", 3)[..., None], "train_labels": read("train-labels", 1).astype(np.int64),
            "test": read("t10k-images", 3)[..., None], "test_labels": read("t10k-labels", 1).astype(np.int64)}


def digits(out: Path) -> dict[str, np.ndarray]:
    ds = prepare_dataset("digits", out / "digits", test_fraction=0.2, overwrite=True, progress=False)
    return {"train": ds.train_data, "train_labels": ds.train_labels, "test": ds.test_data, "test_labels": ds.test_labels}


def measure(data: dict[str, np.ndarray], fraction: float, seeds: list[int]) -> dict:
    modality = modality_for({"kind": "image", "shape": list(data["train"].shape[1:])})
    subset = stratified(data["train_labels"], fraction)
    images, labels = data["train"][subset], data["train_labels"][subset]
    judge, old, trainings, seconds = [], [], [], []
    for seed in seeds:
        train, validation = validation_split(labels, seed)
        start = time.perf_counter()
        model, training = modality.fit_downstream(images[train], labels[train], 10, seed=seed,
                                                  validation=(images[validation], labels[validation]))
        seconds.append(time.perf_counter() - start)
        judge.append(model.accuracy(data["test"], data["test_labels"]))
        trainings.append(training)
        # The reports' judge before: the suite's small classifier, 20 epochs of the whole subset, no validation.
        old.append(modality.fit_classifier(images, labels, 10, epochs=20, seed=seed).accuracy(data["test"], data["test_labels"]))
        print(f"{fraction:g}: seed {seed}: judge {judge[-1]:.4f} ({training}, {seconds[-1]:.0f} s), old {old[-1]:.4f}",
              flush=True)
    return {"fraction": fraction, "labelled_images": len(subset), "validation_images": len(validation),
            "test_images": len(data["test"]), "judge": seed_summary("accuracy", judge),
            "old_small_classifier": seed_summary("accuracy", old), "judge_training": trainings,
            "judge_seconds": seed_summary("seconds", seconds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", help="folder of the MNIST IDX files (without it: digits only)")
    p.add_argument("--out", default="/tmp/utility-judge", help="folder for the prepared digits")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--mnist-fractions", default="0.01,0.1", help="labelled fractions of MNIST to measure")
    p.add_argument("--full", action="store_true", help="also the whole MNIST training split (about 15 CPU minutes a seed)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    common.set_threads(args.threads)
    seeds = list(range(args.seeds))
    results = {"digits": [measure(digits(Path(args.out)), f, seeds) for f in (0.1, 0.3)]}
    if args.mnist:
        data = mnist(Path(args.mnist))
        fractions = [float(f) for f in args.mnist_fractions.split(",")] + ([1.0] if args.full else [])
        results["mnist"] = [measure(data, f, seeds) for f in fractions]
    common.emit({"benchmark": "utility_judge", "settings": vars(args), "results": results})


if __name__ == "__main__":
    main()
