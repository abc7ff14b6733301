"""What one training step needs, built one way for `train` and for the doctor's probe: the accelerator, the
network (started from --init weights, with LoRA, compiled, sharded as configured), its EMA, the optimizer,
the denoiser, the conditioner, the noise stream and the batches; and the step itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs
from torch.distributed.tensor import DTensor

from difftrain.conditioning import Conditions, conditions_of_network
from difftrain.config import Config, TrainConfig
from difftrain.data.loader import ArrayBatches, MixedBatches
from difftrain.diffusion import Denoiser
from difftrain.distributed import WAIT_FOR_MAIN, leave_at_exit
from difftrain.errors import UserError
from difftrain.models import build_network
from difftrain.models.lora import parameter_counts
from difftrain.pretrained.source import Pretrained, transferable
from difftrain.pretrained.transfer import LoadReport, transfer_weights
from difftrain.store.checkpoint import Checkpoint
from difftrain.store.posthoc_ema import profile_key
from difftrain.store.run import adapt_network, denoiser_of, load_weights
from difftrain.training.ema import EMA, PowerEMAs
from difftrain.training.optim import build_optimizer, skips_on_device
from difftrain.training.performance import (apply_memory_format, attention_kernel, begin_graph_step, compile_network,
                                             resolve_precision)
from difftrain.training.resume_state import load_optimizer_state, restore_process_rng
from difftrain.training.sharding import (MainProcessCopy, by_position, enable_on_cpu_processes,
                                         float32_weights_and_gradients, is_sharded, load_sharded_optimizer_state, shard_like)


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
    if accelerator.num_processes > 1:
        leave_at_exit()
    if is_sharded(accelerator):  # (which refuses what difftrain does not run: FSDP1, DeepSpeed, ...)
        float32_weights_and_gradients(accelerator)
    return accelerator


def check_batch(cfg: TrainConfig, world: int) -> None:
    if cfg.batch_size % (cfg.accumulation * world):
        raise UserError(f"train.batch_size={cfg.batch_size} must divide into train.accumulation={cfg.accumulation} x {world} processes")


@dataclass
class Trainee:
    """The objects of one training run's steps. `net` is as prepared (DDP, FSDP, compiled), `raw_net` unwrapped."""

    config: Config
    accelerator: Accelerator
    net: torch.nn.Module
    raw_net: torch.nn.Module
    ema: EMA
    ema_full: MainProcessCopy  # the EMA's full weights on the main process, for grids and evaluation
    optimizer: torch.optim.Optimizer
    denoiser: Denoiser
    conditioner: Conditions
    noise_gen: torch.Generator
    batches: ArrayBatches | MixedBatches
    trainable: int
    total: int
    sharded: bool  # FSDP, as the launch said when the trainee was built (accelerate's state may not keep saying so)
    init_report: LoadReport | None = None  # the --init load, when the network started from a source
    posthoc: PowerEMAs | None = None  # post-hoc EMA's stored profiles (train.posthoc_ema)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def step(self, images: int, config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step at stream position `images` (see `train_step`); `config` overrides the batch settings."""
        return train_step(config or self.config, self.accelerator, self.net, self.denoiser, self.optimizer, self.batches,
                          images, self.noise_gen, self.conditioner)


