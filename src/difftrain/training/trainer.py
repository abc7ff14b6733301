"""The training loop. It knows neither the formulation nor the modality: it sees a trainee (training/trainee.py)
that steps on batches of tensors. `setup` builds one explicit training state; `run` loops over it and calls
named hooks (log, checkpoint, evaluate, grid). Durations, LR schedule and EMA count training images, so
results do not depend on the batch split or process count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from difftrain.progress import Progress, stderr_console
from difftrain import atomic
from difftrain.conditioning import takes_captions
from difftrain.config import Config, TrainConfig, save_config
from difftrain.data import PreparedDataset, load_dataset
from difftrain.data.loader import ArrayBatches, MixedBatches
from difftrain.errors import UserError
from difftrain.folder_lock import folder_lock
from difftrain.training.memory import PeakMemory
from difftrain.pretrained.source import Pretrained
from difftrain.sampling import SamplingSpec, generate
from difftrain.store.checkpoint import latest_checkpoint, save_checkpoint
from difftrain.store.latent import latent_dataset, latents_cache
from difftrain.store.metrics_log import MetricsLog, read_metrics
from difftrain.store.run import label_map, resolve_dataset, save_run_info, with_data_defaults
from difftrain.training.during_training import DuringTraining
from difftrain.store.posthoc_ema import drop_snapshots_after, profile_key, write_snapshot
from difftrain.training.ema import ema_beta
from difftrain.training.optim import learning_rate
from difftrain.training.resume_state import process_rng
from difftrain.training.sharding import full_weights, is_sharded, optimizer_state, shard_size, sharded_config
from difftrain.training.start import record_start, resumable_checkpoint, starting_point, unlabelled_data
from difftrain.training.trainee import Trainee, build_trainee, check_batch, make_accelerator


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


def total_images(cfg: TrainConfig) -> int:
    return cfg.duration_steps * cfg.batch_size if cfg.duration_steps else cfg.duration_images


def _due(images: int, prev: int, every: int) -> bool:
    """True when a multiple of `every` lies in (prev, images]."""
    return every > 0 and images // every > prev // every


def missed_evaluation(state: "TrainingState") -> bool:
    """Whether the checkpoint the run resumes from was due an evaluation that its log lacks: a run killed between writing
    that checkpoint and logging its evaluation (found by benchmarks/kill_points.py, a sweep's trial failing for want of
    its objective). The checkpoint holds the weights it scored, so it is scored on resuming, as it would have been."""
    every = state.config.eval.every_images
    if not every or state.images == 0:
        return False
    if not (state.images >= state.goal or _due(state.images, state.images - state.config.train.batch_size, every)):
        return False
    return not any(r.get("during_training") and r.get("images") == state.images for r in read_metrics(state.run_dir))


@dataclass
class TrainingState:
    """Everything a run's loop reads and moves, in one place."""

    config: Config  # as trained (FSDP's forced settings included); config.yaml keeps the user's
    run_dir: Path
    dataset: PreparedDataset
    model_classes: list[str]  # label i of the model is model_classes[i] ([] when unconditional)
    trainee: Trainee
    log: MetricsLog
    memory: PeakMemory
    console: Console
    evaluator: DuringTraining | None
    goal: int  # training images
    step: int = 0
    images: int = 0
    nonfinite: int = 0  # non-finite steps counted so far (read from the device at each log)
    snapshot_images: int = -1  # when the post-hoc EMA snapshots were last written (a checkpoint at once writes none again)
    # Summed on the device and read only when logged: nothing in a step waits for the device.
    window_loss: torch.Tensor | None = None
    window_n: torch.Tensor | None = None
    skipped: torch.Tensor | None = None  # non-finite steps since `nonfinite` was last read
    in_a_row: torch.Tensor | None = None  # consecutive non-finite steps, up to now
    history: list[dict] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.trainee.accelerator.is_main_process

    @property
    def num_classes(self) -> int:
        return len(self.model_classes)


