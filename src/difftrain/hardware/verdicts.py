"""PASS / WARN / FAIL lines, each with its reason and its fix, from the environment, the probe and the fit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch

from difftrain.config import Config
from difftrain.hardware.probe import Fit, Probe
from difftrain.hardware.report import DistributedInfo, Environment, GPUInfo


@dataclass
class Verdict:
    status: Literal["PASS", "WARN", "FAIL"]
    check: str  # what was checked: cuda, device, precision, distributed, data, memory, disk, time, sampling
    message: str  # the reason
    fix: str | None = None


def size(n: int | float | None) -> str:
    """Bytes in binary units, the way GPUs are sold: 8 GB = 8 x 2^30 bytes."""
    if n is None:
        return "an unknown amount"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_cuda(env: Environment, config: Config) -> Verdict | None:
    """A GPU that is there but that torch cannot use: training would quietly run on the CPU."""
    cuda = env.cuda
    if not cuda.visible_but_unusable:
        return None
    seen = ", ".join(s for s in (f"CUDA_VISIBLE_DEVICES={cuda.visible_devices}" if cuda.visible_devices else "",
                                 "/dev/nvidia* device files" if cuda.device_files else "") if s)
    if cuda.torch_cuda_version is None:
        why = f"torch {env.torch} is a CPU-only build"
    else:
        why = cuda.error or "torch.cuda.is_available() is False"
        why += f" (torch built for CUDA {cuda.torch_cuda_version}, driver {cuda.driver_version or 'not loaded'})"
    fix = ("run `nvidia-smi`; install a torch build for this driver's CUDA version (see pytorch.org/get-started), "
           "or update the driver; or set train.device=cpu to train on the CPU on purpose")
    status = "WARN" if config.train.device == "cpu" else "FAIL"
    return Verdict(status, "cuda", f"a GPU is visible ({seen}) but unusable: {why}", fix)


def check_distributed(info: DistributedInfo, timeout_s: float = 60.0) -> Verdict | None:
    """Under a multi-process launch, initialise the process group now rather than at the first step."""
    if info.world_size <= 1:
        return None
    import torch.distributed as dist

    launch = "launch with `accelerate launch --num_processes N ...` or `torchrun`, which set WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT"
    if not dist.is_available():
        return Verdict("FAIL", "distributed", f"WORLD_SIZE={info.world_size} but this torch has no torch.distributed",
                       "install a torch build with distributed support")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        return Verdict("FAIL", "distributed", f"WORLD_SIZE={info.world_size} but {' and '.join(missing)} unset", launch)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if dist.is_initialized():
        return Verdict("PASS", "distributed", f"{dist.get_backend()} process group of {dist.get_world_size()} processes (rank {dist.get_rank()})")
    if backend == "nccl" and not dist.is_nccl_available():
        return Verdict("FAIL", "distributed", "CUDA is usable but this torch has no NCCL", "install a CUDA build of torch with NCCL")
    try:
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - every failure here is the finding
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Verdict("FAIL", "distributed",
                       f"the {backend} process group ({info.world_size} processes, {info.master_addr}:{info.master_port}) "
                       f"did not initialise within {timeout_s:.0f} s: {reason}",
                       f"start every process ({launch}); check that {info.master_addr}:{info.master_port} is reachable from every node and the port is free")
    return Verdict("PASS", "distributed", f"{backend} process group of {info.world_size} processes initialised (rank {info.rank})")


def _gpu(env: Environment, device: str) -> GPUInfo | None:
    """The GPU of `device` ("cuda:0"), if it is one."""
    if not device.startswith("cuda"):
        return None
    index = int(device.split(":")[1]) if ":" in device else 0
    return next((g for g in env.gpus if g.index == index), None)


def check_device(env: Environment, fit: Fit, probe: Probe | None) -> list[Verdict]:
    gpu = _gpu(env, fit.device)
    if gpu is None:
        return [Verdict("PASS", "device", f"training on {fit.device}: {env.cpu_model}, {env.cpu_cores} cores, "
                                          f"{size(env.ram_available_bytes)} RAM available")]
    out = [Verdict("PASS", "device", f"training on {gpu.name}: {size(gpu.total_memory_bytes)}, "
                                         f"{size(gpu.free_memory_bytes)} free, compute capability {gpu.capability}")]
    if probe is not None and probe.precision == "no":
        if gpu.bf16:
            out.append(Verdict("WARN", "precision", f"training in float32 on a GPU with bf16 (capability {gpu.capability})",
                               "train.mixed_precision=bf16 (or auto) is faster and needs less activation memory"))
        elif gpu.fp16:
            out.append(Verdict("WARN", "precision", f"float32: this GPU (capability {gpu.capability}) has no bf16",
                               "train.mixed_precision=fp16 halves activation memory (with loss scaling)"))
    return out


def check_memory(env: Environment, fit: Fit) -> Verdict:
    gpu = _gpu(env, fit.device)
    if gpu is not None:
        has = f"{gpu.name} has {size(gpu.free_memory_bytes)} free"
    else:
        has = f"this machine has {size(env.ram_available_bytes)} RAM available"
    budget = f"budget {size(fit.budget_bytes)} ({fit.budget_source})"
    need = f"about {size(fit.configured_need_bytes)}" if fit.configured_need_bytes is not None else "more than the budget"
    need += " (extrapolated)" if fit.configured_need_estimated and fit.configured_need_bytes is not None else ""
    if fit.micro_batch is None:
        smallest = fit.by_batch[0] if fit.by_batch else None
        what = "nothing fits" if smallest is None else (
            f"even micro-batch {smallest.micro_batch} " +
            (f"needs {size(smallest.peak_bytes)}" if smallest.peak_bytes is not None else "runs out of memory"))
        return Verdict("FAIL", "memory", f"{has}, {budget}; this config needs {need} at micro-batch {fit.configured_micro_batch}; {what}",
                       "; or ".join(fit.suggestions))
    if fit.fits_as_configured:
        return Verdict("PASS", "memory", f"needs {need} at micro-batch {fit.configured_micro_batch}; {has}, {budget}")
    fix = (f"set train.accumulation={fit.accumulation} (same effective batch {fit.batch_size}), "
           f"or run `difftrain train --auto-batch` which does it")
    if fit.suggestions:
        fix += "; to keep bigger micro-batches: " + "; or ".join(fit.suggestions)
    return Verdict("FAIL", "memory", f"{has}, {budget}; this config needs {need} at micro-batch {fit.configured_micro_batch} "
                                     f"-> micro-batch {fit.micro_batch} x accumulation {fit.accumulation} fits in about {size(fit.need_bytes)}", fix)


def check_disk(env: Environment, config: Config, probe: Probe) -> Verdict:
    disk, need = env.disk, probe.disk_needed_bytes
    what = (f"{probe.checkpoints_on_disk} checkpoints of {size(probe.checkpoint_bytes)} need {size(need)}; "
            f"{disk.checked} has {size(disk.free_bytes)} free")
    keep = disk.free_bytes // max(probe.checkpoint_bytes, 1) - 1
    fix = (f"free space on {disk.checked} or choose another --out" +
           (f", or keep fewer checkpoints (train.keep_checkpoints={keep})" if 1 <= keep < config.train.keep_checkpoints else ""))
    if need > disk.free_bytes:
        return Verdict("FAIL", "disk", what, fix)
    if need > 0.8 * disk.free_bytes:
        return Verdict("WARN", "disk", what + " (over 80% of it)", fix)
    return Verdict("PASS", "disk", what)


def check_time(probe: Probe) -> Verdict:
    return Verdict("PASS", "time", f"{probe.images_per_second:,.0f} images/s measured at batch {probe.batch_size} "
                                   f"(micro-batch {probe.micro_batch} x {probe.accumulation}): about {duration(probe.predicted_wall_seconds)} "
                                   f"for {probe.duration_images:,} images with {probe.grids} sample grid(s)")


def check_sampling(fit: Fit, probe: Probe) -> Verdict:
    what = (f"{probe.sample_seconds_per_image * 1000:.1f} ms per image ({probe.sampler}, {probe.network_evaluations} network evaluations); "
            f"one call at sample.batch_size={probe.sample_batch} needs {size(probe.sampling_peak_memory_bytes)}")
    if probe.sampling_peak_memory_bytes > fit.budget_bytes:
        smaller = max(1, int(probe.sample_batch * fit.budget_bytes / probe.sampling_peak_memory_bytes / 2))
        return Verdict("WARN", "sampling", what + f", over the budget {size(fit.budget_bytes)}", f"set sample.batch_size={smaller}")
    return Verdict("PASS", "sampling", what)


def fit_accumulation(config: Config, preset: str | None = None) -> str:
    """Set train.accumulation so that the micro-batch fits in memory, measured by real steps as `difftrain doctor`
    measures it; the line that says what was chosen (`train --auto-batch`, every trial of `sweep --auto-batch`)."""
    from difftrain.errors import UserError
    from difftrain.hardware.probe import data_shape, fit_micro_batch

    fit = fit_micro_batch(config, data_shape(config, preset))
    if fit.micro_batch is None:
        raise UserError(f"--auto-batch: not even micro-batch {fit.by_batch[0].micro_batch} fits in {size(fit.budget_bytes)} "
                        f"({fit.budget_source}); try " + "; or ".join(fit.suggestions))
    config.train.accumulation = fit.accumulation
    return (f"batch {fit.batch_size} = micro-batch {fit.micro_batch} x accumulation {fit.accumulation}, "
            f"about {size(fit.need_bytes)} of {size(fit.budget_bytes)} ({fit.budget_source})")
