"""FSDP: each process holds a shard of every weight, gradient and optimizer moment (accelerate's FSDP2,
`accelerate launch --config_file fsdp.yaml`, docs/scale.md), for models whose training state does not fit
one GPU. The EMA is sharded like the network, so its update stays local; checkpoints, sample grids and
evaluation gather full weights, so a sharded run's checkpoints are the same files as any other run's.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

from difftrain.config import Config
from difftrain.errors import UserError
from difftrain.training.resume_state import kernel_kept

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on the main process's CPU


def enable_on_cpu_processes(accelerator: Accelerator) -> None:
    """Honour an FSDP launch (ACCELERATE_USE_FSDP) on CPU processes too: accelerate enables FSDP on GPUs
    only, though gloo shards as well as NCCL; this is how CI tests the sharded path without a GPU."""
    wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wanted and accelerator.distributed_type == DistributedType.MULTI_CPU:
        state = AcceleratorState()
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin()


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether this launch shards the model (FSDP); refuses the FSDP version and engines difftrain does not run."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise UserError("difftrain shards models with FSDP2 only: set `fsdp_version: 2` under fsdp_config in the "
                        "accelerate config (docs/scale.md has one)")
    if kind not in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP):
        raise UserError(f"difftrain trains with DDP or FSDP2, not {kind.value}: launch with `accelerate launch --multi_gpu ...` "
                        "(or --processes N), or with an FSDP config (docs/scale.md)")
    return kind == DistributedType.FSDP


def float32_weights_and_gradients(accelerator: Accelerator) -> None:
    """Keep FSDP's weights and gradients in float32 under bf16/fp16, with autocast doing the low-precision
    math, as under DDP: accelerate's policy would gather bf16 weights and average bf16 gradients, which
    trains another model than the one-process run (the price: gathers twice the size of bf16 ones)."""
    accelerator.state.fsdp_plugin.mixed_precision_policy = None


def sharded_config(config: Config) -> Config:
    """The config as a sharded run trains it: what FSDP cannot do is refused with the fix, and the
    device features measured only without sharding ("auto") are off."""
    tc = config.train
    if config.optim.name == "lamb":
        # LAMB scales each tensor's step by its norm, which a process holding a shard does not have.
        raise UserError("optim.name=lamb needs each weight's whole norm, which FSDP splits over the processes: "
                        "use optim.name=adamw with FSDP, or launch with DDP (--multi_gpu / --processes)")
    for name in ("compile", "channels_last", "cuda_graphs"):
        if getattr(tc, name) == "on":
            raise UserError(f"train.{name}=on is not supported with FSDP yet (it was measured without sharding): "
                            f"use train.{name}=auto (off with FSDP)")
    train = tc.model_copy(update={"compile": "off", "channels_last": "off", "cuda_graphs": "off"})
    return config.model_copy(update={"train": train})


def shard_like(net: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """`net` (the EMA) sharded as `accelerator.prepare` shards the trained network: same wrapping, same
    mesh, so each process's shards of both line up and the EMA update needs no communication."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, net)


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded weight (a DTensor), else the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def shard_size(net: torch.nn.Module) -> int:
    """How many of the network's weights this process holds."""
    return sum(local_shard(p).numel() for p in net.parameters())


def full_weights(net: torch.nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The whole state dict: gathered to the main process under FSDP (a collective: every process calls
    it; the others get {}), the module's own otherwise."""
    return get_model_state_dict(net, options=FULL) if sharded else net.state_dict()


class MainProcessCopy:
    """The full weights of a network on the main process, for what runs there alone (sample grids,
    evaluation). Unsharded, that is the network itself. Sharded, a copy on the main process's CPU takes
    the gathered weights on demand, and sits on the device only while in use."""

    def __init__(self, net: torch.nn.Module, main: bool, sharded: bool):
        self.main, self.sharded = main, sharded
        self.copy = copy.deepcopy(net).cpu() if sharded and main else None  # made before `net` is sharded

    @contextlib.contextmanager
    def gathered(self, net: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module | None]:
        """`net` with all its weights on the main process, None on the others (a collective when sharded)."""
        if not self.sharded:
            yield net if self.main else None
            return
        weights = get_model_state_dict(net, options=FULL)
        if self.copy is None:
            yield None
            return
        self.copy.load_state_dict(weights)
        try:
            yield self.copy.to(device)
        finally:
            self.copy.cpu()


def optimizer_state(net: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict:
    """The optimizer's state as a checkpoint keeps it. Under FSDP gathered whole (a collective) and keyed
    by parameter name; otherwise torch's own layout (keyed by position)."""
    return get_optimizer_state_dict(net, optimizer, options=FULL) if sharded else optimizer.state_dict()


def _trainable_names(net: torch.nn.Module) -> list[str]:
    """Names of the optimized parameters, in the optimizer's order (trainer: the trainable ones, in order),
    as torch's state-dict functions name them (without activation checkpointing's wrapper)."""
    return [name.replace("_checkpoint_wrapped_module.", "") for name, p in net.named_parameters() if p.requires_grad]


def _keyed_by(state: dict, kind: type) -> bool:
    """Whether an optimizer state names its parameters by `kind`: int (torch's positions) or str (names)."""
    return bool(state["param_groups"]) and all(isinstance(p, kind) for g in state["param_groups"] for p in g["params"])


def _rekeyed(state: dict, key: dict) -> dict:
    """The optimizer state with every parameter's key k replaced by key[k]."""
    return {"state": {key[k]: values for k, values in state["state"].items()},
            "param_groups": [{**g, "params": [key[p] for p in g["params"]]} for g in state["param_groups"]]}


def by_position(state: dict, net: torch.nn.Module) -> dict:
    """An optimizer state keyed by parameter name (a sharded run's checkpoint) in torch's positional layout."""
    if not _keyed_by(state, str):
        return state
    position = {name: i for i, name in enumerate(_trainable_names(net))}
    missing = [name for g in state["param_groups"] for name in g["params"] if name not in position]
    if missing:
        raise UserError(f"the checkpoint's optimizer state names parameters this network lacks ({', '.join(missing[:3])})")
    return _rekeyed(state, position)


def load_sharded_optimizer_state(net: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state (either layout) into the optimizer of a sharded network: each
    process keeps its shard of every moment. Called by every process, after `accelerator.prepare`."""
    if _keyed_by(state, int):
        state = _rekeyed(state, dict(enumerate(_trainable_names(net))))
    with kernel_kept(optimizer):
        set_optimizer_state_dict(net, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
