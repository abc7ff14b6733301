"""Where a GPU training step's time goes (digits preset, batch 128): images/s of the plain diffusers
loop and of difftrain's step (eager, with and without cudnn.benchmark; compiled), and a torch.profiler
table of 10 steps of ours (eager and compiled), written to OUT/prof_eager.txt and OUT/prof_compiled.txt.
Prints one JSON line after each phase: images/s and the GPU kernel time per step.

The H100 figures in docs/benchmarks.md (issue 6) come from this script, run before the EMA update
became three multi-tensor kernels (it then issued ~200 per step), and before the GPU time per step
counted kernel rows only (the run printed the double count; the tables' "Self CUDA time total" holds
the true figure, quoted in the docs).

Run (on a GPU machine, the digits data prepared in DATA):
    python benchmarks/gpu_profile.py DATA OUT
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import common
from difftrain.config import load_config
from difftrain.data import load_dataset
from difftrain.hardware.probe import DataShape, _Trainee
from difftrain.training.trainee import train_step
from reference_loop import build_reference
from reference_loop import train_step as reference_step

BATCH = 128


def ours(data: str, cudnn_benchmark: bool, compiled: bool) -> _Trainee:
    """difftrain's training objects (the doctor's probe builds them as the trainer does).

    The trainer's compile setting is pinned: off for eager; on, without CUDA graphs, for compiled (the
    plain torch.compile this script has always measured)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    ds = load_dataset(data)
    compile_settings = ["train.compile=on", "train.cuda_graphs=off"] if compiled else ["train.compile=off"]
    config = load_config("digits", overrides=["train.device=cuda", *compile_settings])
    return _Trainee(config, DataShape(ds.modality, ds.num_classes, data, ds))


def run(t: _Trainee, n: int) -> None:
    for _ in range(n):
        _, _, applied = train_step(t.config, t.accelerator, t.net, t.denoiser, t.optimizer, t.batches, t.images,
                                   t.trainee.noise_gen, t.conditioner)
        t.ema.update(t.raw_net, 0.999, applied)
        t.images += BATCH


def speed(steps, n: int = 60) -> float:
    steps(15)
    torch.cuda.synchronize()
    start = time.perf_counter()
    steps(n)
    torch.cuda.synchronize()
    return n * BATCH / (time.perf_counter() - start)


def reference_speed(data: str, cudnn_benchmark: bool) -> float:
    torch.backends.cudnn.benchmark = cudnn_benchmark
    ds = load_dataset(data)
    ref = build_reference(load_config("digits"), ds.modality, ds.num_classes, 1000, device="cuda")
    batches = common.shuffled_batches(ds.train_data, ds.train_labels, ds.modality, BATCH, seed=0, device=torch.device("cuda"))
    generator = torch.Generator("cuda").manual_seed(1)
    return speed(lambda n: [reference_step(ref, *next(batches), generator) for _ in range(n)])


def profiled(t: _Trainee, path: str) -> float:
    """Profile 10 steps into `path`; the GPU kernel milliseconds per step."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        run(t, 10)
        torch.cuda.synchronize()
    table = p.key_averages()
    with open(path, "w") as f:
        f.write(table.table(sort_by="self_device_time_total", row_limit=25) + "\n\n"
                + table.table(sort_by="self_cpu_time_total", row_limit=25))
    # The kernels' rows only: the operator rows that launched them carry the same time again.
    return sum(e.self_device_time_total for e in table if e.device_type == DeviceType.CUDA) / 10 / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="prepared digits dataset folder")
    parser.add_argument("out", help="folder for prof_eager.txt and prof_compiled.txt")
    args = parser.parse_args()
    data, out = args.data, args.out
    result = {"plain loop": reference_speed(data, False), "plain loop, cudnn.benchmark": reference_speed(data, True)}
    trainee = ours(data, False, False)
    result["ours eager"] = speed(lambda n: run(trainee, n))
    trainee = ours(data, True, False)
    result["ours eager, cudnn.benchmark"] = speed(lambda n: run(trainee, n))
    result["ours eager: GPU ms per step"] = profiled(trainee, f"{out}/prof_eager.txt")
    print(json.dumps(result), flush=True)
    trainee = ours(data, True, True)
    result["ours compiled, cudnn.benchmark"] = speed(lambda n: run(trainee, n))
    result["ours compiled: GPU ms per step"] = profiled(trainee, f"{out}/prof_compiled.txt")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
