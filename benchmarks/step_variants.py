"""Where the CPU speed-up comes from: training steps of one preset's network in several variants,
interleaved in one process (so machine drift hits all alike), median images/s of each.

Variants: float32; + the plain ("math") attention kernel; bf16 autocast; bf16 + math kernel (what
difftrain's "auto" picks on a CPU with native bf16); + channels_last; with --compile also the
compiled network in float32 and in bf16 + math (its compile time is printed too). The step is the
loss's forward and backward and a fused AdamW update on random images, no EMA, no data loading.

Run:
    python benchmarks/step_variants.py --preset digits --threads 2 --compile
    python benchmarks/step_variants.py --preset mnist --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import common
from difftrain.config import load_config
from difftrain.diffusion import denoising_loss
from difftrain.modalities import modality_for
from difftrain.models import build_network
from difftrain.store.run import denoiser_of

SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1)}


def make_step(config, shape, batch: int, *, bf16: bool, math: bool, channels_last: bool = False, compiled: bool = False):
    torch.manual_seed(0)
    modality = modality_for({"kind": "image", "shape": list(shape)})
    net = build_network(config.model, modality, 10)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compiled:
        net.compile()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    denoiser = denoiser_of(config, modality, net)
    x0 = torch.rand(batch, *modality.model_shape) * 2 - 1
    cond = {"label": torch.randint(0, 10, (batch,))}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        kernel = sdpa_kernel([SDPBackend.MATH]) if math else contextlib.nullcontext()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with kernel, autocast:
            loss = denoising_loss(denoiser, x0, cond, weighting="edm").sum() / batch
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="digits", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time the compiled network (a minute or more of compiling)")
    args = parser.parse_args()
    common.set_threads(args.threads)
    config, shape = load_config(args.preset), SHAPES[args.preset]
    variants = {"fp32": dict(bf16=False, math=False), "fp32+math": dict(bf16=False, math=True),
                "bf16": dict(bf16=True, math=False), "bf16+math": dict(bf16=True, math=True),
                "bf16+math+channels_last": dict(bf16=True, math=True, channels_last=True)}
    if args.compile:
        variants |= {"fp32+compile": dict(bf16=False, math=False, compiled=True),
                     "bf16+math+compile": dict(bf16=True, math=True, compiled=True)}
    steps, warmup_seconds = {}, {}
    for name, options in variants.items():
        steps[name] = make_step(config, shape, args.batch, **options)
        start = time.perf_counter()
        for _ in range(3):  # warm-up; compiles a compiled variant
            steps[name]()
        warmup_seconds[name] = time.perf_counter() - start
    per_round = 8 if args.preset == "digits" else 3
    speeds = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            speeds[name].append(per_round * args.batch / (time.perf_counter() - start))
    common.emit({"preset": args.preset, "batch": args.batch, "rounds": args.rounds, "steps_per_round": per_round,
                 "images_per_s": {name: statistics.median(v) for name, v in speeds.items()}, "runs": speeds,
                 "warmup_seconds": warmup_seconds})


if __name__ == "__main__":
    main()
