"""Work shared out over the processes of a multi-process launch (`accelerate launch`): who does
which batch, and how results come back in order. It goes through torch.distributed once that is
initialised (accelerate's PartialState does it; on CPU only when made with cpu=True); in one
process every function here is a plain loop that touches nothing.
"""

from __future__ import annotations

import atexit
import functools
import math
from datetime import timedelta
from typing import Callable, TypeVar

import torch

from difftrain.errors import UserError

T = TypeVar("T")

# How long the other processes wait for the main one, which alone evaluates during training and
# trains the feature classifier: torch's default (10 minutes with NCCL) is shorter than either can take.
WAIT_FOR_MAIN = timedelta(hours=2)
LEAVE_WAIT = timedelta(minutes=1)


@functools.cache
def leave_at_exit() -> None:
    """Have this process leave its process group cleanly when it exits, whichever way the command ends."""
    atexit.register(leave_processes)


def leave_processes() -> None:
    """Leave the process group: on CPU processes first wait (a minute at most) for the others to get here, then
    destroy it. gloo aborts a process ("terminate called without an active exception") that tears its group down while a
    peer still talks to it; a peer that is gone (it failed) only costs the wait."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_backend() == "gloo":  # (NCCL has no barrier that gives up)
        try:
            torch.distributed.monitored_barrier(timeout=LEAVE_WAIT)
        except RuntimeError:
            pass  # a peer has quit: its launcher reports it
    torch.distributed.destroy_process_group()


def processes() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) unless torch.distributed is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return processes()[0] == 0


def from_main_process(obj: T) -> T:
    """The main process's `obj`, on every process (each waits for the main one to get there)."""
    if processes()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def on_main_process(work: Callable[[], T]) -> T | None:
    """work() on the main process, None on the others. An error it raises is raised on every process
    (as a UserError with its message on the others), so that none waits for a main process that has quit."""
    if processes()[1] == 1:
        return work()
    result, error = None, None
    if is_main_process():
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - any failure must reach the waiting processes
            error = e
    message = from_main_process(None if error is None else str(error) or type(error).__name__)
    if error is not None:
        raise error
    if message is not None:
        raise UserError(f"the main process stopped: {message}")
    return result


def own_batches(count: int, rank: int, world: int) -> range:
    """The batches (of `count`) that process `rank` of `world` computes: rank, rank + world, ..."""
    return range(rank, count, world)


def own_images(n: int, batch_size: int) -> int:
    """How many of n images, in batches of batch_size, this process draws with `generate(across_processes=True)`."""
    return sum(min(batch_size, n - i * batch_size) for i in own_batches(math.ceil(n / batch_size), *processes()))


def map_batches(count: int, compute: Callable[[int], T], across_processes: bool = False) -> list[T]:
    """[compute(0), ..., compute(count - 1)]. `across_processes`: this process computes its own batches, then
    every process receives all results, in batch order."""
    rank, world = processes() if across_processes else (0, 1)
    results = {i: compute(i) for i in own_batches(count, rank, world)}
    if world > 1:
        everyone: list[dict[int, T]] = [{} for _ in range(world)]
        torch.distributed.all_gather_object(everyone, results)
        results = {i: result for each in everyone for i, result in each.items()}
    return [results[i] for i in sorted(results)]
