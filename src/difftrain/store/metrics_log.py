"""Training metrics: one JSON line per record in metrics.jsonl, mirrored to TensorBoard.

Training appends while `difftrain eval` may append to the same run, and both sometimes rewrite the file (a resume drops
what came after its checkpoint; a repeated evaluation replaces its record): every write holds an flock on the run
folder, so a rewrite never loses a line appended meanwhile.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from difftrain import atomic
from difftrain.folder_lock import taking_turns

# What names one evaluation by `difftrain eval`: run again with the same (a rerun after a crash, or with other metrics),
# it replaces its record, the new scores merged into the old, instead of logging the same measurement twice.
EVALUATION = ("event", "during_training", "checkpoint", "ema_length", "data", "eval_seed", "sampler", "steps", "schedule",
              "guidance", "temperature", "seed", "n_samples", "extractor_sha256")


class MetricsLog:
    """`resume_at`: the images of the checkpoint a run starts from (0: none). What was logged after it (by a run that
    crashed later) is dropped from metrics.jsonl and TensorBoard, so the log tells the story of the weights that are
    there."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_at: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

            with taking_turns(self.path.parent):  # nobody rewrites it now: a temporary left beside it is a killed writer's
                atomic.remove_leftovers(self.path, inside=False)
                if resume_at is not None:
                    self._truncate(resume_at)
            # purge_step: TensorBoard hides the events of this log folder from that step on (its resume mechanism).
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"),
                                     purge_step=None if resume_at is None else resume_at + 1)

    def _truncate(self, images: int) -> None:
        """Keep the records up to `images` of training and of evaluation during training; `difftrain eval` records stay."""
        self._drop(lambda r: (r.get("event") != "eval" or r.get("during_training")) and r.get("images", 0) > images)

    def _drop(self, which: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
        """Rewrite metrics.jsonl without the records `which` picks (and any line cut short by a crash); return those."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        kept, dropped = [], []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if which(record):
                dropped.append(record)
            else:
                kept.append(line)
        if len(kept) != len(lines):
            atomic.write_text(self.path, "".join(f"{line}\n" for line in kept))
        return dropped

    def write(self, record: dict[str, Any], step_key: str = "images", same: Sequence[str] = ()) -> None:
        """Append `record`; with `same` (field names), earlier records that agree with it on all of them are the same
        measurement: they leave the file, and what they hold that `record` does not is kept in it."""
        if not self.enabled:
            return
        logged = {}  # what the replaced records hold, so TensorBoard has it already
        with taking_turns(self.path.parent):
            if same:
                for earlier in self._drop(lambda r: all(r.get(k) == record.get(k) for k in same)):
                    logged |= earlier
                    record = {**earlier, **record}
            cut = _cut_short(self.path)
            with open(self.path, "a") as f:
                f.write(("\n" if cut else "") + json.dumps(record) + "\n")
        for key, value in record.items():
            # The fields that name an evaluation (steps, guidance, seed...) are not scores; and TensorBoard cannot
            # replace an event, so a score it holds already is not sent again (a changed one is, beside the older).
            if key in EVALUATION or key == step_key or (key in logged and logged[key] == value):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, record.get(step_key, 0))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _cut_short(path: Path) -> bool:
    """Whether the file's last line lacks its newline: a writer was killed in it, and the next record starts a line."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return records
