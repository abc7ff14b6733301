"""Points: difftrain's MLP diffusion model against a kernel density estimate, on the same data, scored alike.

Trains the `points` preset on a built-in point set (two moons, the 5x5 Gaussian grid, ...), samples it, and scores
the samples with `difftrain eval`'s metrics (sliced Wasserstein and energy distance to the held-out points,
precision/recall/density/coverage and the Frechet distance in the standardised data space, CAS, memorization),
each beside its real-data floor. The baseline is scikit-learn's KernelDensity fitted to the same training points
(per class when labelled, bandwidth by 5-fold cross-validated likelihood over a log grid), sampled with the same
class balance and scored by the same suite. Prints one JSON line per dataset.

Run:
    python benchmarks/points.py --dataset moons gaussians25 --images 1000000 --n-samples 2000 --out runs/bench-points --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import common
from difftrain.config import load_config
from difftrain.data import load_dataset
from difftrain.evaluation.run_eval import evaluate_run, extractor_for
from difftrain.evaluation.suite import evaluate_samples, parse_metrics
from difftrain.sampling import balanced_labels
from difftrain.training.trainer import train

SHOWN = ("sliced_wasserstein", "energy_distance", "fid", "precision", "recall", "density", "coverage", "cas", "cas_real",
         "memorized_fraction", "memorized_fraction_floor", "label_agreement")


def kde_samples(train: np.ndarray, labels: np.ndarray | None, n: int, num_classes: int, seed: int) -> tuple[np.ndarray, dict]:
    """n points from KernelDensity fits (one per class when labelled) in the standardised space, back in data units."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity

    mean, std = train.mean(0), train.std(0)
    z = (train - mean) / std
    wanted = balanced_labels(n, num_classes) if labels is not None else None
    groups = range(num_classes) if labels is not None else [None]
    out = np.zeros((n, train.shape[1]))
    bandwidths = {}
    for c in groups:
        part = z if c is None else z[labels == c]
        search = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-2.5, 0, 30)}, cv=5).fit(part)
        kde = search.best_estimator_
        rows = np.arange(n) if c is None else np.flatnonzero(wanted == c)
        out[rows] = kde.sample(len(rows), random_state=seed + (0 if c is None else c))
        bandwidths["all" if c is None else str(c)] = float(kde.bandwidth)
    return (out * std + mean).astype(np.float32), {"bandwidths": bandwidths, "labels": wanted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", nargs="+", default=["moons", "gaussians25"])
    parser.add_argument("--images", type=int, default=1_000_000, help="Training images (points) of the diffusion model.")
    parser.add_argument("--n-samples", type=int, default=2000)
    parser.add_argument("--metrics", default="dist,fid,pr,cas,mem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-points")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    common.set_threads(args.threads)
    for name in args.dataset:
        run_dir = Path(args.out) / name
        config = load_config("points", overrides=[f"data.path={name}", f"train.duration_images={args.images}",
                                                    "eval.every_images=0", f"train.seed={args.seed}"])
        start = time.perf_counter()
        result = train(config, run_dir, progress=False)
        train_seconds = time.perf_counter() - start
        ours = evaluate_run(run_dir, n=args.n_samples, metrics=args.metrics, seed=args.seed, warn=lambda m: None)[0]

        ds = load_dataset(run_dir / "data")
        metrics = parse_metrics(args.metrics)
        start = time.perf_counter()
        samples, fit = kde_samples(ds.train_data, ds.train_labels, args.n_samples, ds.num_classes, args.seed)
        kde_seconds = time.perf_counter() - start
        extractor = extractor_for(ds, config.eval, metrics)
        theirs = evaluate_samples(samples, fit["labels"], ds, extractor, metrics=metrics, seed=args.seed, k=config.eval.k,
                                  classifier_epochs=config.eval.classifier_epochs)
        floors = {k: ours[f"{k}_floor"] for k in SHOWN if f"{k}_floor" in ours}
        common.emit({"name": "points", "dataset": name, "train_points": len(ds.train_data), "test_points": len(ds.test_data),
                     "n_samples": args.n_samples, "train_images": result.images, "train_seconds": round(train_seconds, 1),
                     "sampler": ours["sampler"], "steps": ours["steps"],
                     "difftrain": {k: ours[k] for k in SHOWN if k in ours},
                     "kde": {**{k: theirs[k] for k in SHOWN if k in theirs}, "bandwidths": fit["bandwidths"],
                             "fit_and_sample_seconds": round(kde_seconds, 1)},
                     "floor": floors})


if __name__ == "__main__":
    main()
