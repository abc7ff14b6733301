"""Metrics against sampling steps for every sampler, on one trained run.

For each sampler and step count, samples the run's latest checkpoint and scores the samples
with `evaluate_run` (the records also land in the run's metrics.jsonl and metrics-vs-steps.png).
Prints one JSON line per (sampler, steps), then one summary line per sampler: for each metric,
the fewest steps whose value is within 10% of the sampler's best value over the sweep
(for FID and KID: of the best value's distance from the floor, so a metric near its floor
is not judged on noise).

Run:
    python benchmarks/steps_sweep.py RUN --steps 5 10 20 50 100 --n-samples 500
"""

from __future__ import annotations

import argparse
import time

import common
from difftrain.evaluation.run_eval import evaluate_run
from difftrain.evaluation.suite import LOWER_IS_BETTER

SAMPLERS = ["heun", "euler", "dpmpp_2m", "ddim", "ddpm"]
SCORED = ["fid", "kid", "precision", "recall", "density", "coverage"]


def steps_within(records: list[dict], key: str, tolerance: float = 0.10) -> int | None:
    """Fewest steps whose `key` is within `tolerance` of the best over the sweep (measured above the floor)."""
    values = [(r["steps"], r[key], r.get(f"{key}_floor", 0.0)) for r in records if isinstance(r.get(key), float)]
    if not values:
        return None
    if key in LOWER_IS_BETTER:
        best = min(v - floor for _, v, floor in values)
        ok = [s for s, v, floor in values if v - floor <= best + tolerance * abs(best)]
    else:
        best = max(v for _, v, _ in values)
        ok = [s for s, v, _ in values if v >= best - tolerance * abs(best)]
    return min(ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--samplers", nargs="+", default=SAMPLERS)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--n-samples", type=int, default=500)
    parser.add_argument("--metrics", default="fid,kid,pr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    common.set_threads(args.threads)
    for sampler in args.samplers:
        start = time.perf_counter()
        records = evaluate_run(args.run, steps=args.steps, sampler=sampler, n=args.n_samples, metrics=args.metrics,
                               seed=args.seed, warn=lambda m: None)
        for r in records:
            common.emit({"run": args.run, **{k: r.get(k) for k in ("sampler", "steps", "network_evaluations", "n_samples",
                                                                     *SCORED, "fid_floor", "kid_floor")}})
        common.emit({"run": args.run, "sampler": sampler, "summary": "fewest steps within 10% of the sweep's best",
                     **{key: steps_within(records, key) for key in SCORED}, "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    main()