@dataclass
class Hooks:
    """What the loop does besides stepping, each a function of the state; `default_hooks` gives the run's own."""

    log: Callable[[TrainingState, dict], None]
    checkpoint: Callable[[TrainingState], None]
    evaluate: Callable[[TrainingState], dict | None]
    grid: Callable[[TrainingState], None]


def setup(config: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          dataset: PreparedDataset | None = None, console: Console | None = None,
          source: Pretrained | None = None) -> TrainingState:
    """The training state of `config` in `run_dir`: a new run, or the latest checkpoint's with `resume`.

    With finetune.init the network starts from that source's weights (`source`, when the caller has opened it
    already and adapted the config with `config_for_source`). Nothing is written before every check has passed.
    """
    run_dir = Path(run_dir)
    tc = config.train
    console = console or stderr_console()
    warn = lambda m: console.print(f"[yellow]warning:[/] {m}")  # noqa: E731
    if tc.threads:
        torch.set_num_threads(tc.threads)
    accelerator = make_accelerator(tc)
    main, world = accelerator.is_main_process, accelerator.num_processes
    check_batch(tc, world)

    existing = resumable_checkpoint(run_dir, resume, console) if main or resume else None
    if main and run_dir.is_dir():  # a run folder (checked above): half-written files of a killed run are never read
        atomic.remove_leftovers(run_dir)
    if dataset is None:
        # One process prepares a built-in dataset; the others wait for it, then all load it.
        path = resolve_dataset(config, run_dir, progress=progress and main, prepare_here=main)
        accelerator.wait_for_everyone()
        dataset = load_dataset(path)
    captioned = dataset.train_captions is not None
    if dataset.num_classes == 0 and not captioned and config.model.conditional:
        config = config.model_copy(update={"model": config.model.model_copy(update={"conditional": False})})
    config, source, replay, label_space = starting_point(config, dataset, run_dir, existing, source, console)
    unlabelled = unlabelled_data(config, dataset)
    if main and existing is None:
        # A new run exists from here, its folder and config.yaml, before the slow steps (latent codes, the evaluation's
        # feature classifier, the network): `ls` and TensorBoard see it at once. The full record follows them.
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        console.print(f"run {run_dir}: config.yaml written; preparing to train")
    if config.model.latent:  # latent diffusion: the images seen through an autoencoder's latent space
        config, dataset = latent_dataset(config, dataset, run_dir, resume=existing is not None, device=accelerator.device,
                                         console=console)
    config = with_data_defaults(config, dataset.modality, dataset.train_data)
    run_config = config  # what config.yaml keeps: the user's settings, not the ones FSDP turns off
    if is_sharded(accelerator):
        config = sharded_config(config)
    # Captioned data conditions the model on its captions (the batches carry caption rows where labels would be).
    captioned = captioned and config.model.conditional
    num_classes = len(label_space) if config.model.conditional and not captioned else 0
    if captioned and config.train.hflip:
        warn("train.hflip mirrors the images but not their captions: a caption that says left or right then describes "
             "the wrong image half the time (set train.hflip=false for such captions)")
    model_classes = label_space if num_classes else []
    data_labels = label_map(dataset.class_names, model_classes) if num_classes else None
    if config.model.is_autoencoder and config.eval.every_images:
        raise UserError(f"eval.every_images={config.eval.every_images}: evaluation during training samples a diffusion model, "
                        "and an autoencoder draws no samples; set eval.every_images=0 and measure its reconstructions "
                        f"with `difftrain eval {run_dir}` after training")
    # Evaluation during training scores checkpoints and keeps the best as checkpoints/best. It is set up
    # (its feature classifier trained) before training, so a setting that cannot work stops the run now.
    evaluator = DuringTraining(config, run_dir, dataset, num_classes, accelerator.device, console, data_labels) \
        if config.eval.every_images and main else None
    accelerator.wait_for_everyone()

    # Peak memory from here on (model, optimizer state, activations), as `difftrain doctor` measures it.
    memory = PeakMemory(accelerator.device).__enter__()

    def conditions(ds: PreparedDataset):  # what the batches carry beside the items: caption rows, labels or nothing
        return ds.train_captions if captioned else ds.train_labels if num_classes else None

    def batches_of(device: torch.device) -> ArrayBatches | MixedBatches:
        # (latent images: batches of latents, encoded once)
        items, view = dataset.modality.batch_view(dataset.train_data, latents_cache(run_dir, "train"), device)
        batches = ArrayBatches(items, conditions(dataset), view,
                               seed=config.train.seed, device=device, to_model=data_labels, hflip=config.train.hflip)
        if replay is not None:
            items, view = dataset.modality.batch_view(replay.train_data, latents_cache(run_dir, "replay"), device)
            old = ArrayBatches(items, conditions(replay), view,
                               seed=config.train.seed + 1, device=device, hflip=config.train.hflip,
                               to_model=label_map(replay.class_names, model_classes, f"the replayed data {replay.path}") if num_classes else None)
            batches = MixedBatches(batches, old, config.finetune.replay)
        if unlabelled is not None:
            items, view = dataset.modality.batch_view(unlabelled.train_data, latents_cache(run_dir, "unlabelled"), device)
            no_label = np.full(len(items), num_classes, np.int64)  # the network's extra "no label" row
            more = ArrayBatches(items, no_label, view, seed=config.train.seed + 2, device=device, hflip=config.train.hflip)
            batches = MixedBatches(batches, more, config.data.unlabelled_share)
        return batches

    trainee, resumed = build_trainee(config, accelerator, dataset.modality, num_classes, batches_of, source=source,
                                     model_classes=label_space, existing=existing, warn=warn)
    state = TrainingState(config, run_dir, dataset, model_classes, trainee, MetricsLog(run_dir, enabled=False), memory,
                          console, evaluator, total_images(config.train))
    if existing is not None:
        state.step, state.images, state.nonfinite = existing.info["step"], existing.images, resumed.get("nonfinite_steps", 0)
        if main:  # a continuation after the checkpoint (a crash's) left snapshots this run will take again
            drop_snapshots_after(run_dir, existing.images)
        if main:
            console.print(f"resuming from {existing.path} ({state.images:,} images, step {state.step})")
    # Only now, with the checkpoint known to fit, does the run's folder change.
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_info(run_dir, run_config, dataset, model_classes or None)
        if trainee.init_report is not None:
            record_start(run_dir, config.finetune.init, source, trainee.init_report, trainee.trainable, trainee.total, console)
        if trainee.trainable < trainee.total:
            console.print(f"training {trainee.trainable:,} of {trainee.total:,} parameters ({trainee.trainable / trainee.total:.2%})")
        if world > 1:
            kind = "FSDP" if trainee.sharded else accelerator.distributed_type.value
            console.print(f"training in {world} processes ({kind}, {accelerator.device.type}), "
                          f"{config.train.micro_batch // world} images per process per micro-batch")
        if trainee.sharded:
            console.print(f"FSDP: each process holds {shard_size(trainee.raw_net):,} of the network's {trainee.total:,} weights")
    # A run's log continues from its checkpoint: records of steps after it (a crash's) are dropped, and all of a run
    # killed before its first checkpoint, which starts again from nothing (found by benchmarks/kill_points.py).
    state.log = MetricsLog(run_dir, enabled=main, resume_at=state.images)
    device = accelerator.device
    state.window_loss = torch.zeros((), dtype=torch.float64, device=device)
    state.window_n = torch.zeros((), dtype=torch.long, device=device)
    state.skipped = torch.zeros((), dtype=torch.long, device=device)
    state.in_a_row = torch.zeros((), dtype=torch.long, device=device)
    return state


