"""What this machine is: software versions, devices, CPU, memory, disk and the distributed launch."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from difftrain import __version__


@dataclass
class GPUInfo:
    index: int
    name: str
    total_memory_bytes: int
    free_memory_bytes: int
    capability: str  # "8.0"
    bf16: bool
    fp16: bool
    tf32: bool  # Ampere (8.0) and newer


@dataclass
class CUDAStatus:
    """Whether CUDA is usable, and why not when a GPU seems present."""

    available: bool
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES as set
    device_files: bool  # /dev/nvidia0 ... exist
    driver_version: str | None  # from /proc/driver/nvidia/version
    torch_cuda_version: str | None  # the CUDA runtime torch was built with
    cudnn_version: int | None
    error: str | None  # why torch cannot use the GPU, when it says
    visible_but_unusable: bool  # a GPU seems present (device files or CUDA_VISIBLE_DEVICES) but torch cannot use it


@dataclass
class DistributedInfo:
    world_size: int
    rank: int
    local_rank: int
    master_addr: str | None
    master_port: str | None


@dataclass
class DiskInfo:
    path: str  # where the run will write
    checked: str  # the nearest existing folder at or above it
    free_bytes: int
    total_bytes: int


@dataclass
class Environment:
    os: str
    python: str
    difftrain: str
    torch: str
    accelerate: str
    diffusers: str
    cuda: CUDAStatus
    gpus: list[GPUInfo]
    mps: bool
    cpu_model: str
    cpu_cores: int  # cores this process may use
    torch_threads: int
    ram_total_bytes: int
    ram_available_bytes: int
    disk: DiskInfo
    distributed: DistributedInfo
    notes: list[str] = field(default_factory=list)


def meminfo() -> tuple[int, int]:
    """(total, available) RAM in bytes from /proc/meminfo, else from sysconf; 0 where unknown."""
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
        return values.get("MemTotal", 0), values.get("MemAvailable", values.get("MemFree", 0))
    except (OSError, ValueError, IndexError):
        pass

    def pages(name: str) -> int:
        try:
            return os.sysconf(name) * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 0

    return pages("SC_PHYS_PAGES"), pages("SC_AVPHYS_PAGES")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def disk_info(out_dir: str | Path) -> DiskInfo:
    """Free space where `out_dir` will be created: the nearest existing folder at or above it."""
    path = Path(out_dir).absolute()
    checked = path
    while not checked.exists() and checked != checked.parent:
        checked = checked.parent
    usage = shutil.disk_usage(checked)
    return DiskInfo(str(path), str(checked), usage.free, usage.total)


def cuda_status() -> CUDAStatus:
    error = None
    available = torch.cuda.is_available()
    driver = None
    try:
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
        driver = next((w for w in first.split() if w[:1].isdigit() and "." in w), first.strip())
    except (OSError, IndexError):
        pass
    device_files = any(Path("/dev").glob("nvidia[0-9]*"))
    if not available and torch.version.cuda and (device_files or os.environ.get("CUDA_VISIBLE_DEVICES")):
        try:
            torch.cuda.init()  # raises with the reason: no driver, driver too old for the runtime, ...
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    cudnn = torch.backends.cudnn.version() if available else None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    unusable = not available and (device_files or visible not in (None, "", "-1"))
    return CUDAStatus(available, visible, device_files, driver, torch.version.cuda, cudnn, error, unusable)


def gpu_info(index: int) -> GPUInfo:
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    major, minor = torch.cuda.get_device_capability(index)
    with torch.cuda.device(index):
        bf16 = torch.cuda.is_bf16_supported()
    return GPUInfo(index, props.name, total, free, f"{major}.{minor}", bf16, fp16=(major, minor) >= (5, 3), tf32=major >= 8)


def distributed_info() -> DistributedInfo:
    env = os.environ

    def number(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            return default

    return DistributedInfo(number("WORLD_SIZE", 1), number("RANK", 0), number("LOCAL_RANK", 0),
                           env.get("MASTER_ADDR"), env.get("MASTER_PORT"))


def collect_environment(out_dir: str | Path) -> Environment:
    """The environment report; `out_dir` is where the run will write."""
    import accelerate
    import diffusers

    cuda = cuda_status()
    gpus = [gpu_info(i) for i in range(torch.cuda.device_count())] if cuda.available else []
    total, available = meminfo()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    notes = []
    if available == 0:
        notes.append("available RAM is unknown (no /proc/meminfo): the CPU memory budget needs --memory-budget")
    return Environment(
        os=platform.platform(), python=platform.python_version(), difftrain=__version__, torch=torch.__version__,
        accelerate=accelerate.__version__, diffusers=diffusers.__version__, cuda=cuda, gpus=gpus, mps=mps,
        cpu_model=_cpu_model(), cpu_cores=_cpu_cores(), torch_threads=torch.get_num_threads(),
        ram_total_bytes=total, ram_available_bytes=available, disk=disk_info(out_dir),
        distributed=distributed_info(), notes=notes)
