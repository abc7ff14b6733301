"""What does post-hoc EMA buy? (issue 22, part 3)

Trains a preset with train.posthoc_ema=[0.05, 0.10] (the mnist preset keeps them already), then evaluates its last
checkpoint with the run's own EMA (train.ema_halflife_images) and at each --lengths, reconstructed from the snapshots
(`difftrain eval RUN --ema-length ...`), each over --eval-seeds sampling seeds: FID and, on class-labelled data,
the agreement of the dataset's classifier with the asked labels. --guidance then scores the best length again at each
of those classifier-free guidance weights. A finished run in OUT/run is reused.

Prints one JSON line.

Run:
    python benchmarks/posthoc_ema.py --preset digits --out /tmp/posthoc-digits
    python benchmarks/posthoc_ema.py --preset mnist --data DIR --out /tmp/posthoc-mnist --images 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import common
from difftrain.config import load_config
from difftrain.evaluation.run_eval import evaluate_run
from difftrain.store.checkpoint import latest_checkpoint
from difftrain.training.trainer import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--data", default=None, help="prepared dataset (default: the preset's)")
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=None, help="training images (default: the preset's)")
    p.add_argument("--lengths", default="0.02,0.035,0.05,0.07,0.1,0.14,0.2")
    p.add_argument("--eval-seeds", type=int, default=3)
    p.add_argument("--n", type=int, default=None, help="samples per evaluation (default: eval.n_samples)")
    p.add_argument("--guidance", default="", help="guidance weights to score the best length at too, e.g. 1.5,2")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    common.set_threads(args.threads)
    out = Path(args.out)
    overrides = ["train.posthoc_ema=[0.05, 0.10]", "eval.every_images=0"]
    overrides += [f"data.path={args.data}"] if args.data else []
    overrides += [f"train.duration_images={args.images}"] if args.images else []
    config = load_config(args.preset, overrides=overrides)
    start = time.perf_counter()
    done = latest_checkpoint(out / "run", warn=lambda m: None)
    if done is None or done.images < config.train.duration_images:
        train(config, out / "run", resume=done is not None, progress=sys.stderr.isatty())
    trained = time.perf_counter() - start
    lengths = [float(v) for v in args.lengths.split(",")]
    scores: dict[str, list[float]] = {}
    agreement: dict[str, list[float]] = {}  # class-labelled data: the dataset's classifier names the asked class
    start = time.perf_counter()
    for seed in range(args.eval_seeds):
        own = evaluate_run(out / "run", n=args.n, metrics="fid", seed=seed, warn=lambda m: None)
        reconstructed = evaluate_run(out / "run", n=args.n, metrics="fid", seed=seed, ema_lengths=lengths,
                                     warn=lambda m: None)
        for r in [*own, *reconstructed]:
            key = f"{r['ema_length']:g}" if "ema_length" in r else "ema"
            scores.setdefault(key, []).append(r["fid"])
            if "label_agreement" in r:
                agreement.setdefault(key, []).append(r["label_agreement"])
            floor, agreement_floor = r["fid_floor"], r.get("label_agreement_floor")
    summary = {k: {"fid_mean": float(np.mean(v)), "fid_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "fid": v}
               | ({"label_agreement_mean": float(np.mean(agreement[k]))} if k in agreement else {})
               for k, v in scores.items()}
    best = min((k for k in summary if k != "ema"), key=lambda k: summary[k]["fid_mean"])
    guided: dict[str, dict[str, float]] = {}
    for weight in [float(v) for v in args.guidance.split(",") if v]:
        records = [r for seed in range(args.eval_seeds)
                   for r in evaluate_run(out / "run", n=args.n, metrics="fid", seed=seed, ema_lengths=[float(best)],
                                         guidance=weight, warn=lambda m: None)]
        guided[f"{weight:g}"] = {"fid_mean": float(np.mean([r["fid"] for r in records]))} | (
            {"label_agreement_mean": float(np.mean([r["label_agreement"] for r in records]))}
            if "label_agreement" in records[0] else {})
    common.emit({"benchmark": "posthoc_ema", "settings": vars(args), "train_seconds": trained,
                 "eval_seconds": time.perf_counter() - start, "ema_halflife_images": config.train.ema_halflife_images,
                 "images": latest_checkpoint(out / "run").images, "fid_floor": floor,
                 "label_agreement_floor": agreement_floor, "fid": summary,
                 "best_length": float(best), "gain_over_ema": summary["ema"]["fid_mean"] - summary[best]["fid_mean"],
                 "best_length_guided": guided})


if __name__ == "__main__":
    main()
