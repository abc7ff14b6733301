"""The training loop. It knows neither the formulation nor the modality: it sees a
denoiser, a loss and batches of tensors. Durations, LR schedule and EMA count
training images, so results do not depend on the batch split or process count.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.distributed.tensor import DTensor

from difftrain import atomic
from difftrain.config import Config, TrainConfig
from difftrain.data import PreparedDataset, load_dataset
from difftrain.data.loader import ArrayBatches, ReplayBatches
from difftrain.diffusion import Denoiser, denoising_loss
from difftrain.distributed import WAIT_FOR_MAIN
from difftrain.errors import UserError
from difftrain.hardware.memory import PeakMemory
from difftrain.conditioning import ClassLabels
from difftrain.models import build_network
from difftrain.pretrained.lora import parameter_counts
from difftrain.pretrained.source import Pretrained, config_for_source, open_pretrained, transferable
from difftrain.pretrained.transfer import LoadReport, label_space, transfer_weights
from difftrain.store.run import (adapt_network, formulation_of, label_map, load_weights, replay_path, resolve_dataset,
                                 save_run_info, with_data_defaults)
from difftrain.sampling import SamplingSpec, generate
from difftrain.store.checkpoint import (Checkpoint, best_record, checkpoint_images, latest_checkpoint, list_checkpoints,
                                           save_best, save_checkpoint)
from difftrain.training.ema import EMA, ema_beta
from difftrain.store.metrics_log import MetricsLog
from difftrain.training.optim import build_optimizer, learning_rate, skips_on_device
from difftrain.training.performance import (apply_memory_format, attention_kernel, begin_graph_step, compile_network,
                                             resolve_precision)
from difftrain.training.resume_state import load_optimizer_state, process_rng, restore_process_rng
from difftrain.training.sharding import (MainProcessCopy, by_position, enable_on_cpu_processes,
                                         float32_weights_and_gradients, full_weights, is_sharded, load_sharded_optimizer_state,
                                         optimizer_state, shard_like, shard_size, sharded_config)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    images: int
    seconds: float
    images_per_second: float
    final_loss: float
    nonfinite_steps: int
    history: list[dict] = field(default_factory=list)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    if cfg.device == "cuda" and not cuda:
        raise UserError("train.device=cuda but no CUDA GPU is usable; use train.device=auto or cpu")
    device_type = "cuda" if cuda else "mps" if cfg.device == "mps" else "cpu"
    # accelerate keeps one precision per process; one process may train runs of several (the doctor
    # then training, tests, benchmarks). The distributed set-up (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=device_type == "cpu", mixed_precision=resolve_precision(cfg, device_type),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=WAIT_FOR_MAIN)])
    enable_on_cpu_processes(accelerator)
    if is_sharded(accelerator):  # (which refuses what difftrain does not run: FSDP1, DeepSpeed, ...)
        float32_weights_and_gradients(accelerator)
    return accelerator


def total_images(cfg: TrainConfig) -> int:
    return cfg.duration_steps * cfg.batch_size if cfg.duration_steps else cfg.duration_images


def _due(images: int, prev: int, every: int) -> bool:
    """True when a multiple of `every` lies in (prev, images]."""
    return every > 0 and images // every > prev // every


RUN_FILES = {"config.yaml", "dataset.json", "checkpoints", "samples", "eval", "metrics.jsonl", "tensorboard", "README.md", "data"}


def _resumable_checkpoint(run_dir: Path, resume: bool, console: Console) -> Checkpoint | None:
    """The checkpoint to resume from, after refusing to train over anything else."""
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "config.yaml").is_file():
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES)
        if foreign:
            raise UserError(f"--out {run_dir} is a folder with other files ({', '.join(foreign[:3])}); choose a new or empty folder for the run")
    if not resume:
        if list_checkpoints(run_dir):
            raise UserError(f"{run_dir} already holds a trained run; pass --resume to continue it or choose another --out")
        return None
    existing = latest_checkpoint(run_dir, warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
    if existing is None and list_checkpoints(run_dir):
        raise UserError(f"no valid checkpoint left in {run_dir / 'checkpoints'} to resume from")
    # Damaged checkpoints newer than the one resumed from are set aside (kept, never deleted),
    # so they cannot shadow or displace the checkpoints that this run writes next.
    for path in list_checkpoints(run_dir):
        if existing is not None and checkpoint_images(path) > existing.images:
            path.rename(path.with_name(f"damaged-{path.name}"))
            console.print(f"[yellow]warning:[/] set aside damaged checkpoint as {path.with_name(f'damaged-{path.name}')}")
    return existing


class DuringTraining:
    """Evaluate the EMA denoiser at a checkpoint, log it, and copy the checkpoint to
    checkpoints/best when it is the best so far by eval.best_metric (kept across resumes)."""

    def __init__(self, config: Config, run_dir: Path, dataset: PreparedDataset, num_classes: int, device: torch.device,
                 console: Console, data_labels: list[int] | None = None):
        self.config, self.run_dir, self.dataset, self.console = config, run_dir, dataset, console
        self.num_classes, self.device, self.data_labels = num_classes, device, data_labels
        self.metric = config.eval.best_metric
        if self.metric == "cas" and not num_classes:
            raise UserError("eval.best_metric=cas needs a class-conditional model on labelled data; choose e.g. eval.best_metric=fid")
        previous = best_record(run_dir) or {}
        self.best = previous.get(self.metric)
        from difftrain.evaluation.run_eval import extractor_for

        # Built before training starts, so that a feature space that cannot work (an unlabelled
        # dataset for the domain classifier, a missing weights file) stops the run at once.
        try:
            self.extractor = extractor_for(dataset, config.eval, list(config.eval.during_metrics), device=device)
        except UserError as e:
            raise UserError(f"evaluation during training (eval.every_images={config.eval.every_images}): {e}; "
                            "or turn it off with eval.every_images=0") from None

    def better(self, value: float) -> bool:
        from difftrain.evaluation.suite import LOWER_IS_BETTER

        if self.best is None:
            return math.isfinite(value)
        return value < self.best if self.metric in LOWER_IS_BETTER else value > self.best

    def __call__(self, denoiser: Denoiser, images: int, checkpoint_path: Path, log: MetricsLog) -> None:
        from difftrain.evaluation.run_eval import evaluate_during_training

        ec = self.config.eval
        record = evaluate_during_training(denoiser, self.dataset, self.extractor, self.config, images_seen=images,
                                          to_model=self.data_labels, device=self.device)
        record["checkpoint"] = str(checkpoint_path.resolve())
        value = record.get(self.metric)
        if value is None:
            raise UserError(f"eval.best_metric={self.metric} was not computed (eval.during_metrics={ec.during_metrics})")
        is_best = self.better(value)
        record["best"] = is_best
        log.write(record)
        if is_best:
            self.best = value
            save_best(self.run_dir, checkpoint_path, record)
        floor = record.get(f"{self.metric}_floor")
        self.console.print(f"eval at {images:,} images: {self.metric} {value:.4g}" + (f" (floor {floor:.4g})" if floor is not None else "")
                           + (" - new best, saved to checkpoints/best" if is_best else ""))


def train_step(config: Config, accelerator: Accelerator, net: torch.nn.Module, denoiser: Denoiser,
               optimizer: torch.optim.Optimizer, batches: ArrayBatches, images: int, noise_gen: torch.Generator,
               conditioner: ClassLabels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on the global batch at stream position `images`: (this process's summed
    loss, grad norm, applied), all tensors on the device, so that no step waits for the device.

    A NaN/Inf gradient never reaches the weights: the optimizer skips the update (found_inf) and
    `applied` is False. The gradient norm comes after DDP's all-reduce, so every process agrees.
    """
    tc = config.train
    world, device = accelerator.num_processes, accelerator.device
    per_process = tc.micro_batch // world
    optimizer.zero_grad(set_to_none=True)
    step_loss = torch.zeros((), device=device)
    sigma = denoiser.formulation.sample_training_sigma(tc.batch_size, generator=noise_gen, device=device)
    noise = torch.randn((tc.batch_size, *batches.modality.model_shape), generator=noise_gen, device=device)
    keep_label = torch.rand(tc.batch_size, generator=noise_gen, device=device) >= config.model.label_dropout
    for micro in range(tc.accumulation):
        # This process's share of micro-batch `micro` of the global batch.
        start = micro * tc.micro_batch + accelerator.process_index * per_process
        part = slice(start, start + per_process)
        x0, labels = batches.batch(images + start, per_process)
        cond = conditioner.drop(conditioner.encode(labels), keep_label[part])
        # Under FSDP every micro-batch's gradients are reduced to shards at once: skipping that would keep
        # whole, unsharded gradients on every process between micro-batches.
        last = micro == tc.accumulation - 1 or accelerator.is_fsdp2
        sync = contextlib.nullcontext() if last else accelerator.no_sync(net)
        begin_graph_step(tc, device.type, world)
        with sync, accelerator.autocast(), attention_kernel(device):
            loss = denoising_loss(denoiser, x0, cond, weighting=config.diffusion.weighting,
                                  min_snr_gamma=config.diffusion.min_snr_gamma, sigma=sigma[part], noise=noise[part])
            # Sum over the whole global batch; DDP averages over processes.
            accelerator.backward(loss.sum() / (tc.batch_size // world))
        step_loss += loss.detach().sum()
    grad_norm = accelerator.clip_grad_norm_(net.parameters(), config.optim.grad_clip or float("inf"))
    if isinstance(grad_norm, DTensor):  # FSDP: the norm over every process's shards
        grad_norm = grad_norm.full_tensor()
    applied = torch.isfinite(grad_norm)
    inner = getattr(optimizer, "optimizer", optimizer)
    if accelerator.scaler is not None:
        optimizer.step()  # the GradScaler skips a non-finite fp16 step itself (and lowers its scale)
    elif skips_on_device(inner):
        inner.found_inf = (~applied).float()  # the optimizer reads it on the device: no wait here
        optimizer.step()
    elif applied:  # an optimizer that cannot: ask the device (a sync, once per step)
        optimizer.step()
    return step_loss, grad_norm, applied


def _starting_point(config: Config, dataset: PreparedDataset, run_dir: Path, existing: Checkpoint | None,
                    source: Pretrained | None, console: Console) -> tuple[Config, Pretrained | None, PreparedDataset | None, list[str]]:
    """What a run starts from besides its data: the --init source (its network and formulation
    taken into the config), the replayed data, and the model's classes."""
    fc = config.finetune
    if fc.init and existing is None and source is None:
        source = open_pretrained(fc.init, warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
        config = config_for_source(config, source)
    replay = None
    if fc.replay:
        if not fc.init:
            raise UserError("finetune.replay (--replay) mixes in the data of the run you start from: pass --init RUN")
        replay = load_dataset(replay_path(fc))
        if replay.sample_shape != dataset.sample_shape or (replay.num_classes == 0) != (dataset.num_classes == 0):
            raise UserError(f"the replayed data {replay.path} holds {replay.sample_shape} images "
                            f"{'with' if replay.num_classes else 'without'} labels, the new data {dataset.sample_shape} "
                            f"{'with' if dataset.num_classes else 'without'}: replay needs the same shape, and labels on both or neither")
    # The model's classes: kept from the run before when resuming, else the source's then the data's.
    if existing is not None:
        model_classes = json.loads((run_dir / "dataset.json").read_text())["class_names"] or []
    else:
        model_classes = label_space(source, dataset.class_names, *([replay.class_names] if replay else []))
    new_classes = source is not None and config.model.conditional and len(model_classes) > len(source.class_names or [])
    if new_classes and (fc.lora_rank or fc.train_only) and "class_embedding" not in fc.train_only:
        # New classes need their embedding rows trained, even when the rest is frozen or adapted.
        config = config.model_copy(update={"finetune": fc.model_copy(update={"train_only": [*fc.train_only, "class_embedding"]})})
    return config, source, replay, model_classes


def _record_start(run_dir: Path, init: str, source: Pretrained, report: LoadReport, trainable: int, total: int, console: Console) -> None:
    """Print the load report and keep it as RUN/init.json (the run's README shows it)."""
    console.print(f"started from {source.origin}")
    for line in [*source.notes, *report.lines()]:
        console.print(f"  {line}")
    atomic.write_json(run_dir / "init.json", {
        "source": init, "origin": source.origin, "notes": source.notes,
        "checkpoint": str(source.checkpoint.path.resolve()) if source.checkpoint else None,
        **report.as_dict(), "trainable_parameters": trainable, "parameters": total})


def train(config: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          dataset: PreparedDataset | None = None, stop_at_step: int | None = None,
          console: Console | None = None, source: Pretrained | None = None) -> TrainResult:
    """Train the configured model into `run_dir`; `stop_at_step` stops early as if interrupted.

    With finetune.init the network starts from that source's weights (`source`, when the caller
    has opened it already and adapted the config with `config_for_source`).
    """
    run_dir = Path(run_dir)
    tc = config.train
    console = console or Console(stderr=True)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    accelerator = make_accelerator(tc)
    sharded = is_sharded(accelerator)
    main = accelerator.is_main_process
    world = accelerator.num_processes
    if tc.batch_size % (tc.accumulation * world):
        raise UserError(f"train.batch_size={tc.batch_size} must divide into train.accumulation={tc.accumulation} x {world} processes")
    goal = total_images(tc)

    existing = _resumable_checkpoint(run_dir, resume, console) if main or resume else None
    if dataset is None:
        # One process prepares a built-in dataset; the others wait for it, then all load it.
        path = resolve_dataset(config, run_dir, progress=progress and main, prepare_here=main)
        accelerator.wait_for_everyone()
        dataset = load_dataset(path)
    if dataset.num_classes == 0 and config.model.conditional:
        config = config.model_copy(update={"model": config.model.model_copy(update={"conditional": False})})
    config, source, replay, model_classes = _starting_point(config, dataset, run_dir, existing, source, console)
    config = with_data_defaults(config, dataset.modality, dataset.train_data)
    run_config = config  # what config.yaml keeps: the user's settings, not the ones FSDP turns off
    if sharded:
        config = sharded_config(config)
        tc = config.train
    fc = config.finetune
    num_classes = len(model_classes) if config.model.conditional else 0
    data_labels = label_map(dataset.class_names, model_classes) if num_classes else None
    # Evaluation during training scores checkpoints and keeps the best as checkpoints/best. It is set up
    # (its feature classifier trained) before training, so a setting that cannot work stops the run now.
    evaluator = DuringTraining(config, run_dir, dataset, num_classes, accelerator.device, console, data_labels) \
        if config.eval.every_images and main else None
    accelerator.wait_for_everyone()

    # Peak memory from here on (model, optimizer state, activations), as `difftrain doctor` measures it.
    memory = PeakMemory(accelerator.device).__enter__()

    # Network, EMA and optimizer; the seed fixes the initial weights.
    torch.manual_seed(tc.seed)
    net = build_network(config.model, dataset.modality, num_classes)
    init_report = None
    if source is not None and existing is None:
        init_report = transfer_weights(transferable(net, f"--init {fc.init}"), source, model_classes, fc.allow_partial)
    net = adapt_network(net, fc)
    trainable, total = parameter_counts(net)
    device = accelerator.device
    net = apply_memory_format(net, tc, device.type)
    ema = EMA(net)
    net = compile_network(net, tc, device.type, world)
    optimizer = build_optimizer([p for p in net.parameters() if p.requires_grad], config.optim)
    # One noise stream for the whole global batch, identical on every process: each takes
    # its slice, so accumulation and the process count do not change the random numbers.
    noise_gen = torch.Generator(device).manual_seed(tc.seed * 7919 + 1)
    # Dropout draws from the global generator: a stream of each process's own (the weights, drawn
    # above, are the same everywhere), so the processes do not drop the same units.
    torch.manual_seed(tc.seed * 7919 + 2 + accelerator.process_index)
    step = images = nonfinite = 0
    if existing is not None:
        load_weights(net, existing.weights(ema=False), existing.path, run_dir / "config.yaml")
        load_weights(ema.net, existing.weights(ema=True), existing.path, run_dir / "config.yaml")
        state = existing.training_state()
        if not sharded:  # a sharded optimizer takes its state after `prepare` has sharded it
            load_optimizer_state(optimizer, by_position(state["optimizer"], net))
        noise_gen.set_state(state["noise_rng"])
        restore_process_rng(state, accelerator, tc.seed * 7919 + 2 + existing.images * 31,
                            warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
        step, images, nonfinite = existing.info["step"], existing.images, state.get("nonfinite_steps", 0)
        if main:
            console.print(f"resuming from {existing.path} ({images:,} images, step {step})")
    # Only now, with the checkpoint known to fit, does the run's config change.
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_info(run_dir, run_config, dataset, model_classes if num_classes else None)
        if init_report is not None:
            _record_start(run_dir, fc.init, source, init_report, trainable, total, console)
        if trainable < total:
            console.print(f"training {trainable:,} of {total:,} parameters ({trainable / total:.2%})")
        if world > 1:
            console.print(f"training in {world} processes ({accelerator.distributed_type.value}, {device.type}), "
                          f"{tc.micro_batch // world} images per process per micro-batch")
    net, optimizer = accelerator.prepare(net, optimizer)
    raw_net = accelerator.unwrap_model(net)
    ema_full = MainProcessCopy(ema.net, main, sharded)  # the EMA's full weights, for grids and evaluation
    if sharded:
        ema.net = shard_like(ema.net, accelerator)
        if existing is not None:
            load_sharded_optimizer_state(raw_net, getattr(optimizer, "optimizer", optimizer), state["optimizer"])
        if main:
            console.print(f"FSDP: each process holds {shard_size(raw_net):,} of the network's {total:,} weights")
    else:  # (sharding placed the EMA's shards where the network's are, on the CPU when offloading)
        ema.net.to(device)
    denoiser = Denoiser(net, formulation_of(config))
    batches = ArrayBatches(dataset.train_data, dataset.train_labels if num_classes else None, dataset.modality, seed=tc.seed,
                           device=device, to_model=data_labels, hflip=tc.hflip)
    if replay is not None:
        old = ArrayBatches(replay.train_data, replay.train_labels if num_classes else None, replay.modality, seed=tc.seed + 1,
                           device=device,
                           to_model=label_map(replay.class_names, model_classes, f"the replayed data {replay.path}") if num_classes else None,
                           hflip=tc.hflip)
        batches = ReplayBatches(batches, old, fc.replay)
    log = MetricsLog(run_dir, enabled=main)
    conditioner = ClassLabels(raw_net.null_label)

    # Fixed noise and labels for the grids, so grids over training are comparable.
    # Ten per class, one class per row.
    grid_n = 10 * num_classes if num_classes else 64
    grid_labels = np.arange(grid_n) // 10 if num_classes else None

    def write_grid() -> None:
        with ema_full.gathered(ema.net, device) as ema_net:
            if ema_net is None:  # not the main process
                return
            spec = SamplingSpec.from_config(config.sample, seed=tc.seed)
            samples = generate(Denoiser(ema_net, denoiser.formulation), dataset.modality, grid_n, grid_labels, spec, device=device)
        dataset.modality.save_preview(samples, run_dir / "samples" / f"grid-{images:09d}.png", labels=grid_labels,
                                      class_names=model_classes if num_classes else None, reference=dataset.train_data)

    def checkpoint() -> None:
        accelerator.wait_for_everyone()
        rng = process_rng(accelerator)  # every process's own generators, gathered to all
        # Under FSDP these gather the shards (collectives); otherwise the main process's own.
        weights, ema_weights = full_weights(raw_net, sharded), full_weights(ema.net, sharded)
        optim_state = optimizer_state(raw_net, getattr(optimizer, "optimizer", optimizer), sharded)
        if main:
            state = {"optimizer": optim_state, "noise_rng": noise_gen.get_state().cpu(), **rng,
                     "nonfinite_steps": nonfinite + int(skipped)}
            save_checkpoint(run_dir, weights=weights, ema_weights=ema_weights, state=state, step=step, images_seen=images,
                            keep=tc.keep_checkpoints, extra={"sample_shape": list(dataset.sample_shape), "num_classes": num_classes})
        accelerator.wait_for_everyone()

    def evaluate() -> None:
        with ema_full.gathered(ema.net, device) as ema_net:
            if evaluator is not None:  # (the main process's)
                # A private RNG stream: evaluating must not move the training's random numbers (resume = no stop).
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    evaluator(Denoiser(ema_net, denoiser.formulation), images,
                              run_dir / "checkpoints" / f"ckpt-{images:09d}", log)
        accelerator.wait_for_everyone()

    columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} img"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} img/s"), TimeElapsedColumn(), TimeRemainingColumn()]
    bar = Progress(*columns, console=console, disable=not (progress and main), transient=False)
    history: list[dict] = []
    # Loss, applied steps and skipped steps are summed on the device and read only when logged:
    # nothing in a step waits for the device to finish.
    window_loss, window_n = torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), dtype=torch.long, device=device)
    skipped = torch.zeros((), dtype=torch.long, device=device)  # non-finite steps since `nonfinite` was last read
    window_start, window_images = time.perf_counter(), images
    start_time, start_images = time.perf_counter(), images
    last_loss = math.nan
    net.train()
    with bar:
        task = bar.add_task("train", total=goal, completed=images, loss="-", speed="-")
        while images < goal and (stop_at_step is None or step < stop_at_step):
            lr = learning_rate(config.optim, images, goal)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, grad_norm, applied = train_step(config, accelerator, net, denoiser, optimizer, batches, images, noise_gen, conditioner)
            # A NaN/Inf never reached the weights (the optimizer skipped the update): the EMA skips it too.
            ema.update(raw_net, ema_beta(tc.batch_size, images + tc.batch_size, tc.ema_halflife_images, tc.ema_rampup), applied)
            window_loss += torch.where(applied, step_loss.double(), 0.0)
            window_n += applied
            skipped += ~applied
            prev, step, images = images, step + 1, images + tc.batch_size

            if _due(images, prev, tc.log_every_images) or images >= goal:
                now = time.perf_counter()
                speed = (images - window_images) / max(now - window_start, 1e-9)
                # Each process summed the loss of its share of the batch: add them up.
                total_loss, n_applied = accelerator.reduce(window_loss, "sum").item(), int(window_n)
                last_loss = total_loss / (n_applied * tc.batch_size) if n_applied else math.nan
                if int(skipped):  # counted on the device, reported here: `skipped` steps since the last record
                    nonfinite += int(skipped)
                    log.write({"images": images, "step": step, "event": "nonfinite_skipped", "skipped": int(skipped),
                               "nonfinite_steps": nonfinite})
                    skipped.zero_()
                record = {"images": images, "step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                          "images_per_s": speed, "nonfinite_steps": nonfinite, "peak_memory_bytes": memory.so_far()}
                history.append(record)
                log.write(record)
                bar.update(task, loss=f"{last_loss:.4f}", speed=f"{speed:,.0f}")
                window_loss.zero_()
                window_n.zero_()
                window_start, window_images = now, images
            bar.update(task, completed=min(images, goal))
            if (_due(images, prev, tc.checkpoint_every_images) or _due(images, prev, config.eval.every_images)) and images < goal:
                checkpoint()
            if _due(images, prev, config.eval.every_images) and images < goal:
                paused = time.perf_counter()
                evaluate()
                # Evaluation time is not training time: keep it out of the speed figures.
                paused = time.perf_counter() - paused
                window_start, start_time = window_start + paused, start_time + paused
            if _due(images, prev, tc.grid_every_images) and images < goal:
                write_grid()
    seconds = time.perf_counter() - start_time
    latest = latest_checkpoint(run_dir, warn=lambda m: None)
    if latest is None or latest.images != images:
        checkpoint()
    if config.eval.every_images and (latest is None or latest.images != images):
        evaluate()
    write_grid()
    if main and fc.init and fc.forgetting:
        from difftrain.evaluation.forgetting import forgetting_report

        try:
            forgetting_report(run_dir, dataset, log, device=device, console=console)
        except UserError as e:  # the model is trained and saved: a report that cannot be made must not fail the run
            console.print(f"[yellow]warning:[/] forgetting not measured: {e}")
    log.close()
    return TrainResult(run_dir, step, images, seconds, (images - start_images) / max(seconds, 1e-9), last_loss,
                       nonfinite + int(skipped), history)