def write_checkpoint(state: TrainingState) -> None:
    """Every process's generators, the gathered weights and optimizer state, saved by the main process."""
    t = state.trainee
    accelerator = t.accelerator
    accelerator.wait_for_everyone()
    rng = process_rng(accelerator)  # every process's own generators, gathered to all
    # Under FSDP these gather the shards (collectives); otherwise the main process's own.
    weights, ema_weights = full_weights(t.raw_net, t.sharded), full_weights(t.ema.net, t.sharded)
    profiles = write_posthoc_snapshots(state)
    optim_state = optimizer_state(t.raw_net, getattr(t.optimizer, "optimizer", t.optimizer), t.sharded)
    if state.main:
        saved = {"optimizer": optim_state, "noise_rng": t.noise_gen.get_state().cpu(), **rng,
                 "nonfinite_steps": state.nonfinite + int(state.skipped)}
        if accelerator.scaler is not None:  # fp16: the loss scale, so that a resumed run scales as an unbroken one
            saved["grad_scaler"] = accelerator.scaler.state_dict()
        save_checkpoint(state.run_dir, weights=weights, ema_weights=ema_weights, state=saved, step=state.step,
                        images_seen=state.images, keep=state.config.train.keep_checkpoints,
                        extra={"sample_shape": list(state.dataset.sample_shape), "num_classes": state.num_classes},
                        posthoc_weights=profiles)
    accelerator.wait_for_everyone()


