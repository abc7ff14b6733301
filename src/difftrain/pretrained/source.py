"""What `train --init SOURCE` starts from: a difftrain run or checkpoint, or a diffusers folder.

Every source becomes the same thing: UNet2DModel weights, the network and formulation they
were trained with, and the names of their class-embedding rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from difftrain.config import Config, validate_config
from difftrain.errors import UserError
from difftrain.models.unet import model_fields
from difftrain.store.run import Run, source_run
from difftrain.store.checkpoint import Checkpoint, open_checkpoint, resolve_checkpoint

# The UNet settings that define the network's weights; training choices (dropout, labels) stay the user's.
ARCHITECTURE = ("channels", "attention", "layers_per_block", "attention_head_dim", "norm_groups", "unet_options")
# The diffusion settings that define what the network predicts; a fine-tune must keep them.
FORMULATION = ("formulation", "prediction", "sigma_data", "beta_schedule", "beta_start", "beta_end", "num_timesteps")


@dataclass
class Pretrained:
    origin: str  # what was loaded, for the report
    weights: dict[str, torch.Tensor]  # a UNet2DModel state dict
    model: dict[str, Any]  # model.unet fields of the network the weights belong to
    diffusion: dict[str, Any] | None  # DiffusionConfig fields it was trained with (None: unknown)
    class_names: list[str] | None  # names of the class-embedding rows, in order (None: unnamed)
    has_null_label: bool  # its last class-embedding row is difftrain's "no label" row
    checkpoint: Checkpoint | None = None  # the difftrain checkpoint it comes from
    notes: list[str] = field(default_factory=list)


def transferable(net: torch.nn.Module, what: str) -> torch.nn.Module:
    """The part of a network whose weights move between runs and diffusers folders; refused for networks without one."""
    from diffusers import UNet2DModel

    core = net.core()
    if not isinstance(core, UNet2DModel):
        raise UserError(f"{what}: its {type(net).__name__} network cannot be loaded into another network yet "
                        "(starting from weights works for UNet runs and diffusers folders)")
    return core


def open_pretrained(source: str | Path, warn=print) -> Pretrained:
    """A run folder (its latest checkpoint), a checkpoint folder, or a diffusers pipeline or UNet folder."""
    from difftrain.pretrained.diffusers_format import is_diffusers_folder

    path = Path(source)
    if not path.exists():
        raise UserError(f"--init {source}: no such file or folder")
    is_checkpoint = (path / "info.json").is_file()
    run = source_run(path)
    if run is not None:
        return _from_run(run, open_checkpoint(path) if is_checkpoint else resolve_checkpoint(run.path, "latest", warn))
    if is_checkpoint:
        raise UserError(f"--init {source}: a checkpoint must sit in its run folder (RUN/checkpoints/NAME) to know its network")
    if is_diffusers_folder(path):
        return _from_diffusers(path)
    raise UserError(f"--init {source} is neither a difftrain run or checkpoint nor a diffusers folder "
                    "(model_index.json, or config.json with UNet2DModel weights)")


def _from_run(run: Run, checkpoint: Checkpoint) -> Pretrained:
    # The EMA weights, as sampling uses them; a LoRA run's adapters are merged in by run.denoiser.
    unet = transferable(run.denoiser(checkpoint).net, f"--init {run.path}")
    model = run.config.model.unet.model_dump()
    return Pretrained(
        origin=f"run {run.path} ({checkpoint.path.name}, {checkpoint.images:,} images)",
        weights={k: v.clone() for k, v in unet.state_dict().items()},
        model={k: model[k] for k in ARCHITECTURE},
        diffusion=run.config.diffusion.model_dump(),
        class_names=list(run.dataset["class_names"] or []) if run.num_classes else None,
        has_null_label=bool(run.num_classes),
        checkpoint=checkpoint,
    )


def _from_diffusers(path: Path) -> Pretrained:
    from difftrain.pretrained.diffusers_format import read_diffusers

    found = read_diffusers(path)
    info = found.info  # difftrain.json, when difftrain exported the folder
    notes = []
    if found.diffusion is None:
        notes.append("no scheduler config found beside the UNet: its formulation is taken from your config (diffusion.*)")
    try:
        fields = model_fields(found.unet_config)
    except ValueError as e:
        raise UserError(f"{path}: its UNet2DModel config cannot be rebuilt by difftrain: {e}") from None
    # A difftrain export also carries its training choices (weighting, noise levels); the scheduler's formulation wins.
    diffusion = None if found.diffusion is None else {**info.get("diffusion", {}), **found.diffusion}
    return Pretrained(
        origin=found.origin,
        weights=found.weights,
        model={k: fields[k] for k in ARCHITECTURE},
        diffusion=diffusion,
        class_names=info.get("class_names"),
        has_null_label=info.get("null_label") is not None,
        notes=notes,
    )


def config_for_source(config: Config, source: Pretrained, explicit: set[str] = frozenset()) -> Config:
    """`config` with the source's network and formulation, which its weights only work with.

    `explicit` holds the keys the user set (e.g. "model.unet.channels"); one that contradicts the source is an error.
    """
    model = dict(source.model)
    if config.model.arch not in ("auto", "unet"):
        raise UserError(f"model.arch={config.model.arch} contradicts --init {source.origin}, a UNet2DModel: drop the model.arch setting")
    if source.diffusion is None and "diffusion.formulation" not in explicit:
        raise UserError(f"--init {source.origin}: no scheduler config says how this UNet was trained; say it yourself, "
                        "e.g. diffusion.formulation=vp diffusion.prediction=eps (with its beta schedule), or diffusion.formulation=edm")
    diffusion = {k: v for k, v in (source.diffusion or {}).items() if k in FORMULATION}
    for section, values in (("model.unet", model), ("diffusion", diffusion)):
        current = (config.model.unet if section == "model.unet" else config.diffusion).model_dump()
        for key, value in values.items():
            named = {f"{section}.{key}", f"model.{key}"} if section == "model.unet" else {f"{section}.{key}"}
            if named & explicit and current[key] != value:
                raise UserError(f"{section}.{key}={current[key]!r} contradicts --init {source.origin}, which has {value!r}: "
                                f"its weights only work with the source's value; drop the {section}.{key} setting")
    # The source's training choices (loss weighting, noise levels) carry over unless set by the user.
    choices = {k: v for k, v in (source.diffusion or {}).items() if k not in FORMULATION and f"diffusion.{k}" not in explicit}
    if "weighting" not in (source.diffusion or {}) and diffusion.get("formulation") == "vp" and "diffusion.weighting" not in explicit:
        choices["weighting"] = "uniform"  # a foreign VP model: diffusers trains them on the plain eps/v MSE
    raw = config.model_dump(mode="json")
    raw["model"]["arch"] = "unet"
    raw["model"]["unet"].update(model)
    raw["diffusion"].update(diffusion | choices)
    return validate_config(raw, f"--init {source.origin}")
