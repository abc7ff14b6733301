"""One writer per folder: a second train, synth, data prepare or eval on a folder in use is refused with the holder's process
id, and a holder killed with -9 leaves nothing stuck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from difftrain.folder_lock import FolderInUse, folder_lock, lock_path
from tests.test_synth import train_tiny

HOLD = """
import sys, time
from difftrain.folder_lock import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder():
    """Start a process that holds a folder's lock; yields the function that starts it (returns the process)."""
    started = []

    def hold(folder: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        started.append(process)
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait()


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_a_killed_holder_leaves_nothing_stuck(tmp_path, holder):
    folder = tmp_path / "run"
    first = holder(folder)
    with pytest.raises(FolderInUse, match=rf"in use by process {first.pid} on .*since"):
        with folder_lock(folder, "--out"):
            pass
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert lock_path(folder).is_file()  # a crash leaves the file, not the lock
    with folder_lock(folder):
        assert f'"pid": {os.getpid()}' in lock_path(folder).read_text()
    assert not lock_path(folder).exists()  # a normal exit removes it
    assert not folder.exists()  # the lock lives beside the folder: it makes no folder


def test_train_synth_prepare_and_eval_refuse_a_folder_in_use(tmp_path, holder, digits_dir):
    run = train_tiny(tmp_path / "tiny", digits_dir)
    log = (run / "metrics.jsonl").read_text()
    for args, folder in ((["train", "--out", str(tmp_path / "run"), "train.duration_steps=1"], tmp_path / "run"),
                         (["data", "prepare", "digits", "--out", str(tmp_path / "data")], tmp_path / "data"),
                         (["synth", str(run), "--out", str(tmp_path / "synth"), "--per-class", "1"], tmp_path / "synth"),
                         (["eval", str(run), "--n", "10", "--metrics", "fid"], run / "eval")):  # one eval of a run at a time
        existed = folder.exists()
        process = holder(folder)
        result = subprocess.run([sys.executable, "-m", "difftrain", *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert f"in use by process {process.pid}" in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
        assert folder.exists() == existed  # nothing written
    assert (run / "metrics.jsonl").read_text() == log


def test_a_lock_released_between_open_and_lock_is_taken_again(tmp_path, monkeypatch):
    """The holder removes its file as it leaves; whoever opened that file just before must lock the new one."""
    folder = tmp_path / "out"
    real_flock = __import__("fcntl").flock
    calls = []

    def flock_after_the_holder_left(fd, operation):
        if not calls:  # the first try locks a file that was unlinked (and replaced) in the meantime
            lock_path(folder).unlink()
            lock_path(folder).write_text("{}")
        calls.append(fd)
        return real_flock(fd, operation)

    monkeypatch.setattr("difftrain.folder_lock.fcntl.flock", flock_after_the_holder_left)
    with folder_lock(folder):
        assert len(calls) == 2 and f'"pid": {os.getpid()}' in lock_path(folder).read_text()


def test_only_the_main_process_of_a_launch_takes_the_lock(tmp_path, holder, monkeypatch):
    holder(tmp_path / "run")
    monkeypatch.setenv("RANK", "1")
    with folder_lock(tmp_path / "run"):
        time.sleep(0)  # no error: rank 1 writes nothing of its own


def test_leftovers_of_a_killed_writer_go_and_nothing_else(tmp_path):
    from difftrain import atomic

    run = tmp_path / "run"
    (run / "checkpoints" / ".ckpt-000000064.k2j4_9xa.tmp").mkdir(parents=True)  # atomic_directory's temporary
    (run / "checkpoints" / ".ckpt-000000064.k2j4_9xa.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".metrics.jsonl.abcd1234.tmp").write_text("{")  # atomic_file's
    (run / "checkpoints" / ".ckpt-000000032.old").mkdir()  # the folder an overwrite was replacing
    (tmp_path / ".run.zz99aa11.tmp").mkdir()  # beside: a prepare's half-written folder
    (run / ".notes.tmp").write_text("mine")  # not a name atomic writes make: a user's
    (tmp_path / ".run.lock").write_text("{}")
    removed = atomic.remove_leftovers(run)
    assert len(removed) == 4
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob(".*")) == [".run.lock", "run/.notes.tmp"]
