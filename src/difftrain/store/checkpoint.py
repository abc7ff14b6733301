"""Checkpoints: one folder each, written atomically, verified by hash when read.

    checkpoints/ckpt-000055000/      (named by training images seen)
        model.safetensors            network weights
        ema.safetensors              EMA weights (what sampling uses)
        state.pt                     optimizer + RNG state, read with weights_only=True
        posthoc-ema.safetensors      the post-hoc EMA's profiles (train.posthoc_ema), when kept
        info.json                    step, images seen, sha256 of each file above
    checkpoints/best/                a copy of the best checkpoint by the evaluation during
        best.json                    training (never pruned), with the record that chose it
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from difftrain import __version__, atomic
from difftrain.errors import UserError
from difftrain.hashing import sha256_file

FILES = ("model.safetensors", "ema.safetensors", "state.pt")
POSTHOC = "posthoc-ema.safetensors"  # with train.posthoc_ema: the power-function EMAs, for an exact resume


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated or corrupted."""


@dataclass
class Checkpoint:
    path: Path
    info: dict[str, Any]

    @property
    def images(self) -> int:
        return int(self.info["images_seen"])

    def weights(self, ema: bool = True) -> dict[str, torch.Tensor]:
        return _read_safetensors(self.path / ("ema.safetensors" if ema else "model.safetensors"))

    def posthoc_weights(self) -> dict[str, torch.Tensor]:
        """Post-hoc EMA's profiles at this checkpoint ("SIGMA/name" keys; store/posthoc_ema.py), or none."""
        file = self.path / POSTHOC
        return _read_safetensors(file) if file.is_file() else {}

    def training_state(self) -> dict[str, Any]:
        file = self.path / "state.pt"
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means a corrupt file
            raise CheckpointError(f"cannot read {file}: {e}") from None


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read {file}: {e}") from None


def _tensors(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in weights.items()}


def save_checkpoint(run_dir: Path, *, weights: dict[str, torch.Tensor], ema_weights: dict[str, torch.Tensor], state: dict[str, Any],
                    step: int, images_seen: int, keep: int, extra: dict[str, Any] | None = None,
                    posthoc_weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder atomically (the network's and the EMA's state dicts, the training
    state, the post-hoc EMA's profiles when kept), then prune all but the newest `keep`."""
    final = Path(run_dir) / "checkpoints" / f"ckpt-{images_seen:09d}"
    try:
        with atomic.atomic_directory(final, overwrite=True) as tmp:
            save_file(_tensors(weights), tmp / "model.safetensors")
            save_file(_tensors(ema_weights), tmp / "ema.safetensors")
            torch.save(state, tmp / "state.pt")
            files = FILES
            if posthoc_weights:
                save_file(_tensors(posthoc_weights), tmp / POSTHOC)
                files = (*FILES, POSTHOC)
            info = {"step": step, "images_seen": images_seen, "time": time.time(), "difftrain_version": __version__,
                    **(extra or {}), "sha256": {name: sha256_file(tmp / name) for name in files}}
            atomic.write_json(tmp / "info.json", info)
    except (OSError, SafetensorError, RuntimeError) as e:  # a full disk, a read-only folder (torch.save: RuntimeError)
        earlier = [c for c in list_checkpoints(run_dir) if c != final]
        needed = (sum(f.stat().st_size for f in earlier[-1].iterdir()) if earlier else  # the last one's size, else
                  2 * sum(t.numel() * t.element_size() for d in (weights, ema_weights) for t in d.values()))  # + Adam's
        free = shutil.disk_usage(final.parent).free
        # torch.save says only "unexpected pos" on a full disk: the free space tells what happened.
        why = (f"the disk is full: {free / 2**20:.1f} MiB free, a checkpoint needs about {needed / 2**20:.1f} MiB"
               if free < needed else " ".join(str(e).split()))
        raise CheckpointError(f"cannot write the checkpoint {final} ({why}); the earlier checkpoints are intact and "
                              f"nothing half-written is left: free space (or make the folder writable), then "
                              f"`difftrain train --out {run_dir} --resume`") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_images(path: Path) -> int:
    """Training images seen, from a checkpoint folder's name (ckpt-000055000)."""
    return int(path.name.removeprefix("ckpt-"))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first (temporary and set-aside folders excluded)."""
    folder = Path(run_dir) / "checkpoints"
    found = [p for p in folder.glob("ckpt-*") if p.is_dir() and p.name.removeprefix("ckpt-").isdigit()] if folder.is_dir() else []
    return sorted(found, key=checkpoint_images)


def open_checkpoint(path: Path) -> Checkpoint:
    """Open one checkpoint folder, checking every file against the hash recorded at save time."""
    path = Path(path)
    info_file = path / "info.json"
    try:
        info = json.loads(info_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{info_file} is missing: {path} is not a complete checkpoint") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {info_file}: {e}") from None
    for name, digest in info.get("sha256", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        if sha256_file(file) != digest:
            raise CheckpointError(f"{file} is corrupted or truncated (its hash differs from the one saved in info.json)")
    return Checkpoint(path, info)


def latest_checkpoint(run_dir: Path, warn=print) -> Checkpoint | None:
    """The newest valid checkpoint; damaged newer ones are reported through `warn` and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return open_checkpoint(path)
        except CheckpointError as e:
            warn(f"skipping damaged checkpoint: {e}")
    return None


def save_best(run_dir: Path, source: Path, record: dict[str, Any]) -> Path:
    """Copy checkpoint `source` to checkpoints/best atomically, with the evaluation that chose it."""
    final = Path(run_dir) / "checkpoints" / "best"
    with atomic.atomic_directory(final, overwrite=True) as tmp:
        for file in source.iterdir():
            shutil.copy2(file, tmp / file.name)
        atomic.write_json(tmp / "best.json", record)
    return final


def best_record(run_dir: Path) -> dict[str, Any] | None:
    """The evaluation record that chose checkpoints/best, or None."""
    file = Path(run_dir) / "checkpoints" / "best" / "best.json"
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def resolve_checkpoint(run_dir: Path, which: str = "latest", warn=print) -> Checkpoint:
    """'latest', 'best' or a path to a checkpoint folder; a clear error when there is none."""
    if which == "best":
        best = Path(run_dir) / "checkpoints" / "best"
        if not best.is_dir():
            raise CheckpointError(f"{run_dir} has no best checkpoint: it is kept when the run evaluates during training "
                                  "(set eval.every_images); use --checkpoints latest")
        return open_checkpoint(best)
    if which == "latest":
        ckpt = latest_checkpoint(run_dir, warn)
        if ckpt is None:
            raise CheckpointError(f"{run_dir} has no valid checkpoint in {Path(run_dir) / 'checkpoints'}; train it first (`difftrain train --out {run_dir}`)")
        return ckpt
    return open_checkpoint(Path(which))
