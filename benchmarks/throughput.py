"""Training speed of difftrain's trainer against the plain reference loop, in one process.

Both train the same network (same preset) on the same data with the same batch size, and both
exclude their first `--warmup` steps from the timing. (a) "ours" is difftrain's `train()` with
progress off and intermediate grids and checkpoints off; its own log records time the steps
after the warm-up (log every warmup*batch images; the windows after the first are summed), so
it writes a log record (JSON line + TensorBoard flush) every `warmup` steps: the default 20 at
batch 128 is the digits preset's own log interval. It still writes one checkpoint and one grid
(made cheap: 1 Euler step) after the loop, untimed.
(b) "reference" is reference_loop.train_step, diffusers' recipe. The two alternate A, B, A, B
(`--rounds` times each) to cancel drift; the median images/s of each side is reported.

Ours runs with difftrain's defaults for the device ("auto": bf16 autocast where the chip has
bf16, torch.compile replayed as CUDA graphs and channels_last on CUDA, fused AdamW); the reference runs diffusers' plain
recipe in float32 with no tricks. `ours_settings` records what "auto" resolved to.

Memory: before each measurement the kernel's peak-RSS counter (VmHWM) is reset through
/proc/self/clear_refs, so `*_peak_rss_mb` is the whole process's peak resident memory during
that measurement (both libraries, the data, Python), the max over rounds. Where the reset is not
possible it falls back to ru_maxrss, the process's lifetime peak, which cannot tell the two apart.
On a GPU `*_peak_gpu_mb` is the CUDA allocator's peak during the measurement.

Also printed: `loader_images_per_s`, the prepared-data loader alone (ArrayBatches on the training
device, batches of the same size), and its ratio to our training speed; `train_flops_per_image`
(forward + backward of the network, counted by torch.utils.flop_counter) and, on a GPU,
`*_mfu`: achieved FLOP/s over the GPU's dense bf16 peak (datasheet; `gpu_bf16_peak_tflops`).

Run (the full benchmark):
    python benchmarks/throughput.py --data data/digits --preset digits --batch 128 --steps 100 \
        --warmup 20 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

import common
from difftrain.config import Config, load_config
from difftrain.data import PreparedDataset
from difftrain.data.loader import ArrayBatches
from difftrain.diffusion import denoising_loss
from difftrain.models import build_network
from difftrain.store.run import denoiser_of
from difftrain.training.performance import enabled, uses_cuda_graphs
from difftrain.training.trainee import make_accelerator
from difftrain.training.trainer import train
from reference_loop import build_reference, train_step

# Dense bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s (no sparsity).
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.4,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "RTX 4090": 165.2}


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb(reset_works: bool) -> float:
    if reset_works:
        return proc_status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_ours(config: Config, ds: PreparedDataset, warmup: int, steps: int) -> float:
    """Images/s of difftrain's trainer over `steps` steps after `warmup` steps, from its log records."""
    batch = config.train.batch_size
    overrides = {"duration_steps": warmup + steps, "log_every_images": warmup * batch,
                 "grid_every_images": 0, "checkpoint_every_images": 0}
    config = config.model_copy(update={
        "train": config.train.model_copy(update=overrides),
        "eval": config.eval.model_copy(update={"every_images": 0}),
        "sample": config.sample.model_copy(update={"sampler": "euler", "steps": 1})})
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(config, run_dir, progress=False, dataset=ds)
    timed = result.history[1:]  # records after the one closing the warm-up window
    seconds = sum((r["images"] - prev["images"]) / r["images_per_s"] for prev, r in zip(result.history, timed))
    return (timed[-1]["images"] - result.history[0]["images"]) / seconds


def measure_reference(config: Config, ds: PreparedDataset, warmup: int, steps: int, seed: int,
                      device: torch.device) -> float:
    """Images/s of reference_loop.train_step over `steps` steps after `warmup` steps."""
    num_classes = ds.num_classes if config.model.conditional else 0
    batch = config.train.batch_size
    ref = build_reference(config, ds.modality, num_classes, warmup + steps, seed=seed, device=device)
    batches = common.shuffled_batches(ds.train_data, ds.train_labels if num_classes else None, ds.modality, batch,
                                      seed=seed, device=device)
    noise_gen = torch.Generator(device).manual_seed(seed + 1)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        train_step(ref, *next(batches), noise_gen)
    return steps * batch / (time.perf_counter() - start)


