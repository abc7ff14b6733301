"""How training uses the device: precision, compiled network, memory format, attention kernel.

Each is a `train.*` setting whose "auto" picks what measured faster (docs/benchmarks.md):
bf16 autocast on GPUs with bf16 and on CPUs with native bf16 instructions (AVX512-BF16, AMX);
torch.compile and channels_last on CUDA; on CPU the plain ("math") attention kernel, since
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


def compile_network(net: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.nn.Module:
    """The network compiled when the setting asks. Module.compile() works in place, so the
    state_dict keys (and so checkpoints) stay as they are."""
    if enabled(cfg.compile, device_type):
        net.compile()
    return net


@contextlib.contextmanager
def attention_kernel(device: torch.device) -> Iterator[None]:
    """The attention kernel for a training step: the plain one on CPU (see the module docstring)."""
    with sdpa_kernel([SDPBackend.MATH]) if device.type == "cpu" else contextlib.nullcontext():
        yield
