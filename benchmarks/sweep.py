"""`difftrain sweep` on digits: does the best configuration found beat the preset at the same per-run budget, and does
pruning reach that best with less compute? Prints one JSON line.

Runs, one after the other (one job at a time on 2 cores):
1. the same study (same sampler seed, same trials) twice, with median pruning and without;
2. the preset and each study's best config, trained again at the per-run budget for `--seeds` seeds, each scored by
   `difftrain eval` FID (with its real-data floor).

Compute is counted in training images (evaluation during training included in the wall time only).

    python benchmarks/sweep.py --out /tmp/bench-sweep --trials 12 --budget-images 20000 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def difftrain(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "difftrain", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"difftrain {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def study(out: Path, args, pruner: str) -> dict:
    space = out.parent / f"space-{pruner}.yaml"
    space.write_text(f"objective: fid\npruner: {pruner}\nsampler: tpe\n")  # the default parameters
    start = time.perf_counter()
    difftrain("sweep", "--preset", "digits", "--out", out, "--trials", args.trials, "--budget-images", args.budget_images,
              "--space", space, "--no-progress", f"eval.every_images={args.budget_images // 5}", f"train.threads={args.threads}")
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["trials"]
    # The study's best so far after each trial, and the training images spent to reach the final best.
    by_number = sorted(rows, key=lambda r: r["trial"])
    best_value, spent, images_to_best = float("inf"), 0, None
    for r in by_number:
        spent += r["images"]
        if r["state"] == "complete" and r["values"][0] < best_value:
            best_value, images_to_best = r["values"][0], spent
    return {"seconds": round(seconds), "compute_images": summary["compute_images"], "best_trial": summary["best"][0],
            "best_during_fid": best_value, "images_to_best": images_to_best,
            "states": {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")},
            "best_params": next(r["params"] for r in rows if r["trial"] == summary["best"][0])}


def final_fid(run: Path, config: list[str], args, seed: int) -> dict:
    difftrain("train", *config, "--out", run, "--no-progress", f"train.seed={seed}", f"train.threads={args.threads}",
              f"train.duration_images={args.budget_images}")
    record = json.loads(difftrain("eval", run, "--json", "--metrics", "fid", "--n", args.n_samples))
    record = record[0] if isinstance(record, list) else record
    return {"fid": record["fid"], "floor": record.get("fid_floor")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--budget-images", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"trials": args.trials, "budget_images": args.budget_images}
    for pruner in ("median", "none"):
        result[pruner] = study(args.out / f"study-{pruner}", args, pruner)
        print(f"{pruner}: {result[pruner]}", file=sys.stderr)
    arms = {"preset": ["--preset", "digits"],
            "best_pruned": ["--config", args.out / "study-median" / "best.yaml"],
            "best_unpruned": ["--config", args.out / "study-none" / "best.yaml"]}
    for arm, config in arms.items():
        scores = [final_fid(args.out / f"{arm}-seed{seed}", config, args, seed) for seed in range(args.seeds)]
        fids = [s["fid"] for s in scores]
        result[arm] = {"fid_mean": statistics.mean(fids), "fid_sd": statistics.stdev(fids) if len(fids) > 1 else 0.0,
                       "fids": fids, "floor": scores[0]["floor"]}
        print(f"{arm}: {result[arm]}", file=sys.stderr)
    result["pruning_compute_ratio"] = result["median"]["compute_images"] / result["none"]["compute_images"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
