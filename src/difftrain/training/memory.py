"""Peak memory of a block of work: the CUDA allocator's peak on a GPU, peak resident-set growth on CPU."""

from __future__ import annotations

import ctypes
import gc
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int:
    """The process's resident memory now (VmRSS), or its lifetime peak where /proc is missing."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else _ru_maxrss()


def _ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def release_memory(device: torch.device | None = None) -> None:
    """Give freed memory back (caching allocator, glibc heap), so the next measurement starts clean."""
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.peak`: bytes at the peak of the block.

    CUDA: torch.cuda.max_memory_allocated (absolute: weights, optimizer state, activations).
    CPU/MPS: growth of the resident set over the block: VmHWM after the block minus VmRSS before it,
    with VmHWM reset through /proc/self/clear_refs; without that, ru_maxrss (a lifetime peak).
    """

    def __init__(self, device: torch.device, baseline: int | None = None):
        self.device = device
        self.baseline = baseline  # CPU: count growth from this RSS instead of the RSS at entry
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._resettable = _reset_hwm()
        start = rss_bytes() if self._resettable else _ru_maxrss()
        self._start = start if self.baseline is None else self.baseline
        return self

    def __exit__(self, *exc) -> None:
        self.peak = self.so_far()

    def so_far(self) -> int:
        """The peak since the block began, read without ending it (the trainer logs it as it goes)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        hwm = _status_kib("VmHWM") if self._resettable else None
        end = hwm * 1024 if hwm is not None else _ru_maxrss()
        return max(end - self._start, 0)


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False
