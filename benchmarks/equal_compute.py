"""Networks against each other at equal training compute on one prepared dataset. Prints one JSON line per network.

For each `--arch`, a short probe measures its training speed (images/s, after a warm-up), then it trains for
`--seconds` worth of images at that speed, and `evaluate_run` scores it (FID, CAS, ... with their real-data floors).
Equal compute here is equal CPU (or GPU) time on this machine: run it alone.

    python benchmarks/equal_compute.py --data /tmp/rgb-data --preset mnist --seconds 720 --archs unet dit \
        --out /tmp/bench-runs/rgb --n-samples 1000 --threads 2
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import common
from difftrain.config import load_config
from difftrain.evaluation.run_eval import evaluate_run
from difftrain.models import build_network
from difftrain.store.run import open_run
from difftrain.training.trainer import train


def config(args, arch: str, images: int, seed: int = 0):
    overrides = [f"data.path={args.data}", f"model.arch={arch}", f"train.duration_images={images}", f"train.seed={seed}",
                 "train.grid_every_images=0", "train.checkpoint_every_images=0", "eval.every_images=0",
                 f"train.log_every_images={args.probe_images // 4}", *args.set]
    overrides += [f"train.threads={args.threads}"] if args.threads else []
    return load_config(args.preset, overrides=overrides)


def speed(args, arch: str) -> float:
    """Median images/s of the probe's log windows after the first (which holds the warm-up)."""
    probe = args.out / f"{arch}-probe"
    shutil.rmtree(probe, ignore_errors=True)
    result = train(config(args, arch, args.probe_images), probe, progress=False)
    rates = sorted(r["images_per_s"] for r in result.history[1:] if "images_per_s" in r) or [result.images_per_second]
    shutil.rmtree(probe, ignore_errors=True)
    return rates[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="A prepared dataset folder.")
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--archs", nargs="+", default=["unet", "dit"])
    parser.add_argument("--seconds", type=float, required=True, help="Training time each network gets, at its probed speed.")
    parser.add_argument("--probe-images", type=int, default=2560)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--metrics", default="fid,cas")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="Further config overrides for every network.")
    args = parser.parse_args()
    common.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for arch in args.archs:
        rate = speed(args, arch)
        images = int(rate * args.seconds)
        run = args.out / arch
        shutil.rmtree(run, ignore_errors=True)
        cfg = config(args, arch, images)
        trained = train(cfg, run, progress=False)
        record = evaluate_run(run, n=args.n_samples, metrics=args.metrics, warn=lambda m: None)[0]
        common.emit({"benchmark": "equal_compute", "arch": arch, "preset": args.preset, "data": args.data,
                     "probe_images_per_s": rate, "train_images": trained.images, "train_seconds": trained.seconds,
                     "parameters": sum(p.numel() for p in build_network(cfg.model, open_run(run).modality,
                                                                        open_run(run).num_classes).parameters()),
                     **{k: v for k, v in record.items() if k not in ("event", "warnings", "samples_file")}})


if __name__ == "__main__":
    main()
