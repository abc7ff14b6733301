"""Real training steps of the user's config on this machine: peak memory by micro-batch, the largest
micro-batch that fits a memory budget, speed, and from those the run's time, checkpoint size and disk.

The trainee is built by the trainer's own `build_trainee` (the --init architecture, LoRA, compile and sharding
included) and steps with its `train_step`, so what is measured is what `difftrain train` runs.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from difftrain.config import Config
from difftrain.data import PreparedDataset, load_dataset
from difftrain.data.loader import ArrayBatches
from difftrain.errors import UserError
from difftrain.training.memory import PeakMemory, release_memory, rss_bytes
from difftrain.hardware.report import meminfo
from difftrain.modalities import Modality, builtin_datasets, prepare, stand_in
from difftrain.models import smaller_network_hint
from difftrain.store.run import with_data_defaults
from difftrain.sampling import SamplingSpec
from difftrain.training.ema import EMA
from difftrain.pretrained.source import config_for_source, open_pretrained
from difftrain.training.performance import enabled
from difftrain.training.sharding import is_sharded, sharded_config
from difftrain.store.latent import latent_view
from difftrain.training.trainee import build_trainee, check_batch, make_accelerator, random_stand_in
from difftrain.training.trainer import total_images

SWEEP_SIZES = 7  # micro-batches tried: the configured one and up to 6 powers of two below it
SWEEP_STEPS = 2  # steps at each: the second holds the optimizer state that the first creates


@dataclass
class DataShape:
    modality: Modality
    num_classes: int
    source: str  # where the shape came from
    dataset: PreparedDataset | None = None  # the real data when prepared, else random tensors stand in


def data_shape(config: Config, preset: str | None = None) -> DataShape:
    """The shape and classes the config trains on, without preparing anything."""
    path = config.data.path
    if path and str(path) in builtin_datasets():
        if stand_in(str(path)) is not None:
            modality, classes = stand_in(str(path))
            return DataShape(modality, classes, f"random tensors shaped as built-in '{path}'")
        with tempfile.TemporaryDirectory() as tmp:  # small built-ins (point sets) take a moment to make
            ds = prepare(str(path), Path(tmp) / "data", progress=False)
        return DataShape(ds.modality, ds.num_classes, f"built-in '{path}'", ds)
    if path:
        ds = load_dataset(path)
        return DataShape(ds.modality, ds.num_classes, f"prepared dataset {path}", ds)
    if preset and stand_in(preset) is not None:
        modality, classes = stand_in(preset)
        return DataShape(modality, classes, f"random tensors shaped as the {preset} preset's data (no --data)")
    raise UserError("no dataset: pass --data DIR (make one with `difftrain data prepare SOURCE --out DIR`)")


class _Trainee:
    """The trainer's objects for `config`, built once and reused at every micro-batch."""

    def __init__(self, config: Config, data: DataShape):
        tc = config.train
        release_memory()
        self.baseline = rss_bytes()  # on CPU, memory counts from here: the network and optimizer count too
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.accelerator = make_accelerator(tc)
        self.device = self.accelerator.device
        self.world = self.accelerator.num_processes
        check_batch(tc, self.world)
        # As `train` conditions: on captions when the data has them, else on class labels.
        captioned = data.dataset is not None and data.dataset.train_captions is not None and config.model.conditional
        self.num_classes = data.num_classes if config.model.conditional and not captioned else 0
        if data.dataset is not None:
            items = data.dataset.train_data
            labels = data.dataset.train_captions if captioned else data.dataset.train_labels if self.num_classes else None
        else:  # the probe measures compute, not quality: random data of the right shape will do
            items, labels = random_stand_in(data.modality, tc.batch_size, self.num_classes, tc.seed)
        # The network trains as `train` builds it: the --init source's architecture, LoRA, compile, sharding.
        if config.finetune.init:
            config = config_for_source(config, open_pretrained(config.finetune.init, warn=lambda m: None))
        modality = data.modality
        if config.model.latent:  # latent diffusion: the network and the batches are the autoencoder's latents'
            modality = latent_view(config, modality)
            items, labels = items[:tc.batch_size], None if labels is None else labels[:tc.batch_size]
        config = with_data_defaults(config, modality, items)
        if is_sharded(self.accelerator):
            config = sharded_config(config)
        self.config, self.modality = config, modality
        codes, view = modality.batch_view(items, None, self.device)
        self.trainee, _ = build_trainee(config, self.accelerator, modality, self.num_classes,
                                        lambda device: ArrayBatches(codes, labels, view, seed=tc.seed, device=device))
        t = self.trainee
        self.net, self.raw_net, self.ema, self.optimizer = t.net, t.raw_net, t.ema, t.optimizer
        self.denoiser, self.conditioner, self.batches, self.noise_gen = t.denoiser, t.conditioner, t.batches, t.noise_gen
        self.images = 0

    def steps(self, n: int, micro_batch: int | None = None, accumulation: int | None = None, eager: bool = False) -> None:
        """`n` real training steps; `micro_batch` alone means one micro-batch per step of that size (per process).

        `eager`: a compiled network runs uncompiled (the memory sweep: each size tried would compile anew, and
        compiled code needs no more memory than eager code, so the fit stays on the safe side)."""
        tc = self.config.train
        if micro_batch is not None:
            tc = tc.model_copy(update={"batch_size": micro_batch * self.world, "accumulation": 1})
        elif accumulation is not None:
            tc = tc.model_copy(update={"accumulation": accumulation})
        config = self.config.model_copy(update={"train": tc})
        self.net.train()
        with torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext():
            for _ in range(n):
                _, _, applied = self.trainee.step(self.images, config)
                self.ema.update(self.raw_net, 0.999, applied)
                self.images += tc.batch_size
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def clear(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        release_memory(self.device)

    def close(self) -> None:
        """Drop the network, optimizer and data now, so what runs next in this process starts clean."""
        device = self.device
        self.__dict__.clear()
        release_memory(device)


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(s in text for s in ("out of memory", "can't allocate memory", "ALLOC_FAILED"))


@dataclass
class BatchMemory:
    micro_batch: int  # per process
    peak_bytes: int | None  # measured; None when not run or out of memory
    estimated_bytes: int | None  # extrapolated from smaller batches where not measured
    fits: bool
    out_of_memory: bool = False


@dataclass
class Fit:
    device: str
    budget_bytes: int
    budget_source: str
    batch_size: int  # the configured effective batch, kept
    configured_micro_batch: int  # per process
    configured_need_bytes: int | None  # measured, or estimated when it could not run
    configured_need_estimated: bool
    micro_batch: int | None  # the largest that fits (per process); None: none fits
    accumulation: int | None  # train.accumulation that keeps batch_size with that micro-batch
    need_bytes: int | None  # measured at micro_batch
    by_batch: list[BatchMemory] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def fits_as_configured(self) -> bool:
        return self.micro_batch == self.configured_micro_batch


def default_budget(device: torch.device) -> tuple[int, str]:
    """Free GPU memory x 0.9 on a GPU, available RAM x 0.8 elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9), "free GPU memory x 0.9"
    _, available = meminfo()
    if not available:
        raise UserError("cannot tell how much RAM is available here; pass --memory-budget GB")
    return int(available * 0.8), "available RAM x 0.8"


def _candidates(per_process_batch: int, configured: int) -> list[int]:
    """Powers of two that divide the batch, up to the configured micro-batch, and that micro-batch."""
    sizes = {configured} | {2**k for k in range(configured.bit_length()) if 2**k <= configured and per_process_batch % 2**k == 0}
    return sorted(sizes)[-SWEEP_SIZES:]


def _extrapolate(measured: list[tuple[int, int]], size: int) -> tuple[int, int] | None:
    """(linear, proportional) memory estimates at `size` from measured (batch, bytes); the second is an upper bound."""
    if not measured:
        return None
    (b2, m2) = measured[-1]
    proportional = int(m2 * size / b2)
    if len(measured) < 2:
        return proportional, proportional
    (b1, m1) = measured[-2]
    slope = max((m2 - m1) / (b2 - b1), 0.0)
    return int(m2 + slope * (size - b2)), proportional


def _sweep(t: _Trainee, budget: int) -> list[BatchMemory]:
    """Peak memory at growing micro-batches, stopping at the first that does not fit."""
    tc = t.config.train
    per_process_batch = tc.batch_size // t.world
    rows: list[BatchMemory] = []
    measured: list[tuple[int, int]] = []
    for size in _candidates(per_process_batch, tc.micro_batch // t.world):
        estimate = _extrapolate(measured, size)
        if t.device.type != "cuda" and estimate is not None:
            # On CPU nothing stops a step from exhausting RAM: run only what the estimates call safe.
            linear, upper = estimate
            available = meminfo()[1]
            if linear > budget * 1.25 or (available and upper > available * 0.9):
                rows.append(BatchMemory(size, None, linear, False))
                break
        oom = False
        try:
            with PeakMemory(t.device, t.baseline) as meter:
                t.steps(SWEEP_STEPS, micro_batch=size, eager=True)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            oom = True
        t.clear()  # outside the except block, so the traceback's activations are freed too
        if oom:
            rows.append(BatchMemory(size, None, estimate[0] if estimate else None, False, out_of_memory=True))
            break
        measured.append((size, meter.peak))
        rows.append(BatchMemory(size, meter.peak, None, meter.peak <= budget))
        if meter.peak > budget:
            break
    return rows


def _fit(t: _Trainee, rows: list[BatchMemory], budget: int, budget_source: str) -> Fit:
    tc = t.config.train
    per_process_batch, configured = tc.batch_size // t.world, tc.micro_batch // t.world
    fitting = [r for r in rows if r.fits]
    best = fitting[-1] if fitting else None
    at_configured = next((r for r in rows if r.micro_batch == configured), None)
    need, estimated = (at_configured.peak_bytes, False) if at_configured and at_configured.peak_bytes is not None else (None, True)
    if need is None:
        measured = [(r.micro_batch, r.peak_bytes) for r in rows if r.peak_bytes is not None]
        need = _extrapolate(measured, configured)[0] if len(measured) >= 2 else None
    suggestions = []
    if best is None or best.micro_batch < configured:
        if t.device.type == "cuda" and t.accelerator.mixed_precision == "no" and torch.cuda.is_bf16_supported():
            suggestions.append("train.mixed_precision=bf16 stores activations in half the bytes")
        suggestions.append("gradient checkpointing would trade compute for activation memory (not yet a difftrain setting)")
        if best is None:
            suggestions.append(f"a smaller model ({smaller_network_hint(t.config.model, t.modality)}) needs less")
    return Fit(str(t.device), budget, budget_source, tc.batch_size, configured, need, estimated,
               best.micro_batch if best else None, per_process_batch // best.micro_batch if best else None,
               best.peak_bytes if best else None, rows, suggestions)


def _build_and_fit(config: Config, data: DataShape, memory_budget: int | None) -> tuple[_Trainee, Fit]:
    t = _Trainee(config, data)
    budget, source = (memory_budget, "--memory-budget") if memory_budget else default_budget(t.device)
    return t, _fit(t, _sweep(t, budget), budget, source)


def fit_micro_batch(config: Config, data: DataShape, memory_budget: int | None = None) -> Fit:
    """The largest micro-batch of `config` that fits the budget (bytes; default `default_budget`), by real steps."""
    t, fit = _build_and_fit(config, data, memory_budget)
    t.close()
    return fit


@dataclass
class Probe:
    device: str
    precision: str
    sample_shape: list[int]
    num_classes: int
    data: str  # where the shape came from
    parameters: int
    memory_kind: str  # what peak_memory_bytes counts
    batch_size: int
    micro_batch: int  # per process, as measured (the fit's)
    accumulation: int
    peak_memory_bytes: int  # over the timed steps at micro_batch x accumulation
    warmup_steps: int
    timed_steps: int
    step_seconds: float
    images_per_second: float
    duration_images: int
    predicted_train_seconds: float  # the configured duration at the measured speed
    grids: int
    predicted_wall_seconds: float  # training plus the PNG grids it writes
    checkpoint_bytes: int  # weights + EMA weights + optimizer state
    checkpoints_on_disk: int  # keep_checkpoints + 1: the newest is written before the oldest goes
    disk_needed_bytes: int
    sampler: str
    network_evaluations: int  # per sample, guidance included
    sample_batch: int
    sample_seconds_per_image: float
    sampling_peak_memory_bytes: int  # one network call at sample_batch (CPU: growth over the trained state)
    seconds: float  # how long the probe took


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _time_sampling(t: _Trainee) -> tuple[float, int]:
    """Seconds per sampled image (one network call at the sampling batch x evaluations) and that call's peak memory."""
    config = t.config
    spec = SamplingSpec.from_config(config.sample)
    n = config.sample.batch_size
    # A call costs the same at any noise level: a data batch and training noise levels fit every formulation
    # (token ids for masked diffusion, where Gaussian noise would not be an input).
    x = t.batches.batch(0, n)[0].to(t.device)
    sigma = t.denoiser.formulation.sample_training_sigma(n, device=t.device)
    labels = torch.arange(n, device=t.device) % t.num_classes if t.num_classes else None
    denoiser = t.denoiser.with_net(t.ema.net)
    with torch.no_grad(), t.accelerator.autocast():
        denoiser(x[:2], sigma[:2], None if labels is None else {"label": labels[:2]})  # warm-up
        with PeakMemory(t.device) as meter:
            start = time.perf_counter()
            denoiser(x, sigma, None if labels is None else {"label": labels})
            if t.device.type == "cuda":
                torch.cuda.synchronize(t.device)
            seconds = time.perf_counter() - start
    calls = 1 if config.model.is_autoencoder else spec.network_evaluations  # (an autoencoder reconstructs once)
    return seconds / n * calls, meter.peak


def probe_config(config: Config, data: DataShape, memory_budget: int | None = None,
                 warmup_steps: int = 1, timed_steps: int = 3) -> tuple[Probe | None, Fit]:
    """Fit the micro-batch, then time real steps at it; None for the probe when no micro-batch fits."""
    started = time.perf_counter()
    t, fit = _build_and_fit(config, data, memory_budget)
    if fit.micro_batch is None:
        t.close()
        return None, fit
    tc = config.train
    compiled = enabled(t.config.train.compile, t.device.type)
    if fit.accumulation == 1 and not compiled:
        warmup_steps = SWEEP_STEPS  # the sweep's last steps were this very step: they warmed it up
    else:
        # A compiled network compiles (and records its CUDA graphs) in its first steps: never timed.
        warmup_steps = max(warmup_steps, 3) if compiled else warmup_steps
        t.steps(warmup_steps, accumulation=fit.accumulation)
        t.clear()
    with PeakMemory(t.device, t.baseline) as meter:
        start = time.perf_counter()
        t.steps(timed_steps, accumulation=fit.accumulation)
        step_seconds = (time.perf_counter() - start) / timed_steps
    t.clear()
    sample_seconds, sampling_peak = _time_sampling(t)

    images_per_second = tc.batch_size / step_seconds
    goal = total_images(tc)
    grids = (math.ceil(goal / tc.grid_every_images) if tc.grid_every_images else 1)  # every grid_every_images, and the last
    grid_images = 10 * t.num_classes if t.num_classes else 64
    train_seconds = goal / images_per_second
    weights = _tensor_bytes(t.raw_net.state_dict())
    checkpoint = 2 * weights + _tensor_bytes(t.optimizer.state_dict()["state"])
    kept = tc.keep_checkpoints + 1
    probe = Probe(
        device=str(t.device), precision=t.accelerator.mixed_precision, sample_shape=list(data.modality.shape),
        num_classes=t.num_classes, data=data.source, parameters=sum(p.numel() for p in t.raw_net.parameters()),
        memory_kind="CUDA allocator peak" if t.device.type == "cuda" else "growth of the process's resident memory",
        batch_size=tc.batch_size, micro_batch=fit.micro_batch, accumulation=fit.accumulation, peak_memory_bytes=meter.peak,
        warmup_steps=warmup_steps, timed_steps=timed_steps, step_seconds=step_seconds, images_per_second=images_per_second,
        duration_images=goal, predicted_train_seconds=train_seconds, grids=grids,
        predicted_wall_seconds=train_seconds + grids * grid_images * sample_seconds,
        checkpoint_bytes=checkpoint, checkpoints_on_disk=kept, disk_needed_bytes=checkpoint * kept,
        sampler=config.sample.sampler, network_evaluations=SamplingSpec.from_config(config.sample).network_evaluations,
        sample_batch=config.sample.batch_size, sample_seconds_per_image=sample_seconds,
        sampling_peak_memory_bytes=sampling_peak, seconds=time.perf_counter() - started)
    t.close()
    return probe, fit
