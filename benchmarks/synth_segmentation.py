"""Segmenters trained on synthetic MNIST image + mask pairs vs on real pairs, tested on real pairs (issue 7, item 5).

    1. prepare --source (images/ + masks/ [+ labels.csv], e.g. MNIST digits with their stroke labelled by the
       digit, from benchmarks/mnist_masks.py) into OUT/data
    2. train one joint image + mask diffusion model on it: `difftrain train --preset mnist` for --train-images
       training images, into OUT/run
    3. synthesize --pairs pairs from it with `difftrain synth` (library call) into OUT/synth, balanced over the
       digits, with --filter, --sampler, --steps and --guidance (default: synth's)
    4. segmentation_utility: the same small U-Net trained to convergence (early stopping on real validation pairs
       held back from the real training pairs) on real, synthetic and real+synthetic pairs, mIoU on the real test
       pairs, mean and std over --seeds, and the paired test of the gain

Finished steps are reused when rerun with the same --out. Prints one JSON line (also written to
OUT/segmentation_utility.json).

Run:
    python benchmarks/mnist_masks.py ... --out /tmp/mnist-masks
    python benchmarks/synth_segmentation.py --source /tmp/mnist-masks --out /tmp/synth-seg \
        --limit 6000 --train-images 200000 --pairs 6000 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import common
from continual import difftrain
from difftrain import atomic
from difftrain.data import load_dataset, prepare_dataset
from difftrain.errors import UserError
from difftrain.modalities.segmenter import segmentation_utility
from difftrain.store.run import open_run
from difftrain.synth.generate import synth_spec, synthesize as synth


def real_pairs(data: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """(train pairs, test pairs, mask class names) of a prepared segmentation dataset."""
    ds = load_dataset(data)
    if ds.modality.kind != "segmentation":
        raise UserError(f"{data} is not a segmentation dataset: --source must hold images/ and masks/ with matching names")
    m = ds.modality
    return m.split(ds.train_data), m.split(ds.test_data), m.mask_classes


def synthesize(run_dir: Path, out: Path, pairs: int, device: str, sampler: str | None, steps: int | None,
               guidance: float | None, filters: str) -> tuple[np.ndarray, np.ndarray]:
    """`pairs` synthetic (images, masks) from the run by `difftrain synth` (balanced over the digits when conditional)."""
    run = open_run(run_dir)
    spec = synth_spec(run, 0, sampler=sampler, steps=steps, guidance=guidance)
    # --per-class rounds up: every digit equally often.
    amount = {"per_class": -(-pairs // run.num_classes)} if run.num_classes else {"n": pairs}
    manifest = synth(run_dir, out / "synth", spec=spec, filters=filters, device=device, report=False,
                     warn=lambda m: print(f"warning: {m}", file=sys.stderr), **amount)
    return run.modality.split(run.modality.synth_read(out / "synth", manifest["files"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="segmentation folder: images/ + masks/ (+ labels.csv)")
    p.add_argument("--out", required=True, help="work folder: data/, run/, synth/ and the result (finished steps are reused)")
    p.add_argument("--limit", type=int, default=None, help="prepare at most this many pairs of --source (stratified)")
    p.add_argument("--train-images", type=int, default=200_000, help="training images of the diffusion model")
    p.add_argument("--pairs", type=int, default=6000, help="synthetic pairs to make")
    p.add_argument("--seeds", default="0,1,2", help="segmenter seeds, comma-separated")
    p.add_argument("--segmenter-steps", type=int, default=None,
                   help="the most optimizer steps of each segmenter (default: the recipe's cap; early stopping ends it first)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--sampler", default=None, help="sampler of `difftrain synth` (default: the run's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight of `difftrain synth` (default: synth's)")
    p.add_argument("--filter", default="memorization,dedup", help="`difftrain synth --filter`")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    common.set_threads(args.threads)
    device = str(common.pick_device(args.device))
    out = Path(args.out)
    seconds = {}

    data, run = out / "data", out / "run"
    start = time.perf_counter()
    if not (data / "manifest.json").is_file():
        prepare_dataset(args.source, data, limit=args.limit)
    seconds["prepare"] = time.perf_counter() - start
    if not (run / "README.md").is_file():
        seconds["train"] = difftrain("train", "--preset", "mnist", "--data", data, "--out", run, "--no-progress",
                                     f"train.duration_images={args.train_images}", f"train.device={device}",
                                     f"train.threads={args.threads}", "eval.every_images=0")
    start = time.perf_counter()
    synth = synthesize(run, out, args.pairs, device, args.sampler, args.steps, args.guidance, args.filter)
    seconds["synthesize"] = time.perf_counter() - start

    train_pairs, test_pairs, mask_classes = real_pairs(data)
    start = time.perf_counter()
    utility = segmentation_utility(train_pairs, test_pairs, synth, len(mask_classes),
                                   seeds=tuple(int(s) for s in args.seeds.split(",")), steps=args.segmenter_steps,
                                   class_names=mask_classes, device=device,
                                   progress=lambda arm, seed: print(f"segmenter: {arm}, seed {seed}", file=sys.stderr))
    seconds["segmenters"] = time.perf_counter() - start
    record = {
        "benchmark": "synth_segmentation", "settings": vars(args), "device": device, "seconds": seconds,
        "miou": {arm: {"mean": r["miou_mean"], "std": r["miou_std"]} for arm, r in utility["arms"].items()},
        "synthetic_helps": utility["synthetic_helps"], "utility": utility,
    }
    atomic.write_json(out / "segmentation_utility.json", record)
    common.emit(record)


if __name__ == "__main__":
    main()
