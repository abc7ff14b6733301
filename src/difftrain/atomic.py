"""Atomic writes: a reader sees the old file/folder or the complete new one, never half."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp make private files (0600) and folders (0700); what we write gets the usual permissions instead,
# so that a run, a dataset or a report is as readable by others as any file the user makes.
FILE_MODE, FOLDER_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_npy(path: str | os.PathLike, array: Any) -> None:
    """One array as a .npy file (no pickled objects)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """A matplotlib figure as a PNG at `path`, which is then closed (pyplot keeps every open figure)."""
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it becomes `path` in one rename.

    With `overwrite`, an existing `path` is replaced only once the new folder is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.chmod(tmp, FOLDER_MODE)
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp|\..+\.old")  # mkstemp / mkdtemp names above, and the replaced folder


def remove_leftovers(folder: str | os.PathLike, inside: bool = True) -> list[Path]:
    """Delete the temporaries that a killed writer left beside `folder` and (with `inside`) anywhere under it. Call it
    only on a folder known to be ours while holding it (folder_lock.py), when no write of it can be under way."""
    folder = Path(folder)
    found = [p for p in folder.parent.glob(f".{folder.name}.*") if LEFTOVER.fullmatch(p.name)]
    if inside and folder.is_dir():
        found += [p for p in folder.rglob(".*") if LEFTOVER.fullmatch(p.name)]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found
