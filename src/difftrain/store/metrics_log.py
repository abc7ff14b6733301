"""Training metrics: one JSON line per record in metrics.jsonl, mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from difftrain import atomic


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

            if resume_at is not None:
                self._truncate(resume_at)
            # purge_step: TensorBoard hides the events of this log folder from that step on (its resume mechanism).
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"),
                                     purge_step=None if resume_at is None else resume_at + 1)

    def _truncate(self, images: int) -> None:
        """Keep the records up to `images` of training and of evaluation during training; `difftrain eval` records stay."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            by_training = record.get("event") != "eval" or record.get("during_training")
            if not (by_training and record.get("images", 0) > images):
                kept.append(line)
        if len(kept) != len(lines):
            atomic.write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any], step_key: str = "images") -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != step_key and math.isfinite(value):
                self._tb.add_scalar(key, value, record.get(step_key, 0))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
