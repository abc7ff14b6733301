"""The parts of a checkpoint's state.pt that make resuming exact: each process's random-number
generators, and optimizer moments laid out like the weights they belong to."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object


def process_rng(accelerator: Accelerator) -> dict:
    """Every process's torch (and CUDA) generator state, gathered in process order; a collective,
    so every process calls it. Dropout draws from these; the training noise has its own stream."""
    mine = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    every = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    # torch_rng and cuda_rng: the main process's, as single-process checkpoints have always held them.
    return {"torch_rng": every[0]["torch"], "cuda_rng": every[0]["cuda"],
            "torch_rng_per_process": [e["torch"] for e in every], "cuda_rng_per_process": [e["cuda"] for e in every]}


def restore_process_rng(state: dict, accelerator: Accelerator, fresh_seed: int, warn) -> None:
    """This process's generators as the checkpoint saved them. Resumed with another process count,
    each process starts a stream of its own from `fresh_seed` + its index: the data order and the
    training noise (both independent of the count) continue exactly, dropout's draws do not."""
    rank, saved = accelerator.process_index, state.get("torch_rng_per_process") or [state["torch_rng"]]
    cuda = state.get("cuda_rng_per_process") or [state.get("cuda_rng", [])]
    if len(saved) != accelerator.num_processes:
        torch.manual_seed(fresh_seed + rank)
        if accelerator.is_main_process:
            warn(f"the checkpoint was written by {len(saved)} process(es), this run has {accelerator.num_processes}: "
                 "data order and noise continue exactly, dropout's random numbers do not")
        return
    torch.set_rng_state(saved[rank])
    if torch.cuda.is_available() and cuda[rank]:
        torch.cuda.set_rng_state_all(cuda[rank])


@contextlib.contextmanager
def kernel_kept(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Loading a state inside keeps the kernel (fused, foreach) the optimizer was built with, not the
    saving run's: a checkpoint of an older difftrain holds plain AdamW groups."""
    kernels = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in optimizer.param_groups]
    yield
    for group, kernel in zip(optimizer.param_groups, kernels):
        group.update(kernel)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load the optimizer's state into the optimizer as built now (fused or not), each moment laid out
    (strides) like its weight: the fused and multi-tensor kernels pair elements by memory order, and
    channels_last may differ."""
    with kernel_kept(optimizer):
        optimizer.load_state_dict(state)
    fused = any(group.get("fused") for group in optimizer.param_groups)
    for param, values in optimizer.state.items():
        for key, value in values.items():
            if not torch.is_tensor(value):
                continue
            if key == "step" and fused:  # the fused kernel counts steps on the weights' device
                values[key] = value.to(device=param.device, dtype=torch.float32)
            elif value.shape == param.shape and value.stride() != param.stride():
                values[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
