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
from difftrain.evaluation.run_eval import evaluate_run
from difftrain.store.run import open_run
from difftrain.training.trainer import train


def evaluate(run_dir: str, args: argparse.Namespace, steps: int, trained: dict) -> None:
    """Sample and score the run with one sampler setting and print its JSON line."""
    run = open_run(run_dir)
    # Train (or load) the feature classifier first so that sample_seconds does not include it.
    ds = load_dataset(run.dataset["path"])
    ds.modality.domain_classifier(ds, epochs=run.config.eval.classifier_epochs)
    start = time.perf_counter()
    record = evaluate_run(run_dir, steps=[steps], sampler=args.sampler, guidance=args.guidance, n=args.n_samples,
                          seed=args.seed, metrics=args.metrics, warn=lambda m: None)[0]
    eval_seconds = time.perf_counter() - start
    common.emit({"name": "difftrain", "run": str(run_dir), **trained, "train_images": trained.get("train_images", record["images"]),
                 "sample_steps": steps, "eval_seconds": eval_seconds,
                 **{k: v for k, v in record.items() if k not in ("event", "warnings", "samples_file")}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="prepared dataset folder (needed unless --eval-only)")
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--images", type=int, help="training images (rounded up to whole batches)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's train.batch_size)")
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--steps", type=int, nargs="+", default=[18], help="one or more step counts")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="run directory to create")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--eval-only", metavar="RUN", help="evaluate this existing run instead of training")
    parser.add_argument("--metrics", default="fid,kid,pr,cas,mem", help="comma list, as `difftrain eval --metrics`")
    args = parser.parse_args()
    common.set_threads(args.threads)

    if args.eval_only:
        run = open_run(args.eval_only)
        for steps in args.steps:
            evaluate(args.eval_only, args, steps, {"batch": run.config.train.batch_size, "overrides": None})
        return
    if not (args.data and args.images and args.out):
        parser.error("--data, --images and --out are needed to train (or pass --eval-only RUN)")
    overrides = [f"data.path={args.data}", f"train.duration_images={args.images}", f"train.seed={args.seed}",
                 "train.grid_every_images=0", "train.checkpoint_every_images=0", "eval.every_images=0"]
    overrides += [f"train.batch_size={args.batch}"] if args.batch else []
    overrides += [f"train.threads={args.threads}"] if args.threads else []
    overrides += args.override
    config = load_config(args.preset, overrides=overrides)
    result = train(config, args.out, progress=False)
    trained = {"preset": args.preset, "batch": config.train.batch_size, "overrides": overrides, "train_images": result.images,
               "train_seconds": result.seconds, "train_images_per_s": result.images_per_second, "final_loss": result.final_loss}
    for steps in args.steps:
        evaluate(args.out, args, steps, trained)


if __name__ == "__main__":
    main()