def write_posthoc_snapshots(state: TrainingState) -> dict[str, torch.Tensor]:
    """RUN/posthoc/ema-SIGMA-IMAGES.safetensors for each post-hoc EMA profile (gathered under FSDP, written by the
    main process); returns them all, keyed as a checkpoint keeps them."""
    t = state.trainee
    profiles = {}
    for sigma, profile in zip(t.posthoc.sigmas, t.posthoc.emas) if t.posthoc is not None else []:
        weights = full_weights(profile.net, t.sharded)
        if state.main:
            if state.snapshot_images != state.images:
                write_snapshot(state.run_dir, sigma, state.images, weights)
            profiles |= {profile_key(sigma, name): tensor for name, tensor in weights.items()}
    state.snapshot_images = state.images
    return profiles


def evaluate_ema(state: TrainingState) -> dict | None:
    """Evaluation during training of the EMA weights at the checkpoint just written; its record on the main
    process (None on the others)."""
    t = state.trainee
    device = t.device
    record = None
    with t.ema_full.gathered(t.ema.net, device) as ema_net:
        if state.evaluator is not None:
            # A private RNG stream: evaluating must not move the training's random numbers (resume = no stop).
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                record = state.evaluator(t.denoiser.with_net(ema_net), state.images,
                                         state.run_dir / "checkpoints" / f"ckpt-{state.images:09d}", state.log)
    t.accelerator.wait_for_everyone()
    return record


def write_grid(state: TrainingState) -> None:
    """A preview of the EMA's samples from fixed noise and labels (ten per class, one class per row), so grids over
    training are comparable."""
    t = state.trainee
    grid_n = 10 * state.num_classes if state.num_classes else 64
    grid_labels = np.arange(grid_n) // 10 if state.num_classes else None
    conditions, rows = grid_labels, grid_labels
    captions = preview_captions(state.dataset) if takes_captions(t.raw_net) else None
    if captions is not None:  # eight captions of the data, one per row
        grid_n, rows = 8 * len(captions), np.arange(8 * len(captions)) // 8
        conditions = captions[rows]
    with t.ema_full.gathered(t.ema.net, t.device) as ema_net:
        if ema_net is None:  # not the main process
            return
        spec = SamplingSpec.from_config(state.config.sample, seed=state.config.train.seed)
        with Progress(console=state.console, transient=True) as bar:  # seconds to minutes at the end of a run: say so
            task = bar.add_task(f"samples grid at {state.images:,} images", total=grid_n)
            samples = generate(t.denoiser.with_net(ema_net), state.dataset.modality, grid_n, conditions, spec,
                               device=t.device, progress=lambda k: bar.advance(task, k))
    state.dataset.modality.save_preview(samples, state.run_dir / "samples" / f"grid-{state.images:09d}.png", labels=rows,
                                        class_names=state.model_classes or (None if rows is None else [""] * int(rows.max() + 1)),
                                        reference=state.dataset.train_data)


