"""Kill -9 at random points of `train` and `synth`, then run the same command again: does every output survive?

For each verb an uninterrupted reference runs first (its wall time sets the window). Then, at each point, the command
is started, killed with SIGKILL after a delay drawn uniformly from the time its output folder appeared to the end of the
reference, and run again to the end (`train --resume`, the same `synth` command). A point survives when

    train   every checkpoint loads (hashes match), the last one's weights and EMA equal the reference's bit for bit,
            metrics.jsonl holds the reference's records (timings aside), and no file is left that the reference lacks
    synth   the folder holds exactly the reference's files, byte for byte (manifest.json's `created` aside)

Prints one JSON line: per verb, points tried, survived, and what differed where one did not.

    python benchmarks/kill_points.py --out /tmp/kill --points 20 --threads 1

tests/test_kill_points.py runs a few points of each in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

TINY = ["model.unet.channels=[16,32]", "model.unet.attention=[false,true]", "model.unet.layers_per_block=1",
        "model.unet.norm_groups=8", "model.unet.attention_head_dim=8", "train.batch_size=16", "train.mixed_precision=no",
        "train.compile=off", "train.duration_steps=40", "train.log_every_images=16", "train.grid_every_images=320",
        "train.checkpoint_every_images=64", "train.keep_checkpoints=20", "train.ema_halflife_images=64",
        "optim.warmup_images=32", "sample.steps=4", "sample.batch_size=64", "eval.every_images=0"]
TIMINGS = {"images_per_s", "peak_memory_bytes", "seconds"}  # (metrics.jsonl fields that measure the machine, not the run)


def difftrain(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "difftrain", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish(process: subprocess.Popen, what: str) -> None:
    _, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed ({process.returncode}): {err[-2000:]}")


def timed_reference(args: list[str], folder: Path, env: dict[str, str]) -> tuple[float, float]:
    """(seconds until `folder` appeared, seconds to the end) of an uninterrupted run."""
    start, appeared = time.perf_counter(), None
    process = difftrain(*args, env=env)
    while process.poll() is None:
        if appeared is None and folder.exists():
            appeared = time.perf_counter() - start
        time.sleep(0.01)
    finish(process, " ".join(args))
    total = time.perf_counter() - start
    return appeared if appeared is not None else 0.0, total


def killed_then_finished(args: list[str], again: list[str], delay: float, env: dict[str, str]) -> tuple[bool, list[str]]:
    """Start `args`, SIGKILL it after `delay` s (unless it ended before), then run `again` to the end: (whether it was
    killed, the problem when running it again failed)."""
    process = difftrain(*args, env=env)
    try:
        process.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed = True
    try:
        finish(difftrain(*again, env=env), "the command run again")
    except RuntimeError as e:
        return killed, [" ".join(str(e).split())]
    return killed, []


def files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def check_train(reference: Path, run: Path) -> list[str]:
    from difftrain.store.checkpoint import CheckpointError, list_checkpoints, open_checkpoint

    problems = []
    for path in list_checkpoints(run):
        try:
            open_checkpoint(path)
        except CheckpointError as e:
            problems.append(f"checkpoint {path.name}: {e}")
    last, ref_last = list_checkpoints(run)[-1], list_checkpoints(reference)[-1]
    for name in ("model.safetensors", "ema.safetensors"):
        if (last / name).read_bytes() != (ref_last / name).read_bytes():
            problems.append(f"{last.name}/{name} differs from the uninterrupted run's")
    if records(run) != records(reference):
        problems.append("metrics.jsonl differs from the uninterrupted run's (timings aside)")
    kinds = {Path(p).parent.as_posix() if p.startswith("checkpoints/") else p.split("/")[0] for p in files(reference)}
    strays = [p for p in files(run) if (Path(p).parent.as_posix() if p.startswith("checkpoints/") else p.split("/")[0])
              not in kinds and not p.startswith("tensorboard/")]
    problems += [f"stray file {p}" for p in strays]
    return problems


def check_synth(reference: Path, out: Path) -> list[str]:
    ref, got = files(reference), files(out)
    problems = [f"missing {p}" for p in sorted(set(ref) - set(got))] + [f"stray {p}" for p in sorted(set(got) - set(ref))]
    for p in sorted(set(ref) & set(got) - {"manifest.json"}):
        if ref[p] != got[p]:
            problems.append(f"{p} differs")

    def manifest(folder: Path) -> dict:
        m = json.loads((folder / "manifest.json").read_text())
        m.pop("created")
        return m

    if manifest(reference) != manifest(out):
        problems.append("manifest.json differs (beyond `created`)")
    return problems


def measure(out: Path, points: int, seed: int, env: dict[str, str]) -> dict:
    """Kill points of train then synth on the built-in digits; the counts and every problem found."""
    rng = random.Random(seed)
    data = out / "digits"
    if not (data / "manifest.json").is_file():
        finish(difftrain("data", "prepare", "digits", "--out", str(data), env=env), "data prepare")
    results = {}

    train = lambda run: ["train", "--out", str(run), f"data.path={data}", *TINY]  # noqa: E731
    window = timed_reference(train(out / "train-ref"), out / "train-ref", env)
    outcome = {"points": points, "killed": 0, "survived": 0, "problems": [], "window_seconds": window}
    for i in range(points):
        run = out / f"train-{i}"
        delay = rng.uniform(*window)
        killed, problems = killed_then_finished(train(run), [*train(run), "--resume"], delay, env)
        outcome["killed"] += killed
        problems = problems or check_train(out / "train-ref", run)
        outcome["survived"] += not problems
        outcome["problems"] += [f"point {i} ({delay:.2f} s): {p}" for p in problems]
    results["train"] = outcome

    synth = lambda folder: ["synth", str(out / "train-ref"), "--out", str(folder), "--per-class", "6", "--batch-size", "8",  # noqa: E731
                            "--sampler", "euler", "--steps", "4", "--filter", "memorization,dedup", "--no-report"]
    window = timed_reference(synth(out / "synth-ref"), out / "synth-ref", env)
    outcome = {"points": points, "killed": 0, "survived": 0, "problems": [], "window_seconds": window}
    for i in range(points):
        folder = out / f"synth-{i}"
        delay = rng.uniform(*window)
        killed, problems = killed_then_finished(synth(folder), synth(folder), delay, env)
        outcome["killed"] += killed
        problems = problems or check_synth(out / "synth-ref", folder)
        outcome["survived"] += not problems
        outcome["problems"] += [f"point {i} ({delay:.2f} s): {p}" for p in problems]
    results["synth"] = outcome
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="an empty folder for the runs")
    p.add_argument("--points", type=int, default=20, help="kill points per verb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="threads of each difftrain process")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    results = measure(Path(args.out), args.points, args.seed, env)
    print(json.dumps({"benchmark": "kill_points", "settings": vars(args), "seconds": time.perf_counter() - start,
                      **results}))


if __name__ == "__main__":
    main()
