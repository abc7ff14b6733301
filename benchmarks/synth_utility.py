"""Does synthetic data help a classifier that has only 10% of MNIST? (issue 7, item 3)

    1. prepare a stratified --fraction of the MNIST training split (data/prepare.py `limit`) into OUT/data/train,
       and the whole MNIST test split into OUT/data/test
    2. train a diffusion model on the subset: the "mnist" preset with train.duration_images = --train-images,
       into OUT/run (an interrupted run resumes; a finished one is reused)
    3. `difftrain synth` --per-class images of every digit from it into OUT/synth (--filter, --sampler, --steps;
       an interrupted one continues)
    4. write_report (synth/report.py) into OUT/report: the judge (a ResNet trained to convergence, early stopping on
       real validation images held back from the subset) trained on real (the subset), synthetic, and real+synthetic
       images, tested on the whole real test split, with the paired test over seeds and the accuracy against the
       synthetic set's size; and the privacy numbers (DCR against the subset, memorization)

--unlabelled-all trains the generator on the labelled fraction and, under the no-label condition (data.unlabelled),
on every image of the training split: labels for the few, images for all.

Prints one JSON line. --dataset digits swaps MNIST for the built-in digits, split 80/20: the fraction is taken of the
training 80% and every arm is tested on the whole held-out 20% (360 images). --optimize-for utility lets `synth` choose
the guidance, checkpoint, confidence filter and count (at most --per-class) by its search on held-back training images
(synth/search.py) before it writes the set the report scores.

--utility-only writes the report's three arms alone (evaluation/utility.py; no privacy, no size curve) into
OUT/report-utility/utility.json. --real-share S (implies it) has the real+synthetic arm draw real images a share S of
the time, whatever the counts, into OUT/report-real-share-S/utility.json. Both train with the report's seeds,
validation splits and initial weights, so their arms pair with the report's.

Run:
    python benchmarks/synth_utility.py --mnist ../shared/data/mnist --out /tmp/synth-utility \
        --fraction 0.1 --train-images 100000 --per-class 600 --sampler dpmpp_2m --steps 10
Smoke test:
    python benchmarks/synth_utility.py --dataset digits --out /tmp/synth-smoke --fraction 0.5 \
        --train-images 512 --per-class 5 --utility-steps 20 --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

import common
from difftrain import atomic
from difftrain.config import load_config
from difftrain.data import PreparedDataset, load_dataset, prepare_dataset
from difftrain.data.sources import open_source
from difftrain.errors import UserError
from difftrain.evaluation.utility import classification_utility
from difftrain.store.run import open_run
from difftrain.synth.generate import synth_spec, synthesize as synth
from difftrain.synth.report import report_markdown, write_report
from difftrain.training.trainer import train


def prepared(source: str | Path, out: Path, **options) -> PreparedDataset:
    """`source` prepared into `out`, or the dataset already there."""
    if (out / "manifest.json").is_file():
        return load_dataset(out)
    return prepare_dataset(source, out, progress=False, **options)


def real_data(args: argparse.Namespace, out: Path) -> PreparedDataset:
    """A stratified fraction of the training split, with the whole test split as its held-out images."""
    if args.dataset == "digits":
        whole = prepared("digits", out / "all", test_fraction=0.2)
        folder = out / "all-train-png"  # the training 80% as an image folder, so the subset comes from it alone
        if not folder.is_dir():
            from PIL import Image

            partial = folder.with_name(folder.name + ".partial")
            for i, (image, label) in enumerate(zip(whole.train_data, whole.train_labels)):
                (partial / whole.class_names[label]).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image[..., 0]).save(partial / whole.class_names[label] / f"{i:04d}.png")
            partial.rename(folder)
        subset = prepared(folder, out / "train", limit=round(args.fraction * len(whole.train_data)), test_fraction=0.0)
        if args.unlabelled_all:
            prepared(folder, out / "all-train", test_fraction=0.0)
        return dataclasses.replace(subset, test_data=whole.test_data, test_labels=whole.test_labels)
    mnist = Path(args.mnist or "")
    files = {split: next(iter(sorted(mnist.glob(f"{prefix}-images-idx3-ubyte*"))), None)
             for split, prefix in (("train", "train"), ("test", "t10k"))}
    if not all(files.values()):
        raise UserError(f"--mnist {mnist}: expected train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz] there")
    # Each IDX file prepared on its own is all "train" split (test_fraction 0): the subset trains, the test file tests.
    n_train = len(open_source(files["train"]).train)
    subset = prepared(files["train"], out / "train", limit=round(args.fraction * n_train), test_fraction=0.0)
    test = prepared(files["test"], out / "test", test_fraction=0.0)
    if args.unlabelled_all:
        prepared(files["train"], out / "all-train", test_fraction=0.0)
    return dataclasses.replace(subset, test_data=test.train_data, test_labels=test.train_labels)


def synthesize(run_dir: Path, out: Path, per_class: int, device: str, seed: int, filters: str, sampler: str | None,
               steps: int | None, guidance: float | None, optimize_for: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """`difftrain synth` of the run into `out` (an interrupted one continues): its images, labels and manifest."""
    run = open_run(run_dir)
    if not run.num_classes:
        raise UserError(f"{run_dir} is an unconditional model: the utility report needs labelled samples")
    spec = synth_spec(run, seed, sampler=sampler, steps=steps, guidance=guidance)
    # The report is written below, against the whole MNIST test split (the run's data has none).
    manifest = synth(run_dir, out, per_class=per_class, spec=spec, filters=filters, device=device, report=False,
                     optimize_for=optimize_for, warn=lambda m: print(f"warning: {m}", file=sys.stderr),
                     progress=lambda kept, asked: print(f"synth: {kept:,}/{asked:,} kept", file=sys.stderr, flush=True),
                     report_progress=lambda stage: print(stage, file=sys.stderr, flush=True))
    images = run.modality.synth_read(out, manifest["files"])
    labels = np.array([f["label"] for f in manifest["files"]], dtype=np.int64)
    return images, labels, manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", help="folder of the MNIST IDX files")
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist", help="digits: a quick smoke test")
    p.add_argument("--out", required=True, help="folder for the data, run, samples and report (finished steps are reused)")
    p.add_argument("--fraction", type=float, default=0.1, help="share of the training split the classifier and model get")
    p.add_argument("--train-images", type=int, default=200_000, help="diffusion training length in images")
    p.add_argument("--per-class", type=int, default=600, help="synthetic images per class")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--filter", default="memorization,dedup", help="difftrain synth's --filter")
    p.add_argument("--optimize-for", default=None, choices=["utility"], help="difftrain synth's --optimize-for")
    p.add_argument("--unlabelled-all", action="store_true",
                   help="train the generator with every image of the training split as data.unlabelled (their labels unused)")
    p.add_argument("--sampler", default=None, help="sampler (default: the run's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: synth's: the run's, or 2 for a run with data.unlabelled)")
    p.add_argument("--utility-steps", type=int, default=None,
                   help="the most steps of any judge training (default: the judge's cap; early stopping ends it first)")
    p.add_argument("--repeats", type=int, default=3, help="classifier seeds per arm")
    p.add_argument("--utility-only", action="store_true",
                   help="the three arms alone (no privacy, no size curve), in OUT/report-utility")
    p.add_argument("--real-share", type=float, default=None,
                   help="the mixed arm's share of real draws (default: by count); implies --utility-only, in "
                        "OUT/report-real-share-S")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not 0 < args.fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.real_share is not None and not 0 < args.real_share < 1:
        raise UserError(f"--real-share must be between 0 and 1 (exclusive), got {args.real_share}")
    if args.optimize_for is not None and args.guidance is not None:  # as `difftrain synth`: the search would replace it
        raise UserError("--optimize-for utility chooses the guidance: leave --guidance out")
    common.set_threads(args.threads)
    out = Path(args.out)
    seconds = {}

    start = time.perf_counter()
    real = real_data(args, out / "data")
    seconds["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    settings = [f"data.path={out / 'data' / 'train'}", f"train.duration_images={args.train_images}", "eval.every_images=0",
                f"train.device={args.device}", f"train.seed={args.seed}"]
    if args.unlabelled_all:  # labels for the few, images for all
        settings.append(f"data.unlabelled={out / 'data' / 'all-train'}")
    config = load_config(args.dataset, overrides=settings)
    if not any(int(c.name.removeprefix("ckpt-")) >= args.train_images for c in (out / "run" / "checkpoints").glob("ckpt-*")):
        train(config, out / "run", resume=True, progress=sys.stderr.isatty())  # an interrupted run continues
    seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    device = str(common.pick_device(args.device))
    images, labels, manifest = synthesize(out / "run", out / "synth", args.per_class, device, args.seed, args.filter,
                                          args.sampler, args.steps, args.guidance, args.optimize_for)
    seconds["synthesize"] = time.perf_counter() - start

    start = time.perf_counter()
    say = lambda stage: print(f"report: {stage}", file=sys.stderr, flush=True)  # noqa: E731
    if args.real_share is None and not args.utility_only:
        report = out / "report" / "report.json"
        summary = write_report(report.parent, real, images, labels, seed=args.seed, steps=args.utility_steps,
                               repeats=args.repeats, progress=say)
        atomic.write_text(report.parent / "report.md", report_markdown(summary))
        u, priv = summary["utility"], summary["privacy"]
    else:  # the report's three arms (same seeds), the mixed arm's draws weighted when asked
        name = "report-utility" if args.real_share is None else f"report-real-share-{args.real_share:g}"
        report = out / name / "utility.json"
        u = classification_utility((real.train_data, real.train_labels), (real.test_data, real.test_labels),
                                   (images, labels), real.num_classes, modality=real.modality,
                                   seeds=tuple(range(args.seed, args.seed + args.repeats)), steps=args.utility_steps,
                                   fractions=(1.0,), real_share=args.real_share, progress=say)
        atomic.write_json(report, u)
        priv = None
    seconds["report"] = time.perf_counter() - start

    common.emit({
        "benchmark": "synth_utility", "settings": vars(args), "seconds": seconds,
        "real_train_images": len(real.train_data), "real_test_images": len(real.test_data), "synthetic_images": len(images),
        "synth_totals": manifest["totals"],
        "synth_settings": {key: manifest[key] for key in ("guidance", "checkpoint", "per_class", "filters")},
        "search": manifest["search"] and {key: manifest["search"][key] for key in ("real_only", "trials", "chosen", "helps")},
        "accuracy": {arm: {k: r[k] for k in ("accuracy_mean", "accuracy_std")} for arm, r in u["arms"].items()},
        "size_curve": u["size_curve"], "classifier_steps": u["steps"],
        "judge_real_score": u["judge_real_score"], "real_plus_synthetic_gain": u["real_plus_synthetic_gain"],
        "gain_ci95": u["gain_ci95"], "gain_p_value": u["gain_p_value"], "synthetic_helps": u["synthetic_helps"],
        "judge_training": {arm: r["training"] for arm, r in u["arms"].items()},
        "real_share": u["real_share"],
        "privacy": priv and {k: priv[k] for k in ("synthetic_dcr", "held_out_dcr", "fraction_below_held_out_p5",
                                                  "exact_copies", "memorized_fraction")},
        "report": str(report.resolve()),
    })


if __name__ == "__main__":
    main()
