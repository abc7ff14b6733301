"""`difftrain doctor`: the environment report, the probe of the config, the fit, and the verdicts."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from difftrain.config import Config
from difftrain.errors import UserError
from difftrain.hardware.probe import Fit, Probe, data_shape, probe_config
from difftrain.hardware.report import Environment, collect_environment
from difftrain.hardware.verdicts import (
    Verdict,
    check_cuda,
    check_device,
    check_disk,
    check_distributed,
    check_memory,
    check_sampling,
    check_time,
)


@dataclass
class DoctorReport:
    environment: Environment
    probe: Probe | None
    fit: Fit | None
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(v.status == "FAIL" for v in self.verdicts)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def run_doctor(config: Config, out_dir: str | Path = "runs", *, preset: str | None = None,
               memory_budget: int | None = None, warmup_steps: int = 1, timed_steps: int = 3) -> DoctorReport:
    """Check this machine against `config`: report, probe and fit, then one verdict per finding."""
    started = time.perf_counter()
    env = collect_environment(out_dir)
    report = DoctorReport(env, None, None)
    verdicts = report.verdicts
    cuda = check_cuda(env, config)
    if cuda:
        verdicts.append(cuda)
    distributed = check_distributed(env.distributed)
    if distributed:
        verdicts.append(distributed)
    if not (distributed and distributed.status == "FAIL"):  # a probe would hang on the process group
        try:
            data = data_shape(config, preset)
            report.probe, report.fit = probe_config(config, data, memory_budget, warmup_steps, timed_steps)
        except UserError as e:  # e.g. train.device=cuda without a GPU, bf16 on a CPU, a broken --data folder
            verdicts.append(Verdict("FAIL", "config", str(e), None))
        else:
            if data.dataset is None and not config.data.path:
                shape = "x".join(map(str, data.modality.shape))
                verdicts.append(Verdict("WARN", "data", f"no dataset given: the probe ran on random {shape} {data.modality.kind} data "
                                                        f"({data.num_classes} classes), the {preset} preset's shape",
                                        "training needs --data DIR (make one with `difftrain data prepare SOURCE --out DIR`)"))
    if report.fit is not None:
        verdicts += check_device(env, report.fit, report.probe)
        verdicts.append(check_memory(env, report.fit))
    if report.probe is not None:
        verdicts += [check_disk(env, config, report.probe), check_time(report.probe), check_sampling(report.fit, report.probe)]
    report.seconds = time.perf_counter() - started
    return report
