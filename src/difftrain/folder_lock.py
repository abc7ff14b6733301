"""One writer per folder: a run, a synthetic dataset or a prepared dataset is written by one command at a time.

The lock of FOLDER is the file .FOLDER.lock beside it (so neither rewriting nor replacing the folder touches it), held
with flock: the kernel drops it when its holder exits, crashes or is killed, so a crashed holder never leaves the folder
stuck. The file holds the holder's process id, host, command and start, for the error a second command gets. Under a
multi-process launch only the main process (RANK 0) takes it: the others write nothing of their own. Holding it, a
verb removes the temporaries of atomic writes that a killed holder left, once it knows the folder is its own
(atomic.remove_leftovers).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from difftrain.errors import UserError


class FolderInUse(UserError):
    """Another command holds the folder's lock."""


def lock_path(folder: Path) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"process {h['pid']} on {h['host']} (`{h['command']}`, since {h['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def folder_lock(folder: str | Path, what: str = "folder") -> Iterator[None]:
    """Hold FOLDER's lock for the block; a second holder gets FolderInUse naming the first. `what` names the option
    that chose the folder, for the error ("--out", "the run")."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    path = lock_path(Path(folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(f"{folder} is in use by {_holder(path)}: wait for it to finish or stop it, or choose another "
                              f"{what}") from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the one that is there
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # still holding it: nobody else can have taken this file
        os.close(fd)


@contextmanager
def taking_turns(folder: str | Path) -> Iterator[None]:
    """Wait for, then hold, an flock on FOLDER itself: for writers that share a folder and take turns in it (training and
    `eval` in a run's metrics.jsonl, a sweep's workers and `sweep show` in its summary files), where folder_lock would
    refuse the second."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (gives the lock back)


def lock_holder(folder: str | Path) -> str | None:
    """Who holds FOLDER's lock now ("process 123 on host ..."), or None when nobody does."""
    path = lock_path(Path(folder))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken and given back at once: nobody held it
    except BlockingIOError:
        return _holder(path)
    finally:
        os.close(fd)
    return None
