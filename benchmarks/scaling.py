"""Data-parallel scaling: training images/s of `difftrain train` in 1 and in N processes on this machine.

Each configuration trains the same preset for the same images with periodic grids, checkpoints
and evaluation off; its speed is read from the run's metrics.jsonl, leaving out the first log
window (start-up, allocation). Configurations run one after another, never side by side.
  - "1 process": one process with every core (torch's intra-op threads);
  - "1 process, 1 thread": the per-core baseline;
  - "N processes": `difftrain train --processes N`, each process with cores/N threads (CPU) or one GPU.
Efficiency = images/s of N processes / (N x images/s of one process with the same threads each).

Run (the full benchmark):
    python benchmarks/scaling.py --data data/digits --preset digits --images 15360 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common


def run_speed(data: str, preset: str, images: int, processes: int, threads: int | None, extra: list[str]) -> float:
    """Images/s of one `difftrain train` run (after its first log window)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        overrides = [f"train.duration_images={images}", "train.grid_every_images=0", "train.checkpoint_every_images=0",
                     "eval.every_images=0", f"train.log_every_images={images // 6}", *extra]
        command = [sys.executable, "-m", "difftrain", "train", "--preset", preset, "--data", data, "--out", str(out),
                   "--no-progress", "--processes", str(processes), *overrides]
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
            command.append(f"train.threads={threads}")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"training failed:\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        windows = [r for r in records if "images_per_s" in r][1:]
        seconds = sum((b["images"] - a["images"]) / b["images_per_s"] for a, b in zip(windows, windows[1:]))
        return (windows[-1]["images"] - windows[0]["images"]) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--images", type=int, default=15_360, help="training images per run")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="difftrain config override")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    gpus = common.gpu_count()
    # On CPU: one process with every core, and the per-core baseline; on GPUs one process is both.
    all_threads = None if gpus else cores
    per_process_threads = None if gpus else max(1, cores // args.processes)
    one_all = run_speed(args.data, args.preset, args.images, 1, all_threads, args.override)
    one_same = one_all if per_process_threads == all_threads else \
        run_speed(args.data, args.preset, args.images, 1, per_process_threads, args.override)
    many = run_speed(args.data, args.preset, args.images, args.processes, None, args.override)
    common.emit({"preset": args.preset, "images": args.images, "processes": args.processes, "gpus": gpus,
                 "one_process_images_per_s": one_all, "one_process_same_threads_images_per_s": one_same,
                 "threads_per_process": per_process_threads, f"{args.processes}_processes_images_per_s": many,
                 "speedup_vs_one_process": many / one_all,
                 "efficiency": many / (args.processes * one_same), "overrides": args.override})


if __name__ == "__main__":
    main()
