"""Sample quality of difftrain for a training budget, the counterpart of reference_loop.py.

Trains difftrain through the library (load_config + train, with intermediate grids and
checkpoints off) on the same data and budget as the reference, then samples and scores the
run with `evaluate_run` (every metric of `difftrain eval`). Prints one JSON line per step count.
`--eval-only RUN` re-evaluates an existing run without training; several `--steps` values
give one JSON line each. eval_seconds covers sampling, writing and scoring the samples
(every metric asked for), with the feature classifier already cached.

Run (the full benchmark):
    python benchmarks/quality.py --data data/digits --preset digits --images 55000 --n-samples 1000 \
        --sampler heun --steps 18 --guidance 1.0 --out runs/bench-difftrain --threads 2
    python benchmarks/quality.py --eval-only runs/bench-difftrain --n-samples 1000 --sampler heun --steps 9 18 32
"""

from __future__ import annotations

import argparse
import time

import common
from difftrain.config import load_config
from difftrain.data import load_dataset
from difftrain.evaluation.classifier import load_or_train_classifier
from difftrain.evaluation.run_eval import evaluate_run
from difftrain.run import open_run
from difftrain.training.trainer import train


def evaluate(run_dir: str, args: argparse.Namespace, steps: int, trained: dict) -> None:
    """Sample and score the run with one sampler setting and print its JSON line."""
    run = open_run(run_dir)
    # Train (or load) the feature classifier first so that sample_seconds does not include it.
    load_or_train_classifier(load_dataset(run.dataset["path"]), epochs=run.config.eval.classifier_epochs)
    start = time.perf_counter()
    record = evaluate_run(run_dir, steps=[steps], sampler=args.sampler, guidance=args.guidance, n=args.n_samples,
                          seed=args.seed, metrics=args.metrics, warn=lambda m: None)[0]
    eval_seconds = time.perf_counter() - start
    common.emit({"name": "difftrain", "run": str(run_dir), **trained, "train_images": trained.get("train_images", record["images"]),
                 "schedule": args.schedule, "sample_steps": steps, "eval_seconds": eval_seconds,
                 **{k: v for k, v in record.items() if k not in ("event", "warnings", "samples_file")}})