def preview_captions(dataset: PreparedDataset) -> np.ndarray | None:
    """Up to eight distinct caption rows of the data (held-out ones first), the same at every grid."""
    rows = np.concatenate([dataset.test_captions, dataset.train_captions])
    _, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)[:8]]


def write_reconstructions(state: TrainingState) -> None:
    """An autoencoder's preview: held-out images (left) beside the EMA's reconstructions of them (right)."""
    t, modality = state.trainee, state.dataset.modality
    images = (state.dataset.test_data if len(state.dataset.test_data) else state.dataset.train_data)[:32]
    with t.ema_full.gathered(t.ema.net, t.device) as ema_net:
        if ema_net is None:  # not the main process
            return
        with torch.no_grad():
            rebuilt = modality.from_model(ema_net.reconstruct(modality.to_model(torch.from_numpy(images).to(t.device))))
    modality.save_pairs(images, rebuilt, state.run_dir / "samples" / f"grid-{state.images:09d}.png")


def default_hooks(config: Config) -> Hooks:
    return Hooks(log=lambda state, record: state.log.write(record), checkpoint=write_checkpoint, evaluate=evaluate_ema,
                 grid=write_reconstructions if config.model.is_autoencoder else write_grid)


def _stop_if_stuck(state: TrainingState) -> None:
    """Stop a run whose last train.max_nonfinite_steps steps were all skipped: it no longer learns (read at logs)."""
    limit = state.config.train.max_nonfinite_steps
    in_a_row = int(state.in_a_row)
    if in_a_row >= limit:
        raise UserError(
            f"training stopped at step {state.step:,}: the last {in_a_row} steps all had non-finite (NaN/Inf) gradients and "
            f"were skipped, so the weights have not changed since step {state.step - in_a_row:,} "
            f"(train.max_nonfinite_steps={limit}). Likely causes: a learning rate too high for this network "
            f"(optim.lr={state.config.optim.lr:g}: try a tenth), fp16 overflow (train.mixed_precision=bf16 or no), or "
            f"non-finite values in the data. The checkpoints written before are intact: continue from the last good one "
            f"with --resume and the fix")


