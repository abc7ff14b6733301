"""A sweep: an Optuna study in SQLite whose trials are ordinary runs, pruned on the evaluation during training.

Layout of a sweep folder:
    sweep.json           what was asked (preset, config, overrides, data, budget, trials, space); `--resume` reads it
    study.db             the Optuna study (SQLite): several workers share it, Optuna's dashboard opens it
    trials/trial-0003/   each trial's run folder: config, checkpoints, metrics; resumable, evaluable, exportable

A killed worker leaves its trial RUNNING; `sweep --resume` continues that trial's run from its last checkpoint under
the same trial number, so no trial is lost or run twice. A trial that fails (out of memory, NaN stop, a setting that
does not validate) is recorded as FAIL with its reason, and the study goes on.
"""

from __future__ import annotations

import json
import math
import os
import socket
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from difftrain import atomic
from difftrain.config import Config, load_config, metric_family, validate_config
from difftrain.errors import UserError
from difftrain.sweep.space import COSTS, Space, describe, parse_space, read_space

STUDY_NAME = "difftrain"


@dataclass
class SweepSpec:
    """What `difftrain sweep` was asked, saved as sweep.json so that `--resume` goes on with the same study."""

    budget_images: int
    trials: int
    space: dict
    preset: str | None = None
    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    data: str | None = None
    seed: int = 0
    auto_batch: bool = False

    def save(self, out: Path) -> None:
        atomic.write_text(out / "sweep.json", json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(out: Path) -> "SweepSpec":
        path = out / "sweep.json"
        if not path.is_file():
            raise UserError(f"{out} is not a sweep folder ({path.name} is missing): start one with "
                            f"`difftrain sweep --preset digits --out {out}`")
        try:
            return SweepSpec(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise UserError(f"{path} is damaged ({e}); start a new sweep in another --out") from None

    def parsed_space(self) -> Space:
        return parse_space(self.space, "sweep.json", [])


def configure(spec: SweepSpec, settings: dict[str, Any] | None = None) -> Config:
    """The config of a trial with `settings` (or the base config without): the sweep's preset, file and overrides, the
    settings, the budget, and an evaluation during training that records the objectives."""
    overrides = [*spec.overrides, *(f"{k}={json.dumps(v)}" for k, v in (settings or {}).items())]
    cfg = load_config(spec.preset, spec.config_file, overrides)
    if spec.data:
        cfg.data.path = spec.data
    cfg.train.duration_images, cfg.train.duration_steps = spec.budget_images, None
    metrics = spec.parsed_space().metrics if spec.space else []
    ec = cfg.eval
    if not ec.every_images:  # the pruner's signal: four evaluations per trial unless the config says otherwise
        ec.every_images = max(spec.budget_images // 4, cfg.train.batch_size)
    for metric in metrics:
        if metric_family(metric) not in ec.during_metrics:
            ec.during_metrics = [*ec.during_metrics, metric_family(metric)]
    if metrics:
        ec.best_metric = metrics[0]
    return validate_config(cfg.model_dump(mode="json"), "the sweep's config")


def start(out: Path, spec: SweepSpec, space_file: Path | None) -> SweepSpec:
    """A new sweep folder: the space resolved (sweep.yaml or the default one) and checked, sweep.json written."""
    if (out / "sweep.json").is_file():
        raise UserError(f"{out} already holds a sweep: continue it with `difftrain sweep --resume {out}`, or choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} is a folder with other files; choose a new or empty folder for the sweep")
    base = configure(spec)
    space = read_space(space_file, base, spec.budget_images)
    spec.space = space.to_dict()
    configure(spec)  # the objectives must be computable during training
    out.mkdir(parents=True, exist_ok=True)
    spec.save(out)
    return spec


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*is already reported.*")
    return optuna


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_study(out: Path, spec: SweepSpec, *, seed_offset: int = 0):
    """The sweep's study (created on first use), with its sampler and pruner rebuilt from sweep.json."""
    optuna = _quiet_optuna()
    space = spec.parsed_space()
    every = configure(spec).eval.every_images
    seed = spec.seed + seed_offset
    samplers = {
        # A few random trials first, then TPE over the parameters jointly; constant_liar keeps parallel workers apart.
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, spec.trials // 3)),
                                                  multivariate=True, group=True, constant_liar=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=3),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=every, max_resource=spec.budget_images,
                                                             reduction_factor=3),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    storage = optuna.storages.RDBStorage(storage_url(out), engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.create_study(storage=storage, study_name=STUDY_NAME, directions=space.directions,
                               sampler=samplers[space.sampler](), pruner=pruners[space.pruner](), load_if_exists=True)


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead(worker: str | None) -> bool:
    """Whether the worker that holds a trial is gone (a process of this machine that no longer runs)."""
    if not worker:
        return True
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return False  # another machine's worker: it cannot be checked from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


@contextmanager
def _ask_lock(out: Path):
    """One worker at a time decides what to run next, so that --trials is exact with several workers."""
    from filelock import FileLock

    with FileLock(str(out / ".ask.lock"), timeout=120):
        yield


def _next_trial(out: Path, study, spec: SweepSpec):
    """A trial to run: one a killed worker left RUNNING (continued under its own number), else a new one while the
    study has fewer than `spec.trials`; None when the study is full."""
    import optuna

    with _ask_lock(out):
        trials = study.get_trials(deepcopy=False)
        for frozen in trials:
            if frozen.state == optuna.trial.TrialState.RUNNING and _dead(frozen.user_attrs.get("worker")):
                trial = optuna.trial.Trial(study, frozen._trial_id)
                trial.set_user_attr("worker", _me())
                return trial, True
        if len(trials) >= spec.trials:
            return None, False
        trial = study.ask()
        trial.set_user_attr("worker", _me())
        return trial, False


class _Pruned(Exception):
    def __init__(self, images: int):
        self.images = images


def _pruning_hooks(config: Config, trial, metric: str | None):
    """The run's own hooks, with the evaluation during training reported to the trial, which may stop the run there
    (its checkpoint is written first, so a pruned trial's run can still be resumed or evaluated)."""
    from difftrain.training.trainer import default_hooks, evaluate_ema

    hooks = default_hooks(config)

    def evaluate(state):
        record = evaluate_ema(state)
        if record is not None and metric is not None and math.isfinite(record.get(metric, math.nan)):
            trial.report(record[metric], state.images)
            if state.images < state.goal and trial.should_prune():
                raise _Pruned(state.images)
        return record

    hooks.evaluate = evaluate
    return hooks


def _final_values(run_dir: Path, config: Config, space: Space, images: int, seconds: float) -> list[float]:
    """The objectives at the end of a trial: its evaluation at the end of training (at `images`, the budget rounded up
    to whole batches), and its costs."""
    from difftrain.sampling import SamplingSpec

    final: dict[str, Any] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("during_training") and record.get("images") == images:
            final = record
    costs = {"train_images": images, "train_seconds": seconds,
             "nfe": SamplingSpec.from_config(config.sample).network_evaluations}
    values = []
    for name in space.objectives:
        value = costs[name] if name in COSTS else final.get(name)
        if value is None or not math.isfinite(value):
            raise UserError(f"objective {name} was not recorded at the end of training (eval records: "
                            f"{sorted(k for k in final if isinstance(final[k], float))})")
        values.append(float(value))
    return values


def run_trial(out: Path, spec: SweepSpec, study, trial, *, resumed: bool, console: Console, progress: bool) -> str:
    """Train one trial's run to its end or its pruning; tell the study. Its line for the console."""
    import optuna
    import torch

    from difftrain.training.trainer import run as run_training, setup

    space = spec.parsed_space()
    run_dir = out / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    settings = space.draw(trial, configure(spec))
    head = f"trial {trial.number}" + (" (resumed)" if resumed else "") + f": {describe(settings)}"
    console.print(f"[bold]{head}[/]")
    try:
        config = configure(spec, settings)
        if spec.auto_batch:
            from difftrain.hardware.verdicts import fit_accumulation

            console.print(f"auto-batch: {fit_accumulation(config, spec.preset)}")
        metric = space.metrics[0] if len(space.objectives) == 1 and space.metrics else None
        state = setup(config, run_dir, resume=True, progress=progress, console=console)
        result = run_training(state, _pruning_hooks(config, trial, metric), progress=progress)
        values = _final_values(run_dir, config, space, result.images, result.seconds)
    except _Pruned as p:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return f"trial {trial.number}: pruned at {p.images:,} images"
    except (UserError, torch.OutOfMemoryError, RuntimeError, ValueError, OSError) as e:
        reason = ("out of memory: " if isinstance(e, torch.OutOfMemoryError) else "") + (" ".join(str(e).split()) or type(e).__name__)
        if run_dir.is_dir():
            atomic.write_text(run_dir / "failure.txt", traceback.format_exc())
        trial.set_user_attr("fail_reason", reason[:500])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"trial {trial.number}: [red]failed[/]: {reason}"
    study.tell(trial, values)
    return f"trial {trial.number}: " + ", ".join(f"{n} {v:.4g}" for n, v in zip(space.objectives, values))


def run_worker(out: Path, *, console: Console, progress: bool = True, worker: int = 0) -> int:
    """Run trials until the study holds sweep.json's number of trials; how many this worker ran."""
    spec = SweepSpec.load(out)
    # A sampler seeded afresh on every resume and per worker, so that no two draw the same random trials.
    study = open_study(out, spec, seed_offset=1000 * worker + _count_trials(out))
    ran = 0
    while True:
        trial, resumed = _next_trial(out, study, spec)
        if trial is None:
            return ran
        console.print(run_trial(out, spec, study, trial, resumed=resumed, console=console, progress=progress))
        ran += 1


def _count_trials(out: Path) -> int:
    if not (out / "study.db").is_file():
        return 0
    optuna = _quiet_optuna()
    try:
        return len(optuna.load_study(study_name=STUDY_NAME, storage=storage_url(out)).get_trials(deepcopy=False))
    except KeyError:
        return 0


def load(out: Path):
    """The study of a sweep folder, for reading."""
    if not (out / "study.db").is_file():
        SweepSpec.load(out)
        raise UserError(f"{out} has no trials yet: run `difftrain sweep --resume {out}`")
    optuna = _quiet_optuna()
    return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(out))
