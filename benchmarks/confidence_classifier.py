"""Which classifier can the confidence filter trust when labels are few? (issue 22)

Prepares a stratified --fraction of the training split (as benchmarks/synth_utility.py does), then trains the two
classifiers synth has had for `--filter confidence`: the evaluation's feature classifier (20 epochs on half the labelled
images; the filter's classifier until 2026-12-07) and the confidence judge (modalities/image_confidence.py: the ResNet
judge on every labelled image, to convergence, no label smoothing; the filter's classifier since). Each is scored on the
whole test split: accuracy, and the share of real test images whose own class it gives a probability of at least
--threshold, which is the share of perfect samples the filter would keep.

Prints one JSON line.

Run:
    python benchmarks/confidence_classifier.py --mnist ../shared/data/mnist --fraction 0.01 --out /tmp/confidence-1pct
    python benchmarks/confidence_classifier.py --dataset digits --fraction 0.1 --out /tmp/confidence-digits
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import common
from difftrain.data import load_dataset
from synth_utility import real_data


def score(classifier, images: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    p = classifier.probabilities(images)
    own = p[np.arange(len(labels)), labels]
    return {"test_accuracy": float((p.argmax(1) == labels).mean()), "kept_at_threshold": float((own >= threshold).mean()),
            "median_own_probability": float(np.median(own)), "largest_probability": float(p.max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", help="folder of the MNIST IDX files")
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--out", required=True, help="folder for the prepared data (and the classifiers cached beside it)")
    p.add_argument("--fraction", type=float, default=0.01, help="share of the training split that is labelled")
    p.add_argument("--threshold", type=float, default=0.9, help="the confidence filter's T")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    common.set_threads(args.threads)
    args.unlabelled_all = False
    real = real_data(args, Path(args.out))
    on_disk = load_dataset(real.path)  # what synth reads: the labelled subset
    record = {"benchmark": "confidence_classifier", "dataset": args.dataset, "fraction": args.fraction,
              "labelled_images": len(on_disk.train_data), "test_images": len(real.test_data), "threshold": args.threshold}
    for name, build in (("feature_classifier", on_disk.modality.domain_classifier),
                        ("confidence_judge", on_disk.modality.confidence_classifier)):
        start = time.perf_counter()
        classifier, meta = build(on_disk, epochs=20)
        record[name] = {"seconds": round(time.perf_counter() - start, 1), "name": meta["name"],
                        **{k: meta[k] for k in ("steps", "best_step", "stopped", "training_items") if k in meta},
                        **score(classifier, real.test_data, real.test_labels, args.threshold)}
    common.emit(record)


if __name__ == "__main__":
    main()