def run(state: TrainingState, hooks: Hooks | None = None, *, progress: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Train from the state to its goal (or `stop_at_step`, as if interrupted), calling the hooks as due."""
    hooks = hooks or default_hooks(state.config)
    t, config, tc = state.trainee, state.config, state.config.train
    columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} img"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} img/s"), TimeElapsedColumn(), TimeRemainingColumn()]
    if missed_evaluation(state):  # (before the clocks start: evaluation time is not training time)
        hooks.evaluate(state)
    bar = Progress(*columns, console=state.console, disable=not (progress and state.main), transient=False)
    window_start, window_images = time.perf_counter(), state.images
    start_time, start_images = time.perf_counter(), state.images
    last_loss = math.nan
    t.net.train()
    try:
        with bar:
            task = bar.add_task("train", total=state.goal, completed=state.images, loss="-", speed="-")
            while state.images < state.goal and (stop_at_step is None or state.step < stop_at_step):
                lr = learning_rate(config.optim, state.images, state.goal)
                for group in t.optimizer.param_groups:
                    group["lr"] = lr
                step_loss, grad_norm, applied = t.step(state.images)
                # A NaN/Inf never reached the weights (the optimizer skipped the update): the EMA skips it too.
                t.ema.update(t.raw_net, ema_beta(tc.batch_size, state.images + tc.batch_size, tc.ema_halflife_images,
                                                 tc.ema_rampup), applied)
                if t.posthoc is not None:
                    t.posthoc.update(t.raw_net, state.images + tc.batch_size, tc.batch_size, applied)
                state.window_loss += torch.where(applied, step_loss.double(), 0.0)
                state.window_n += applied
                state.skipped += ~applied
                state.in_a_row = torch.where(applied, 0, state.in_a_row + 1)
                prev, state.step, state.images = state.images, state.step + 1, state.images + tc.batch_size

                if _due(state.images, prev, tc.log_every_images) or state.images >= state.goal:
                    now = time.perf_counter()
                    speed = (state.images - window_images) / max(now - window_start, 1e-9)
                    # Each process summed the loss of its share of the batch: add them up.
                    total_loss, n_applied = t.accelerator.reduce(state.window_loss, "sum").item(), int(state.window_n)
                    last_loss = total_loss / (n_applied * tc.batch_size) if n_applied else math.nan
                    if int(state.skipped):  # counted on the device, reported here: steps skipped since the last record
                        state.nonfinite += int(state.skipped)
                        hooks.log(state, {"images": state.images, "step": state.step, "event": "nonfinite_skipped",
                                          "skipped": int(state.skipped), "nonfinite_steps": state.nonfinite})
                        state.skipped.zero_()
                    record = {"images": state.images, "step": state.step, "loss": last_loss, "lr": lr,
                              "grad_norm": float(grad_norm), "images_per_s": speed, "nonfinite_steps": state.nonfinite,
                              "peak_memory_bytes": state.memory.so_far()}
                    state.history.append(record)
                    hooks.log(state, record)
                    bar.update(task, loss=f"{last_loss:.4f}", speed=f"{speed:,.0f}")
                    state.window_loss.zero_()
                    state.window_n.zero_()
                    window_start, window_images = now, state.images
                    _stop_if_stuck(state)
                bar.update(task, completed=min(state.images, state.goal))
                if t.posthoc is not None and _due(state.images, prev, tc.posthoc_every_images or max(1, state.goal // 16)):
                    write_posthoc_snapshots(state)
                evaluate_now = _due(state.images, prev, config.eval.every_images) and state.images < state.goal
                if (_due(state.images, prev, tc.checkpoint_every_images) or evaluate_now) and state.images < state.goal:
                    _stop_if_stuck(state)  # never save a run that stopped learning as if it were fine
                    hooks.checkpoint(state)
                if evaluate_now:
                    paused = time.perf_counter()
                    bar.stop()  # (an evaluation may show its own progress: a feature classifier trained at the first)
                    hooks.evaluate(state)
                    bar.start()
                    # Evaluation time is not training time: keep it out of the speed figures.
                    paused = time.perf_counter() - paused
                    window_start, start_time = window_start + paused, start_time + paused
                if _due(state.images, prev, tc.grid_every_images) and state.images < state.goal:
                    hooks.grid(state)
        seconds = time.perf_counter() - start_time
        latest = latest_checkpoint(state.run_dir, warn=lambda m: None)
        if latest is None or latest.images != state.images:
            _stop_if_stuck(state)
            hooks.checkpoint(state)
            if config.eval.every_images:
                hooks.evaluate(state)
        hooks.grid(state)
        fc = config.finetune
        if state.main and fc.init and fc.forgetting:
            from difftrain.evaluation.forgetting import forgetting_report

            try:
                forgetting_report(state.run_dir, state.dataset, state.log, device=t.device, console=state.console)
            except UserError as e:  # the model is trained and saved: a report that cannot be made must not fail the run
                state.console.print(f"[yellow]warning:[/] forgetting not measured: {e}")
    finally:
        state.log.close()
    return TrainResult(state.run_dir, state.step, state.images, seconds, (state.images - start_images) / max(seconds, 1e-9),
                       last_loss, state.nonfinite + int(state.skipped), state.history)


def train(config: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          dataset: PreparedDataset | None = None, stop_at_step: int | None = None,
          console: Console | None = None, source: Pretrained | None = None) -> TrainResult:
    """Train the configured model into `run_dir`; `stop_at_step` stops early as if interrupted. A second command on
    the same run is refused while this one holds it (folder_lock.py)."""
    with folder_lock(run_dir, "--out"):
        state = setup(config, run_dir, resume=resume, progress=progress, dataset=dataset, console=console, source=source)
        return run(state, progress=progress, stop_at_step=stop_at_step)
