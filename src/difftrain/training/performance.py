"""How training uses the device: precision, compiled network, memory format, attention kernel.

Each is a `train.*` setting whose "auto" picks what measured faster (docs/benchmarks.md):
bf16 autocast on GPUs with bf16 and on CPUs with native bf16 instructions (AVX512-BF16, AMX);
torch.compile, replayed as CUDA graphs, and channels_last on CUDA; on CPU the plain ("math") attention kernel, since
PyTorch's fused CPU attention has a slow backward pass on the short sequences of a UNet.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from difftrain.config import TrainConfig
from difftrain.errors import UserError


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes in bf16 natively, so bf16 autocast makes matrix work faster, not slower."""
    try:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # private torch functions: if a release drops them, stay in float32
        return False


def resolve_precision(cfg: TrainConfig, device_type: str) -> str:
    """accelerate's mixed_precision ("no", "bf16", "fp16") for this setting on this device."""
    precision = cfg.mixed_precision
    if precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "no"
    if precision == "fp16" and device_type != "cuda":
        raise UserError("train.mixed_precision=fp16 needs a CUDA GPU; on this device use train.mixed_precision=bf16, auto or no")
    if precision == "bf16" and device_type not in ("cuda", "cpu"):
        raise UserError(f"train.mixed_precision=bf16 is for CUDA GPUs and CPUs, not {device_type}; use train.mixed_precision=no")
    return precision


def enabled(setting: str, device_type: str) -> bool:
    """Whether an auto/on/off switch (train.compile, train.channels_last) is on for this device."""
    return setting == "on" or (setting == "auto" and device_type == "cuda")


def apply_memory_format(net: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.nn.Module:
    """The network in channels_last when the setting asks (before the EMA copy and the optimizer see it)."""
    return net.to(memory_format=torch.channels_last) if enabled(cfg.channels_last, device_type) else net


def uses_cuda_graphs(cfg: TrainConfig, device_type: str, processes: int = 1) -> bool:
    """Whether the compiled network replays CUDA graphs (train.cuda_graphs; only with train.compile).

    "auto" keeps them to one process: they were measured and tested on one GPU, not under DDP.
    """
    if cfg.cuda_graphs == "on" and device_type != "cuda":
        raise UserError(f"train.cuda_graphs=on needs a CUDA GPU (this run uses {device_type}); use train.cuda_graphs=auto or off")
    if cfg.cuda_graphs == "on" and not enabled(cfg.compile, device_type):
        raise UserError("train.cuda_graphs=on replays the compiled network: it needs train.compile=auto or on")
    # A replay reuses the memory of the one before, which holds the gradients a second micro-batch adds to.
    if cfg.cuda_graphs == "on" and cfg.accumulation > 1:
        raise UserError(f"train.cuda_graphs=on cannot accumulate gradients (train.accumulation={cfg.accumulation}): "
                        "use train.accumulation=1 or train.cuda_graphs=auto (off when accumulating)")
    if cfg.cuda_graphs == "auto" and processes > 1:
        return False
    return cfg.cuda_graphs != "off" and device_type == "cuda" and enabled(cfg.compile, device_type) and cfg.accumulation == 1


def compile_network(net: torch.nn.Module, cfg: TrainConfig, device_type: str, processes: int = 1) -> torch.nn.Module:
    """The network compiled when the setting asks. Module.compile() works in place, so the
    state_dict keys (and so checkpoints) stay as they are."""
    graphs = uses_cuda_graphs(cfg, device_type, processes)
    if enabled(cfg.compile, device_type):
        # "reduce-overhead" records the forward and backward kernels once and replays each as one
        # CUDA graph: on small networks the host's kernel launches, not the GPU, set the pace.
        net.compile(mode="reduce-overhead" if graphs else None)
    return net


def begin_graph_step(cfg: TrainConfig, device_type: str, processes: int = 1) -> None:
    """Tell CUDA graph replays that a new forward pass begins: the previous one's outputs are done with."""
    if uses_cuda_graphs(cfg, device_type, processes):
        torch.compiler.cudagraph_mark_step_begin()


@contextlib.contextmanager
def attention_kernel(device: torch.device) -> Iterator[None]:
    """The attention kernel for a training step: the plain one on CPU (see the module docstring)."""
    with sdpa_kernel([SDPBackend.MATH]) if device.type == "cpu" else contextlib.nullcontext():
        yield
