"""No silent waits: when the output is not a terminal (a job log, nohup, CI), progress is plain lines, the run folder
and its config exist before the slow steps, and the evaluation's feature classifier says what it is doing."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rich.console import Console

from difftrain import progress as progress_module
from difftrain.progress import PlainProgress, Progress
from tests.conftest import tiny_overrides


def test_plain_lines_at_the_start_every_interval_and_at_the_end(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    monkeypatch.setenv("DIFFTRAIN_PROGRESS_EVERY", "30")
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    bar = Progress(console=console)
    assert isinstance(bar, PlainProgress)  # not a terminal
    with bar:
        task = bar.add_task("train", total=1000, loss="-", speed="-")
        for step in range(1, 11):
            now[0] = 10.0 * step  # 10 s a step: a line every 3 steps
            bar.update(task, completed=100 * step, loss=f"{1 / step:.4f}", speed="10")
    lines = out.getvalue().splitlines()
    assert lines[0] == "train: 0/1,000 (0%), 0:00:00 elapsed"
    assert lines[1] == "train: 300/1,000 (30%), loss 0.3333, speed 10, 0:00:30 elapsed, about 0:01:10 left"
    assert len(lines) == 5 and lines[-1].startswith("train: 1,000/1,000 (100%), loss 0.1000")  # 0, 30, 60, 90 s and the end


def test_a_training_sent_to_a_file_says_what_it_does_from_its_first_seconds(tmp_path):
    from difftrain.data import prepare_dataset

    data = prepare_dataset("digits", tmp_path / "digits", progress=False)  # its own: no cached feature classifier
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "difftrain", "train", "--out", str(run),
         *tiny_overrides(data.path, **{"train.duration_steps": 8, "eval.every_images": 64, "eval.during_n": 32})],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DIFFTRAIN_PROGRESS_EVERY": "0"})
    assert result.returncode == 0, result.stderr
    said = result.stderr.splitlines()
    first = next(i for i, line in enumerate(said) if "config.yaml written" in line)
    announce = next(i for i, line in enumerate(said) if line.startswith("training the evaluation's feature classifier"))
    assert first < announce  # the run folder existed before the slow step
    # ... and training did not wait for it: the classifier is trained at the first evaluation, said so at the start.
    assert any(line.startswith("the evaluation's feature classifier is trained at the first evaluation")
               for line in said[:announce])
    assert any(line.startswith("train: ") for line in said[:announce])
    # Each message one line, however long (rich wraps at 80 columns where there is no terminal): grep finds it whole.
    assert said[announce].endswith(f"cached in {data.path / 'classifier'})")
    assert any(line.startswith("evaluation during training: fid of 32 samples every 64 images") and
               line.endswith("(eval.every_images=0 turns it off)") for line in said)
    assert any(line.startswith("the evaluation's feature classifier: ") and "steps" not in line and "%" in line for line in said)
    train_lines = [line for line in said if line.startswith("train: ")]
    assert train_lines[-1].startswith("train: 128/128 (100%), loss ") and "elapsed" in train_lines[-1]
    assert any("left" in line for line in train_lines)


def test_a_new_run_has_its_folder_and_config_before_the_first_line_and_a_refused_one_leaves_none(tmp_path, digits_dir):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "difftrain", "train", "--out", str(run), *tiny_overrides(digits_dir)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        first = process.stderr.readline()
        assert first.startswith(f"starting {run}") and (run / "config.yaml").is_file()  # before torch has loaded
    finally:
        process.kill()
        process.wait()
    missing = tmp_path / "refused"
    result = subprocess.run([sys.executable, "-m", "difftrain", "train", "--out", str(missing),
                             *tiny_overrides(tmp_path / "no-such-data")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not missing.exists()  # a run refused before it began leaves no folder


def test_a_wait_without_a_bar_is_one_plain_line_in_a_job_log():
    from difftrain.progress import status

    buffer = io.StringIO()
    with status("doctor: probing the config with real training steps", Console(file=buffer)):
        pass
    assert buffer.getvalue() == "doctor: probing the config with real training steps ...\n"  # rich's spinner: nothing