def build_trainee(config: Config, accelerator: Accelerator, modality, num_classes: int, batches_of, *,
                  source: Pretrained | None = None, model_classes: list[str] | None = None,
                  existing: Checkpoint | None = None, warn=print) -> tuple[Trainee, dict]:
    """The trainee of `config` on `accelerator`: the network (from `source`'s weights, or `existing`'s when resuming),
    LoRA and freezing, memory format, EMA, compile, optimizer, sharding; `batches_of(device)` builds the batches.

    Returns it and the resumed training state ({} for a new run). The seed fixes the initial weights.
    """
    tc, fc = config.train, config.finetune
    device, world = accelerator.device, accelerator.num_processes
    sharded = is_sharded(accelerator)
    torch.manual_seed(tc.seed)
    net = build_network(config.model, modality, num_classes)
    init_report = None
    if source is not None and existing is None:
        captions = modality.captions
        init_report = transfer_weights(transferable(net, f"--init {fc.init}", source), source, model_classes, fc.allow_partial,
                                       characters=None if captions is None else captions.tokenizer.vocab)
    net = adapt_network(net, fc)
    trainable, total = parameter_counts(net)
    net = apply_memory_format(net, tc, device.type)
    ema = EMA(net)
    posthoc = PowerEMAs(net, tc.posthoc_ema) if tc.posthoc_ema else None
    net = compile_network(net, tc, device.type, world)
    optimizer = build_optimizer([p for p in net.parameters() if p.requires_grad], config.optim)
    # One noise stream for the whole global batch, identical on every process: each takes
    # its slice, so accumulation and the process count do not change the random numbers.
    noise_gen = torch.Generator(device).manual_seed(tc.seed * 7919 + 1)
    # Dropout draws from the global generator: a stream of each process's own (the weights, drawn
    # above, are the same everywhere), so the processes do not drop the same units.
    torch.manual_seed(tc.seed * 7919 + 2 + accelerator.process_index)
    state: dict = {}
    if existing is not None:
        config_file = existing.path.parent.parent / "config.yaml"
        load_weights(net, existing.weights(ema=False), existing.path, config_file)
        load_weights(ema.net, existing.weights(ema=True), existing.path, config_file)
        if posthoc is not None:
            profiles = existing.posthoc_weights()
            for sigma, profile in zip(posthoc.sigmas, posthoc.emas):
                prefix = profile_key(sigma, "")
                kept = {k[len(prefix):]: v for k, v in profiles.items() if k.startswith(prefix)}
                if not kept:
                    raise UserError(f"{existing.path} holds no post-hoc EMA of sigma_rel {sigma:g}: resume with the "
                                    f"run's own train.posthoc_ema (see {config_file})")
                load_weights(profile.net, kept, existing.path, config_file)
        state = existing.training_state()
        if not sharded:  # a sharded optimizer takes its state after `prepare` has sharded it
            load_optimizer_state(optimizer, by_position(state["optimizer"], net))
        noise_gen.set_state(state["noise_rng"])
        restore_process_rng(state, accelerator, tc.seed * 7919 + 2 + existing.images * 31, warn=warn)
    net, optimizer = accelerator.prepare(net, optimizer)
    raw_net = accelerator.unwrap_model(net)
    ema_full = MainProcessCopy(ema.net, accelerator.is_main_process, sharded)
    if sharded:
        ema.net = shard_like(ema.net, accelerator)
        if existing is not None:
            load_sharded_optimizer_state(raw_net, getattr(optimizer, "optimizer", optimizer), state["optimizer"])
        for profile in posthoc.emas if posthoc else []:
            profile.net = shard_like(profile.net, accelerator)
    else:  # (sharding placed the EMA's shards where the network's are, on the CPU when offloading)
        ema.net.to(device)
        for profile in posthoc.emas if posthoc else []:
            profile.net.to(device)
    if accelerator.scaler is not None and "grad_scaler" in state:  # fp16: the loss scale it had reached
        accelerator.scaler.load_state_dict(state["grad_scaler"])
    trainee = Trainee(config, accelerator, net, raw_net, ema, ema_full, optimizer, denoiser_of(config, modality, net),
                      conditions_of(config, modality, raw_net), noise_gen, batches_of(device), trainable, total, sharded, init_report,
                      posthoc)
    return trainee, state


def train_step(config: Config, accelerator: Accelerator, net: torch.nn.Module, denoiser: Denoiser,
               optimizer: torch.optim.Optimizer, batches: ArrayBatches, images: int, noise_gen: torch.Generator,
               conditioner: Conditions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    noise = denoiser.formulation.sample_training_noise((tc.batch_size, *batches.modality.model_shape), generator=noise_gen,
                                                       device=device)
    keep_label = torch.rand(tc.batch_size, generator=noise_gen, device=device) >= config.model.label_dropout
    observed = conditioner.draw_mask((tc.batch_size, *batches.modality.model_shape), noise_gen)
    gaps = batches.modality.has_gaps
    for micro in range(tc.accumulation):
        # This process's share of micro-batch `micro` of the global batch.
        start = micro * tc.micro_batch + accelerator.process_index * per_process
        part = slice(start, start + per_process)
        x0, labels = batches.batch(images + start, per_process)
        # Data with gaps (NaN): only what is there is observed and scored.
        present = torch.isfinite(x0) if gaps else None
        if gaps:
            x0 = torch.nan_to_num(x0)
        mask = None if observed is None else observed[part] * present if gaps else observed[part]
        cond = conditioner.training(x0, labels, keep_label[part], mask)
        # Observed values are given, not predicted: only the rest is scored (CSDI), and of that only what is there.
        scored = present if mask is None else (cond["mask"] == 0) & (True if present is None else present)
        # Under FSDP every micro-batch's gradients are reduced to shards at once: skipping that would keep
        # whole, unsharded gradients on every process between micro-batches.
        last = micro == tc.accumulation - 1 or accelerator.is_fsdp2
        sync = contextlib.nullcontext() if last else accelerator.no_sync(net)
        begin_graph_step(tc, device.type, world)
        with sync, accelerator.autocast(), attention_kernel(device):
            loss = denoiser.loss(x0, cond, weighting=config.diffusion.weighting, min_snr_gamma=config.diffusion.min_snr_gamma,
                                 sigma=sigma[part], noise=noise[part], where=scored)
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


def conditions_of(config: Config, modality, net: torch.nn.Module) -> Conditions:
    """The run's conditioners: the network's class labels or captions, and observed values for data whose items can be
    partly known."""
    return conditions_of_network(net, config.model.observe if modality.observable else None)


def random_stand_in(modality, count: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Random data of the modality's dtype and shape (and labels): what the doctor probes with when no data is at hand."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(modality.dtype, np.integer):
        items = rng.integers(0, 256, (count, *modality.shape), dtype=modality.dtype)
    else:
        items = rng.standard_normal((count, *modality.shape)).astype(modality.dtype)
    return items, (rng.integers(0, num_classes, count) if num_classes else None)