def measure_loader(config: Config, ds: PreparedDataset, device: torch.device, batches: int = 200) -> float:
    """Images/s of the loader alone: training batches (gathered, converted, augmented as configured) on the device."""
    batch = config.train.batch_size
    loader = ArrayBatches(ds.train_data, ds.train_labels, ds.modality, seed=0, device=device, hflip=config.train.hflip)
    loader.batch(0, batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(1, batches + 1):
        x, _ = loader.batch(i * batch, batch)
    sync()
    return batches * batch / (time.perf_counter() - start)


def train_flops_per_image(config: Config, ds: PreparedDataset) -> float:
    """FLOPs of one training image: the network's forward and backward pass (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    num_classes = ds.num_classes if config.model.conditional else 0
    denoiser = denoiser_of(config, ds.modality, build_network(config.model, ds.modality, num_classes))
    n = 8
    x0 = torch.zeros(n, *ds.modality.model_shape).uniform_(-1, 1)
    cond = {"label": torch.zeros(n, dtype=torch.long)} if num_classes else None
    with FlopCounterMode(display=False) as counter:
        denoising_loss(denoiser, x0, cond, weighting="edm").sum().backward()
    return counter.get_total_flops() / n


def bf16_peak_tflops() -> tuple[str, float] | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in name:
            return name, peak
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's train.batch_size)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before each measurement; also ours' log interval")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each side, alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (both sides)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="difftrain config override")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")

    common.set_threads(args.threads)
    device = common.pick_device(args.device)
    overrides = [f"train.seed={args.seed}", f"train.device={device.type}"]
    overrides += [f"train.batch_size={args.batch}"] if args.batch else []
    overrides += [f"train.threads={args.threads}"] if args.threads else []
    config = load_config(args.preset, overrides=overrides + args.override)
    ds = common.load_data(args.data)
    precision = make_accelerator(config.train).mixed_precision  # what "auto" resolves to here
    rss_before = proc_status_mb("VmRSS")

    speeds: dict[str, list[float]] = {"ours": [], "reference": []}
    peaks: dict[str, list[float]] = {"ours": [], "reference": []}
    gpu_peaks: dict[str, list[float]] = {"ours": [], "reference": []}
    reset_works = False
    for _ in range(args.rounds):
        for side in ("ours", "reference"):
            gc.collect()
            reset_works = reset_peak_rss()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if side == "ours":
                speeds[side].append(measure_ours(config, ds, args.warmup, args.steps))
            else:
                speeds[side].append(measure_reference(config, ds, args.warmup, args.steps, args.seed, device))
            peaks[side].append(peak_rss_mb(reset_works))
            if device.type == "cuda":
                gpu_peaks[side].append(torch.cuda.max_memory_allocated() / 2**20)

    ours, reference = statistics.median(speeds["ours"]), statistics.median(speeds["reference"])
    loader = measure_loader(config, ds, device)
    flops = train_flops_per_image(config, ds)
    extra = {"loader_images_per_s": loader, "loader_to_training": loader / ours, "train_flops_per_image": flops,
             "ours_achieved_tflops": ours * flops / 1e12, "reference_achieved_tflops": reference * flops / 1e12}
    peak = bf16_peak_tflops()
    if peak is not None:
        extra |= {"gpu_bf16_peak_tflops": peak[1], "ours_mfu": ours * flops / 1e12 / peak[1],
                  "reference_mfu": reference * flops / 1e12 / peak[1]}
    if device.type == "cuda":
        extra |= {"ours_peak_gpu_mb": max(gpu_peaks["ours"]), "reference_peak_gpu_mb": max(gpu_peaks["reference"])}
    tc = config.train
    settings = {"mixed_precision": precision, "compile": enabled(tc.compile, device.type),
                "channels_last": enabled(tc.channels_last, device.type), "cuda_graphs": uses_cuda_graphs(tc, device.type)}
    common.emit({"ours_images_per_s": ours, "reference_images_per_s": reference, "ratio": ours / reference, **extra,
                 "ours_settings": settings,
                 "ours_runs": speeds["ours"], "reference_runs": speeds["reference"], "batch": config.train.batch_size,
                 "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "preset": args.preset,
                 "device": str(device), "ours_mixed_precision": precision,
                 "reference_mixed_precision": "no",
                 "rss_before_mb": rss_before, "ours_peak_rss_mb": max(peaks["ours"]), "reference_peak_rss_mb": max(peaks["reference"]),
                 "peak_rss_measures": "process VmHWM, reset before each measurement" if reset_works
                 else "ru_maxrss: process lifetime peak, not separable per side",
                 "overrides": overrides + args.override})


if __name__ == "__main__":
    main()
