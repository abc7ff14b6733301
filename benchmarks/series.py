"""Time series: difftrain's `timeseries` preset on Sines, Stocks and ETTh1, scored by the TimeGAN / Diffusion-TS protocol,
beside a VAR generator fitted to the same training windows and scored alike. Prints one JSON line per dataset.

Two protocols, both on windows min-max scaled by the training split to [0, 1]:
- "paper": as Diffusion-TS's Table 1, samples against the real training windows (their model trains on every window);
  discriminative, predictive (train on samples, test on real), context-FID and correlational scores, each repeated
  over --repeats seeds (mean and std).
- "held_out": `difftrain eval`'s own, against the held-out tail (the last 10% in time), each beside its real-data floor;
  with forecasting (the last quarter of each held-out window) and imputation (half hidden) against VAR, seasonal-naive
  and interpolation baselines.

Run (one dataset at a time on 2 cores):
    python benchmarks/series.py --dataset sines stocks --images 300000 --out runs/bench-series --threads 2
ETTh1's forecasting task (horizon 24 after 24 steps of context: 48-step windows, forecasting scores only):
    python benchmarks/series.py --dataset etth1 --window 48 --horizon 24 --metrics forecast --out runs/bench-series-f
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

import common
from difftrain.config import load_config
from difftrain.data import load_dataset
from difftrain.evaluation.forecast_baselines import fit_var
from difftrain.evaluation.run_eval import evaluate_run, sample_run
from difftrain.evaluation.series_metrics import (context_fid, correlational_score, discriminative_score, fit_series_encoder,
                                                 predictive_score, repeated)
from difftrain.modalities import prepare
from difftrain.training.trainer import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"
SOURCES = {"sines": ("sines", {}), "stocks": (SHARED / "stock_data.csv", {}),
           "etth1": (SHARED / "ETTh1.csv", {"time_column": "date"})}
PAPER = {"sines": {"discriminative": 0.006, "predictive": 0.093, "context_fid": 0.006, "correlational": 0.015},
         "stocks": {"discriminative": 0.067, "predictive": 0.036, "context_fid": 0.147, "correlational": 0.004},
         "etth1": {"discriminative": 0.061, "predictive": 0.119, "context_fid": 0.116, "correlational": 0.049}}
HELD_OUT = ("discriminative", "predictive", "correlational", "fid", "forecast_crps", "forecast_crps_var", "forecast_crps_naive",
            "forecast_mae", "forecast_mae_var", "forecast_mae_naive", "impute_crps", "impute_mae", "impute_mae_interp")


def var_windows(train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n windows from a VAR fitted on the training windows laid end to end: each starts from the first p steps of a
    random training window and simulates the rest."""
    length = train.shape[1]
    model = fit_var(train[::length].reshape(-1, train.shape[-1]), maxlags=min(10, length // 2))
    rng = np.random.default_rng(seed)
    starts = train[rng.integers(0, len(train), n), :model.order]
    rest = model.simulate(starts, length - model.order, n_paths=1, seed=seed)[0]
    return np.concatenate([starts, rest], axis=1).astype(np.float32)


def paper_scores(real: np.ndarray, fake: np.ndarray, encoder, repeats: int) -> dict:
    """The four scores against the real training windows, mean and std over `repeats` seeds."""
    seeds = tuple(range(repeats))
    out = {}
    for name, metric in {"discriminative": lambda s: discriminative_score(real, fake, seed=s),
                         "predictive": lambda s: predictive_score(fake, real, seed=s),
                         "context_fid": lambda s: context_fid(encoder, real, fake[np.random.default_rng(s).permutation(len(fake))]),
                         "correlational": lambda s: correlational_score(real, fake, sample=min(len(real), len(fake)), seed=s)}.items():
        mean, std = repeated(metric, seeds)
        out[name] = {"mean": round(mean, 4), "std": round(std, 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", nargs="+", default=["sines", "stocks"], choices=list(SOURCES))
    parser.add_argument("--images", type=int, default=300_000, help="Training windows seen by the diffusion model.")
    parser.add_argument("--window", type=int, default=24)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default=None, help="model.arch (default: the preset's).")
    parser.add_argument("--horizon", type=int, default=None, help="eval.horizon: forecast steps (default: the preset's).")
    parser.add_argument("--metrics", default=None, help="eval.metrics of the held-out protocol (default: the preset's); "
                                                        "without dist and fid the paper protocol is skipped.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-series")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    common.set_threads(args.threads)
    for name in args.dataset:
        source, options = SOURCES[name]
        if name != "sines" and not Path(source).is_file():
            common.emit({"name": "series", "dataset": name, "skipped": f"{source} is not here (see ../shared/data/README.md)"})
            continue
        out = Path(args.out) / name
        data = out / "data"
        prepare(source, data, kind="timeseries", window=args.window, overwrite=data.exists(), **options)
        overrides = [f"data.path={data}", f"train.duration_images={args.images}", f"train.seed={args.seed}"]
        overrides += [f"model.arch={args.arch}"] if args.arch else []
        overrides += [f"eval.horizon={args.horizon}"] if args.horizon else []
        config = load_config("timeseries", overrides=overrides)
        shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run each time
        start = time.perf_counter()
        result = train(config, out / "run", progress=False)
        train_seconds = time.perf_counter() - start
        held_out = evaluate_run(out / "run", n=args.n_samples, seed=args.seed, metrics=args.metrics, warn=lambda m: None)[0]
        record = {"name": "series", "dataset": name, "window": args.window, "train_images": result.images,
                  "train_seconds": round(train_seconds, 1), "arch": config.model.arch,
                  "held_out_protocol": {k: held_out[k] for k in HELD_OUT if k in held_out}
                                       | {f"{k}_floor": held_out[f"{k}_floor"] for k in HELD_OUT if f"{k}_floor" in held_out}}
        if args.metrics and not {"dist", "fid"} & set(args.metrics.split(",")):
            common.emit(record | {"horizon": config.eval.horizon, "task_windows": config.eval.task_windows,
                                  "task_paths": config.eval.task_paths})
            continue
        ds = load_dataset(data)
        unit = ds.modality.unit
        real = unit(ds.train_data)
        samples = sample_run(out / "run", args.n_samples, held_out_spec(out / "run", args.seed), out / "samples.npz")["images"]
        encoder = fit_series_encoder(real, seed=args.seed)
        start = time.perf_counter()
        var = var_windows(ds.train_data, args.n_samples, args.seed)
        var_seconds = time.perf_counter() - start
        common.emit({"name": "series", "dataset": name, "window": args.window, "channels": ds.modality.shape[1],
                     "train_windows": len(ds.train_data), "test_windows": len(ds.test_data), "arch": config.model.arch,
                     "train_images": result.images, "train_seconds": round(train_seconds, 1), "n_samples": args.n_samples,
                     "paper_protocol": {"difftrain": paper_scores(real, unit(samples), encoder, args.repeats),
                                        "var": {**paper_scores(real, unit(var), encoder, args.repeats),
                                                "fit_and_sample_seconds": round(var_seconds, 1)},
                                        "diffusion_ts_table1": PAPER[name]},
                     "held_out_protocol": {k: held_out[k] for k in HELD_OUT if k in held_out}
                                          | {f"{k}_floor": held_out[f"{k}_floor"] for k in HELD_OUT if f"{k}_floor" in held_out}})


def held_out_spec(run_dir: Path, seed: int):
    from difftrain.store.run import open_run

    return open_run(run_dir).sampling_spec(seed)


if __name__ == "__main__":
    main()
