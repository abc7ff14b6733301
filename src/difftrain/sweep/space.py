"""A sweep's search space and objectives: read from sweep.yaml, or the default for the config's network.

sweep.yaml:

    objective: fid                 # any metric the evaluation during training records, or several: [fid, nfe]
    pruner: median                 # median, successive_halving, hyperband or none
    sampler: tpe                   # tpe, random, cmaes or nsga2 (several objectives: nsga2)
    params:
      optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
      train.batch_size: {choices: [64, 128, 256]}
      model.unet.channels: {choices: [[32, 64], [64, 128]]}
      model.unet.attention_head_dim: {choices: [16, 32], when: {model.arch: unet}}

A parameter with `choices` is categorical (any YAML values, lists too); one with `low` and `high` is an integer when
both are integers (or `type: int`), else a float; `log` and `step` as in Optuna. `when` samples it only while the
named keys have those values (earlier parameters, else the base config).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from difftrain.config import Config, EvalConfig, describe_fields
from difftrain.errors import UserError

# Objectives that are costs rather than metrics, always minimised.
COSTS = {
    "train_images": "training images of the trial (train.duration_images)",
    "nfe": "network evaluations per sample (sample.sampler and sample.steps)",
    "train_seconds": "wall time of the trial's training",
}
METRICS = set(EvalConfig.model_fields["best_metric"].annotation.__args__)
PRUNERS = ("median", "successive_halving", "hyperband", "none")
SAMPLERS = ("tpe", "random", "cmaes", "nsga2")


@dataclass
class Param:
    """One dimension of the space: categorical (`choices`), or an int or float range."""

    key: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    kind: str = "float"  # "int", "float" or "categorical"
    log: bool = False
    step: float | None = None
    when: dict[str, Any] = field(default_factory=dict)

    def suggest(self, trial) -> Any:
        """Draw (or, for a trial already drawn, read back) this parameter from an Optuna trial."""
        if self.kind == "categorical":
            # Optuna keeps primitives only: lists are stored as their JSON text and read back.
            text = trial.suggest_categorical(self.key, [json.dumps(c) for c in self.choices])
            return json.loads(text)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict:
        """As sweep.yaml writes it."""
        spec = {"choices": self.choices} if self.kind == "categorical" else {"low": self.low, "high": self.high, "type": self.kind}
        spec.update({"log": True} if self.log else {}, **({"step": self.step} if self.step else {}),
                    **({"when": self.when} if self.when else {}))
        return spec

    def applies(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) == v or (isinstance(v, list) and values.get(k) in v) for k, v in self.when.items())


@dataclass
class Space:
    params: list[Param]
    objectives: list[str] = field(default_factory=lambda: ["fid"])
    pruner: str = "median"
    sampler: str = "tpe"

    @property
    def directions(self) -> list[str]:
        from difftrain.evaluation.suite import LOWER_IS_BETTER

        return ["minimize" if o in COSTS or o in LOWER_IS_BETTER else "maximize" for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        """The objectives the evaluation during training records."""
        return [o for o in self.objectives if o not in COSTS]

    def draw(self, trial, base: Config) -> dict[str, Any]:
        """The trial's settings {key: value}: its parameters in order, each one whose `when` holds."""
        values = {key: value for key, value, _ in _flat(base)}
        chosen = {}
        for p in self.params:
            if p.applies(values):
                chosen[p.key] = values[p.key] = p.suggest(trial)
        return chosen

    def to_dict(self) -> dict:
        return {"objective": self.objectives, "pruner": self.pruner, "sampler": self.sampler,
                "params": {p.key: p.to_dict() for p in self.params}}


def _flat(cfg: Config) -> list[tuple[str, Any, str]]:
    dumped = cfg.model_dump(mode="json")
    rows = []
    for key, _, description in describe_fields():
        node = dumped
        for part in key.split("."):
            node = node[part]
        rows.append((key, node, description))
    return rows


def _param(key: str, spec: Any, origin: str, keys: set[str]) -> Param:
    where = f"{origin}: params.{key}"
    if key not in keys:
        near = sorted(k for k in keys if k.split(".")[-1] == key.split(".")[-1])
        raise UserError(f"{where}: no such setting" + (f" (did you mean {', '.join(near[:3])}?)" if near else "")
                        + "; `difftrain config` lists every setting")
    if not isinstance(spec, dict):
        raise UserError(f"{where}: give a mapping, e.g. {{low: 1.0e-4, high: 1.0e-2, log: true}} or {{choices: [64, 128]}}")
    unknown = set(spec) - {"choices", "low", "high", "log", "step", "type", "when"}
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; use choices, low, high, log, step, type, when")
    when = spec.get("when") or {}
    if not isinstance(when, dict) or any(k not in keys for k in when):
        raise UserError(f"{where}: `when` must map settings to values, e.g. {{model.arch: unet}}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list")
        return Param(key, choices=choices, kind="categorical", when=when)
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise UserError(f"{where}: give numbers low < high (got low={low!r}, high={high!r}), or choices")
    kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise UserError(f"{where}: type must be int or float, got {kind!r}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0 (got {low})")
    if log and spec.get("step"):
        raise UserError(f"{where}: Optuna cannot combine log with step: drop one of them")
    return Param(key, low=low, high=high, kind=kind, log=log, step=spec.get("step"), when=when)


