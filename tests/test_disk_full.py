"""A full disk during training: one clear error naming the checkpoint, the earlier checkpoints intact and loadable,
nothing half-written left behind, and `--resume` goes on once there is space."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from difftrain.config import load_config
from difftrain.errors import UserError
from difftrain.store import checkpoint as checkpoint_module
from difftrain.store.checkpoint import list_checkpoints, open_checkpoint
from difftrain.training.trainer import train
from tests.conftest import tiny_overrides

EVERY = {"train.duration_steps": 12, "train.checkpoint_every_images": 64}  # a checkpoint every 4 steps: 3 in all


def hidden(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*"))


def test_a_full_disk_at_a_checkpoint_stops_with_the_earlier_ones_intact(tmp_path, digits_dir, monkeypatch):
    real_save, calls = checkpoint_module.save_file, []

    def fills_up(tensors, path):
        calls.append(path)
        if len(calls) == 5:  # the third checkpoint's first file (two files per checkpoint before it)
            Path(path).write_bytes(b"half")  # what a full disk leaves: part of a file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(tensors, path)

    monkeypatch.setattr(checkpoint_module, "save_file", fills_up)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"cannot write the checkpoint .*ckpt-000000192 .*No space left on device.*--resume"):
        train(load_config(overrides=tiny_overrides(digits_dir, **EVERY)), run, progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-000000064", "ckpt-000000128"]
    for path in list_checkpoints(run):
        open_checkpoint(path)  # every hash matches
    assert hidden(run) == []  # the half-written folder is gone

    monkeypatch.setattr(checkpoint_module, "save_file", real_save)  # space again
    result = train(load_config(overrides=tiny_overrides(digits_dir, **EVERY)), run, resume=True, progress=False)
    assert result.images == 192 and list_checkpoints(run)[-1].name == "ckpt-000000192"


def can_mount(point: Path) -> bool:
    point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)], capture_output=True)
    return made.returncode == 0


def test_a_really_full_disk_is_one_clear_error(tmp_path, digits_dir):
    """On a real 8 MB filesystem: checkpoints of 3 MB fill it at the third (pruning happens after a write)."""
    disk = tmp_path / "disk"
    if shutil.which("mount") is None or not can_mount(disk):
        pytest.skip("mounting a small tmpfs needs root (or CAP_SYS_ADMIN); the simulated test above covers the code path")
    try:
        overrides = tiny_overrides(digits_dir, **{"train.duration_steps": 40, "train.checkpoint_every_images": 64})
        result = subprocess.run([sys.executable, "-m", "difftrain", "train", "--out", str(disk / "run"), *overrides],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        error = [line for line in result.stderr.splitlines() if line.startswith("error")]
        said = " ".join(result.stderr.split())  # (the console wraps long lines)
        assert len(error) == 1 and ("No space left on device" in said or "the disk is full" in said)
        assert "Traceback" not in said
        assert "cannot write the checkpoint" in said and "--resume" in said
        kept = list_checkpoints(disk / "run")
        assert len(kept) >= 1
        for path in kept:
            open_checkpoint(path)
        assert hidden(disk / "run") == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_read_only_folder_is_one_clear_error(tmp_path, digits_dir):
    disk = tmp_path / "ro"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(disk)], capture_output=True)
    if shutil.which("mount") is None or mounted.returncode != 0:
        pytest.skip("mounting a read-only tmpfs needs root (or CAP_SYS_ADMIN); root also writes through chmod, so no "
                    "permission bits can stand in for it")
    try:
        for args in (["train", "--out", str(disk / "run"), *tiny_overrides(digits_dir)],
                     ["data", "prepare", "digits", "--out", str(disk / "data")]):
            result = subprocess.run([sys.executable, "-m", "difftrain", *args], capture_output=True, text=True, timeout=300)
            said = " ".join(result.stderr.split())
            assert result.returncode == 2 and "Read-only file system" in said and "Traceback" not in said, result.stderr
            assert str(disk) in said  # the folder is named
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
