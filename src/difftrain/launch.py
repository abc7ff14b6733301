"""`--processes N`: run the same difftrain command under `accelerate launch`, N processes on this machine.

A convenience for one machine; several machines or a saved accelerate config are launched with
`accelerate launch ... -m difftrain ...` directly (docs/scale.md).
"""

from __future__ import annotations

import os
import socket
import sys

from difftrain.errors import UserError


def _without_processes(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_arguments(argv: list[str], processes: int, port: int) -> list[str]:
    """`accelerate launch` arguments that run `python -m difftrain` with `argv` (less --processes).

    `--multi_gpu` picks accelerate's torchrun launcher, which also starts CPU processes (gloo);
    its `--cpu` flag would start one process only (several need MPI).
    """
    return ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no",  # difftrain's config decides both
            "-m", "difftrain", *_without_processes(argv)]


def relaunch(processes: int, *, device: str = "auto", argv: list[str] | None = None) -> int:
    """Run this command again in `processes` processes (GPUs when there are, else CPU cores); the exit code."""
    import torch
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if "LOCAL_RANK" in os.environ:
        raise UserError("--processes starts its own processes; under `accelerate launch` give --num_processes there instead")
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda and processes > torch.cuda.device_count():
        raise UserError(f"--processes {processes}: this machine has {torch.cuda.device_count()} GPU(s); use at most that many")
    if not cuda:
        cores = os.cpu_count() or 1
        if processes > cores:
            raise UserError(f"--processes {processes}: this machine has {cores} CPU core(s); use at most that many")
        # Each process gets its share of the cores (unless told otherwise): processes with all cores each thrash.
        os.environ.setdefault("OMP_NUM_THREADS", str(cores // processes))
    args = launch_command_parser().parse_args(launch_arguments(sys.argv[1:] if argv is None else argv, processes, free_port()))
    try:
        launch_command(args)
    except ChildFailedError as e:
        # Each process has printed its own error; pass on its exit code (2 for a user mistake).
        return next((f.exitcode for f in e.failures.values() if f.exitcode > 0), 1)
    except KeyboardInterrupt:
        return 130
    return 0