def _objectives(value: Any, origin: str) -> list[str]:
    names = value if isinstance(value, list) else [value]
    for name in names:
        if name not in METRICS and name not in COSTS:
            raise UserError(f"{origin}: objective {name!r} is neither a metric of the evaluation during training "
                            f"({', '.join(sorted(METRICS))}) nor a cost ({', '.join(COSTS)})")
    if not names or len(set(names)) != len(names):
        raise UserError(f"{origin}: give one objective, or several different ones (e.g. [fid, nfe])")
    return list(names)


def parse_space(raw: Any, origin: str, default_params: list[Param]) -> Space:
    """A Space from sweep.yaml's mapping; without `params`, the default parameters."""
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping with objective, pruner, sampler and params")
    unknown = set(raw) - {"objective", "pruner", "sampler", "params"}
    if unknown:
        raise UserError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))}; use objective, pruner, sampler, params")
    objectives = _objectives(raw.get("objective", "fid"), origin)
    pruner = raw.get("pruner", "median" if len(objectives) == 1 else "none")
    sampler = raw.get("sampler", "tpe" if len(objectives) == 1 else "nsga2")
    if pruner not in PRUNERS:
        raise UserError(f"{origin}: pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if sampler not in SAMPLERS:
        raise UserError(f"{origin}: sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if len(objectives) > 1 and pruner != "none":
        raise UserError(f"{origin}: pruning needs one objective (Optuna prunes single-objective studies only); "
                        "set pruner: none for several objectives")
    keys = {key for key, _, _ in describe_fields()}
    params_raw = raw.get("params")
    if params_raw is None:
        params = default_params
    elif not isinstance(params_raw, dict) or not params_raw:
        raise UserError(f"{origin}: params must map settings to their ranges, e.g. optim.lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}")
    else:
        params = [_param(str(k), v, origin, keys) for k, v in params_raw.items()]
    return Space(params, objectives, pruner, sampler)


def read_space(path: Path | None, base: Config, budget_images: int) -> Space:
    """The space of sweep.yaml at `path`, or the default one for `base`'s network."""
    defaults = default_params(base, budget_images)
    if path is None:
        return Space(defaults)
    if not path.is_file():
        raise UserError(f"--space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"--space {path} is not valid YAML: {e}") from None
    return parse_space(raw, str(path), defaults)


def _widths(value: int, multiple: int) -> list[int]:
    """Half, the same and one and a half times a width, each a multiple of `multiple`."""
    return sorted({max(multiple, round(value * f / multiple) * multiple) for f in (0.5, 1.0, 1.5)})


def default_params(cfg: Config, budget_images: int) -> list[Param]:
    """What is worth searching for any network: the learning rate, batch size, EMA length, noise levels (EDM),
    dropout and width of the configured network, each around the config's own value."""
    lr, batch = cfg.optim.lr, cfg.train.batch_size
    params = [
        Param("optim.lr", low=lr / 5, high=lr * 3, log=True),
        Param("train.batch_size", choices=sorted({max(8, batch // 2), batch, batch * 2}), kind="categorical"),
        Param("train.ema_halflife_images", low=max(100, budget_images // 100), high=max(1000, budget_images // 3),
              kind="int", log=True),
    ]
    if cfg.diffusion.formulation == "edm":
        params += [Param("diffusion.p_mean", low=-1.8, high=-0.4), Param("diffusion.p_std", low=0.8, high=1.8)]
    arch = cfg.model.arch
    if arch == "auto":  # the data's own network
        from difftrain.hardware.probe import data_shape

        arch = data_shape(cfg).modality.default_arch
    section = cfg.model.section(arch)
    fields = type(section).model_fields
    if "dropout" in fields:
        params.append(Param(f"model.{arch}.dropout", low=0.0, high=0.2))
    if arch in ("unet", "unet1d"):
        groups = getattr(section, "norm_groups", 8)
        scaled = [[max(groups, round(c * f / groups) * groups) for c in section.channels] for f in (0.5, 1.0, 1.5)]
        params.append(Param(f"model.{arch}.channels", choices=[s for i, s in enumerate(scaled) if s not in scaled[:i]],
                            kind="categorical"))
    elif "width" in fields:
        heads = getattr(section, "heads", 1)
        params.append(Param(f"model.{arch}.width", choices=_widths(section.width, 8 * heads), kind="categorical"))
    return params


def describe(params: dict[str, Any]) -> str:
    """`key=value` of a trial's settings, numbers to 3 significant figures."""
    def show(v):
        return f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) else json.dumps(v)

    return " ".join(f"{k}={show(v)}" for k, v in params.items())
