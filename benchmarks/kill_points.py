"""Kill -9 at random points of `train`, `synth`, `data prepare`, `sample`, `eval` and `sweep`, then run the same command again:
does every output survive?

For each verb an uninterrupted reference runs first (its wall time sets the window). Then, at each point, the command
is started, killed with SIGKILL after a delay drawn uniformly over the first 80% of the reference's wall time, and run
again to the end (`train --resume`; the same command for the others). A point survives when

    train   every checkpoint loads (hashes match), the last one's weights and EMA equal the reference's bit for bit,
            metrics.jsonl holds the reference's records (timings aside), and no file is left that the reference lacks
    synth   the folder holds exactly the reference's files, byte for byte (manifest.json's `created` aside)
    data prepare  the same arrays and manifest (`created` aside), nothing half-written left beside the folder
    sample  the same samples file, byte for byte, nothing half-written beside it
    eval    the run's evaluation records (timings aside) and eval/ files, as many as an uninterrupted evaluation's
    sweep   (3 trials; run again: `sweep --resume`, or the same command where the kill came before sweep.json) every
            trial complete, as many as the reference's; a trial drawn with a reference trial's settings ends on its
            objective and EMA weights exactly; checkpoints load; no trial's log tells an image count twice

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
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

TINY = ["model.unet.channels=[16,32]", "model.unet.attention=[false,true]", "model.unet.layers_per_block=1",
        "model.unet.norm_groups=8", "model.unet.attention_head_dim=8", "train.batch_size=16", "train.mixed_precision=no",
        "train.compile=off", "train.duration_steps=40", "train.log_every_images=16", "train.grid_every_images=320",
        "train.checkpoint_every_images=64", "train.keep_checkpoints=20", "train.ema_halflife_images=64",
        "optim.warmup_images=32", "sample.steps=4", "sample.batch_size=64", "eval.every_images=0"]
# A sweep's trials: 96 training images each, an evaluation every 32 (the objective, and where a killed trial resumes).
SWEEP_TINY = [t for t in TINY if not t.startswith(("train.duration_steps", "eval.every_images", "train.checkpoint"))] + [
    "eval.every_images=32", "eval.during_n=32", "eval.classifier_epochs=1", "train.log_every_images=32",
    "train.checkpoint_every_images=32"]
TIMINGS = {"images_per_s", "peak_memory_bytes", "seconds"}  # (metrics.jsonl fields that measure the machine, not the run)


def difftrain(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "difftrain", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish(process: subprocess.Popen, what: str) -> None:
    _, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed ({process.returncode}): {err[-2000:]}")


WINDOW = 0.8  # kill points fall in this first share of an uninterrupted run's time: later ones often miss its end


def timed_reference(args: list[str], output: Path, env: dict[str, str]) -> tuple[float, float]:
    """The window of kill points of an uninterrupted run into `output`: from its start (imports and checks included:
    a kill there found a bug) to WINDOW of its wall time."""
    start = time.perf_counter()
    finish(difftrain(*args, env=env), " ".join(args))
    return 0.0, WINDOW * (time.perf_counter() - start)


def killed_then_finished(args: list[str], again: Callable[[], list[str]], delay: float,
                         env: dict[str, str]) -> tuple[bool, list[str]]:
    """Start `args`, SIGKILL it after `delay` s (unless it ended before), then run `again()` (what the kill left decides
    it) to the end: (whether it was killed, the problem when running it again failed)."""
    process = difftrain(*args, env=env)
    try:
        process.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed = True
    try:
        finish(difftrain(*again(), env=env), "the command run again")
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


def check_prepared(reference: Path, out: Path) -> list[str]:
    """The same arrays and manifest (`created` aside), and nothing half-written beside the folder."""
    problems = [f"{p} differs" for p, digest in files(reference).items()
                if p != "manifest.json" and files(out).get(p) != digest]
    ref, got = (json.loads((f / "manifest.json").read_text()) for f in (reference, out))
    if {k: v for k, v in ref.items() if k != "created"} != {k: v for k, v in got.items() if k != "created"}:
        problems.append("manifest.json differs (beyond `created`)")
    strays = [p.name for p in out.parent.glob(f".{out.name}.*") if not p.name.endswith(".lock")]
    return problems + [f"left beside it: {name}" for name in strays]


def check_samples(reference: Path, out: Path, runs: tuple[Path, Path] | None = None) -> list[str]:
    """The same arrays and meta (`created` aside, and the two `runs`' own paths), nothing half-written beside it."""
    with np.load(reference) as a, np.load(out) as b:
        problems = [f"{out.name}: {key} differs" for key in a.files if key != "meta" and not np.array_equal(a[key], b[key])]
        texts = [str(f["meta"]) for f in (a, b)]
        if runs is not None:
            texts = [t.replace(str(run.resolve()), "RUN") for t, run in zip(texts, runs)]
        meta = [{k: v for k, v in json.loads(t).items() if k != "created"} for t in texts]
    problems += [f"{out.name}: meta differs"] if meta[0] != meta[1] else []
    return problems + [f"left: {p.name}" for p in out.parent.glob(f".{out.name}.*")]


def sweep_space(out: Path) -> Path:
    path = out / "sweep.yaml"
    path.write_text("objective: fid\npruner: none\nsampler: random\nparams:\n"
                    "  optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true}\n  diffusion.p_mean: {low: -1.6, high: -0.8}\n")
    return path


def check_sweep(reference: Path, out: Path) -> list[str]:
    """Every trial complete, as many as the reference's, none repeated; a trial with the reference's settings ends on its
    objective and weights exactly (a killed trial resumed from its checkpoint); each trial's log tells its run once."""
    from difftrain.store.checkpoint import CheckpointError, list_checkpoints, open_checkpoint
    from difftrain.sweep.study import load

    def trials(folder: Path) -> dict[str, tuple]:
        return {json.dumps(t.params, sort_keys=True): (t.number, t.state.name, t.values) for t in load(folder).get_trials()}

    ref, got = trials(reference), trials(out)
    problems = [f"{len(got)} trials, the reference has {len(ref)}"] if len(got) != len(ref) else []
    problems += [f"trial {n} is {state}" for n, state, _ in got.values() if state != "COMPLETE"]
    for params, (n, _, values) in got.items():
        trial = out / "trials" / f"trial-{n:04d}"
        for path in list_checkpoints(trial):
            try:
                open_checkpoint(path)
            except CheckpointError as e:
                problems.append(f"trial {n} checkpoint {path.name}: {e}")
        told = [(r.get("event"), r["images"]) for r in records(trial) if "loss" in r or r.get("during_training")]
        if len(told) != len(set(told)):
            problems.append(f"trial {n}: metrics.jsonl tells some images twice")
        if params in ref:
            twin = reference / "trials" / f"trial-{ref[params][0]:04d}"
            if values != ref[params][2]:
                problems.append(f"trial {n}: objective {values} where the reference's trial with its settings has {ref[params][2]}")
            last, ref_last = list_checkpoints(trial)[-1], list_checkpoints(twin)[-1]
            if (last / "ema.safetensors").read_bytes() != (ref_last / "ema.safetensors").read_bytes():
                problems.append(f"trial {n}: {last.name}/ema.safetensors differs from the reference trial's")
    return problems + [f"left: {p.relative_to(out)}" for p in out.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def image_source(out: Path, count: int = 3000) -> Path:
    """A folder of `count` small PNGs in 10 classes: long enough to prepare that a kill lands inside it."""
    from PIL import Image

    folder = out / "source"
    if not (folder / ".complete").is_file():
        rng = np.random.default_rng(0)
        for i in range(count):
            (folder / str(i % 10)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(folder / str(i % 10) / f"{i:05d}.png")
        (folder / ".complete").touch()
    return folder


def check_evaluated(reference: Path, run: Path) -> list[str]:
    """The same evaluation records (timings and the run's own path aside) and files under eval/ (a samples file's
    `created` aside), as many as the uninterrupted run's."""
    def evaluations(folder: Path) -> list[str]:
        return [json.dumps(r, sort_keys=True).replace(str(folder.resolve()), "RUN") for r in records(folder)]

    problems = [] if evaluations(run) == evaluations(reference) else ["metrics.jsonl differs from the uninterrupted run's"]
    ref, got = files(reference / "eval"), files(run / "eval")
    for name in ref:
        if name not in got:
            problems.append(f"eval/{name} is missing")
        elif name.endswith(".npz"):
            problems += check_samples(reference / "eval" / name, run / "eval" / name, (reference, run))
        elif got[name] != ref[name]:
            problems.append(f"eval/{name} differs")
    problems += [f"stray eval/{name}" for name in got if name not in ref]
    return problems + [f"left: {p.name}" for p in run.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def verbs(out: Path, data: Path) -> dict[str, tuple]:
    """Per verb: (the command for an output, the command that continues it, the check against the reference, what
    makes a fresh output to run it on, or None)."""
    train = lambda run: ["train", "--out", str(run), f"data.path={data}", *TINY]  # noqa: E731
    synth = lambda folder: ["synth", str(out / "train-ref"), "--out", str(folder), "--per-class", "6",  # noqa: E731
                            "--batch-size", "8", "--sampler", "euler", "--steps", "4", "--filter", "memorization,dedup",
                            "--no-report"]
    prepare = lambda folder: ["data", "prepare", str(image_source(out)), "--out", str(folder), "--overwrite"]  # noqa: E731
    npz = lambda path: path.with_name(path.name + ".npz")  # noqa: E731 - a samples file's name
    sample = lambda file: ["sample", str(out / "train-ref"), "--n", "3000", "--out", str(npz(file))]  # noqa: E731
    evaluate = lambda run: ["eval", str(run), "--n", "300", "--metrics", "fid,kid,pr"]  # noqa: E731
    copy_run = lambda run: shutil.copytree(out / "train-ref", run)  # noqa: E731 - eval writes into the run it scores
    sweep = lambda folder: ["sweep", "--data", str(data), "--out", str(folder), "--trials", "3", "--budget-images", "96",  # noqa: E731
                            "--space", str(sweep_space(out)), "--no-progress", *SWEEP_TINY]
    # What its messages tell a user: a folder holding a sweep goes on with --resume; one killed before it did, afresh.
    resume_sweep = lambda folder: ["sweep", "--resume", str(folder), "--no-progress"] \
        if (folder / "sweep.json").is_file() else sweep(folder)  # noqa: E731
    return {"train": (train, lambda run: [*train(run), "--resume"], check_train, None),
            "synth": (synth, synth, check_synth, None),
            "data prepare": (prepare, prepare, check_prepared, None),
            "sample": (sample, sample, lambda ref, got: check_samples(npz(ref), npz(got)), None),
            "eval": (evaluate, evaluate, check_evaluated, copy_run),
            "sweep": (sweep, resume_sweep, check_sweep, None)}


def measure(out: Path, points: int, seed: int, env: dict[str, str], only: list[str] | None = None) -> dict:
    """Kill points of each verb (train first: the others read its reference run); the counts and every problem."""
    rng = random.Random(seed)
    data = out / "digits"
    if not (data / "manifest.json").is_file():
        finish(difftrain("data", "prepare", "digits", "--out", str(data), env=env), "data prepare")
    table = verbs(out, data)
    train_ref = out / "train-ref"
    train_window = None if train_ref.exists() else timed_reference(table["train"][0](train_ref), train_ref, env)
    results = {}
    for verb in only or list(table):
        command, again, check, fresh = table[verb]
        name = verb.replace(" ", "-")
        reference = out / f"{name}-ref"
        if verb == "train":
            window = train_window or timed_reference(command(out / "train-timing"), out / "train-timing", env)
        else:
            if fresh is not None:
                fresh(reference)
            window = timed_reference(command(reference), reference, env)
        outcome = {"points": points, "killed": 0, "survived": 0, "problems": [], "window_seconds": window}
        for i in range(points):
            target = out / f"{name}-{i}"
            if fresh is not None:
                fresh(target)
            delay = rng.uniform(*window)
            killed, problems = killed_then_finished(command(target), lambda: again(target), delay, env)
            outcome["killed"] += killed
            problems = problems or check(reference, target)
            outcome["survived"] += not problems
            outcome["problems"] += [f"point {i} ({delay:.2f} s): {p}" for p in problems]
        results[verb] = outcome
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="an empty folder for the runs")
    p.add_argument("--points", type=int, default=20, help="kill points per verb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="threads of each difftrain process")
    p.add_argument("--verbs", nargs="+", default=None, help="only these (train, synth, 'data prepare', sample, eval, sweep)")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    results = measure(Path(args.out), args.points, args.seed, env, args.verbs)
    print(json.dumps({"benchmark": "kill_points", "settings": vars(args), "seconds": time.perf_counter() - start,
                      **results}))


if __name__ == "__main__":
    main()
