"""Progress that a job log can read: rich's bars on a terminal, plain lines every PLAIN_EVERY seconds anywhere else
(nohup, a cluster job's log, CI), where rich would print nothing until the end.

`Progress(...)` and `track(...)` take rich's arguments and return rich's objects on a terminal; elsewhere the
PlainProgress stand-in prints "train: 12,800/55,040 (23%), loss 0.1234, speed 1,530, 0:00:08 elapsed, about 0:00:27
left", at the start, then at most every PLAIN_EVERY seconds, and at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import Progress as RichProgress

T = TypeVar("T")


def plain_every() -> float:
    """Seconds between plain progress lines (DIFFTRAIN_PROGRESS_EVERY, default 30)."""
    try:
        return max(0.0, float(os.environ.get("DIFFTRAIN_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class PlainProgress:
    """rich.progress.Progress's calls (a context; add_task, update, advance) as plain lines on `console`."""

    def __init__(self, *columns: Any, console: Console, disable: bool = False, **_: Any):
        self.console, self.disable, self.every = console, disable, plain_every()
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            for task in self.tasks:
                self._say(task, force=True, final=True)

    def start(self) -> None:
        """(rich's: the bar drawn again after `stop`; a plain line has nothing to redraw)"""

    def stop(self) -> None:
        """(rich's: the bar held still while something else prints)"""

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        task = len(self.tasks)
        now = time.monotonic()
        self.tasks[task] = {"description": description, "total": total, "completed": completed, "fields": fields,
                            "start": now, "start_completed": completed, "said": None, "said_completed": None}
        self._say(task, force=True)
        return task

    def update(self, task: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if description is not None:
            t["description"] = description
        t["fields"].update(fields)
        self._say(task, force=description is not None)  # a new stage is worth a line at once

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _say(self, task: int, force: bool = False, final: bool = False) -> None:
        t, now = self.tasks[task], time.monotonic()
        if self.disable or (not force and t["said"] is not None and now - t["said"] < self.every):
            return
        if final and t["said_completed"] == t["completed"]:
            return  # said already
        t["said"], t["said_completed"] = now, t["completed"]
        done, total, elapsed = t["completed"], t["total"], now - t["start"]
        parts = [f"{t['description'].replace('[bold]', '').replace('[/]', '')}: {done:,.0f}"
                 + (f"/{total:,.0f} ({100 * done / total:.0f}%)" if total else "")]
        parts += [f"{key} {value}" for key, value in t["fields"].items() if value not in ("-", "", None)]
        parts.append(f"{_clock(elapsed)} elapsed")
        rate = (done - t["start_completed"]) / elapsed if elapsed > 0 else 0
        if total and rate > 0 and done < total:
            parts.append(f"about {_clock((total - done) / rate)} left")
        self.console.print(", ".join(parts), highlight=False, markup=False, soft_wrap=True)


def stderr_console() -> Console:
    """The console of messages. In a job log rich would wrap each line at 80 columns (its width when there is no
    terminal): there a message stays one line, for grep and for the reader."""
    console = Console(stderr=True)
    console.soft_wrap = not console.is_terminal
    return console


@contextmanager
def status(message: str, console: Console | None = None) -> Iterator[None]:
    """rich's spinner with `message` on a terminal; elsewhere one plain line (a spinner prints nothing to a file)."""
    console = console or stderr_console()
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        console.print(f"{message} ...", highlight=False, markup=False)
        yield


def Progress(*columns: Any, console: Console | None = None, **options: Any):  # noqa: N802 - rich's name, rich's call
    """rich's Progress on a terminal, PlainProgress anywhere else."""
    console = console or stderr_console()
    if console.is_terminal:
        return RichProgress(*columns, console=console, **options)
    return PlainProgress(*columns, console=console, **options)


def track(sequence: Iterable[T], description: str = "Working...", total: float | None = None, *,
          console: Console | None = None, disable: bool = False) -> Iterator[T]:
    """rich.progress.track, with plain lines when the output is not a terminal."""
    if total is None and hasattr(sequence, "__len__"):
        total = len(sequence)  # type: ignore[arg-type]
    with Progress(console=console, disable=disable) as bar:
        task = bar.add_task(description, total=total)
        for item in sequence:
            yield item
            bar.advance(task, 1)
