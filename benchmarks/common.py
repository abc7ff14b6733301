"""Pieces the benchmark scripts share: the machine they ran on, the data, the output line."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difftrain.data import PreparedDataset, load_dataset
from difftrain.modalities import Modality


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU model and count, GPU, library versions."""
    import diffusers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def today() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def emit(record: dict[str, Any]) -> None:
    """The one JSON line a benchmark prints, with the machine, thread count and date added."""
    record = {**record, "machine": machine(), "torch_threads": torch.get_num_threads(), "date": today()}
    print(json.dumps(record), flush=True)


def pick_device(name: str = "auto") -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def load_data(path: str | Path) -> PreparedDataset:
    """A prepared dataset folder (`difftrain data prepare SOURCE --out DIR`)."""
    return load_dataset(path)


def shuffled_batches(data: np.ndarray, labels: np.ndarray | None, modality: Modality, batch: int, *, seed: int,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Endless batches as model tensors (images: [-1, 1] (N, C, H, W)) from shuffled epochs; a batch may span two epochs."""
    x_all = torch.as_tensor(data).to(device)
    y_all = None if labels is None else torch.as_tensor(labels, dtype=torch.long).to(device)
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < batch:
            order = torch.cat([order, torch.randperm(len(x_all), generator=gen)])
        idx, order = order[:batch].to(device), order[batch:]
        yield modality.to_model(x_all[idx]), None if y_all is None else y_all[idx]


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
