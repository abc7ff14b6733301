"""The diffusers folder format: export a model as a pipeline that stock diffusers loads, and read one back.

Which pipeline and scheduler an export gets (checked against the diffusers 0.42 source):

- VP, unconditional -> DDPMPipeline + DDPMScheduler. DDPMPipeline starts from unit noise (DDPM's x_T) and feeds
  x_t to the UNet unscaled with the integer timestep t: exactly VP's c_in * x and c_noise.
- VP, class-conditional -> ConsistencyModelPipeline + DDIMScheduler. DDPMPipeline cannot pass class_labels;
  ConsistencyModelPipeline is the stock pipeline that drives a UNet2DModel with class_labels, and for DDIM its
  init_noise_sigma and scale_model_input are identities.
- EDM, either -> ConsistencyModelPipeline + EDMEulerScheduler. EDM needs its input scaled by c_in and its initial
  noise multiplied by sigma_max: ConsistencyModelPipeline calls scheduler.scale_model_input and multiplies by
  scheduler.init_noise_sigma, DDPMPipeline does neither. EDMEulerScheduler's prediction_type "epsilon" is
  Karras' Table 1 preconditioning (c_skip, c_out, c_in, c_noise = log(sigma)/4).

VP schedulers use "trailing" timestep spacing: their timesteps are difftrain's "uniform" VP schedule.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    ConsistencyModelPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    EDMEulerScheduler,
    UNet2DModel,
)
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from difftrain.atomic import atomic_directory
from difftrain.config import DiffusionConfig
from difftrain.diffusion.formulations import EDM
from difftrain.errors import UserError

UNET_CLASS = "UNet2DModel"
WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"  # sharded safetensors
WEIGHTS_BIN = "diffusion_pytorch_model.bin"  # older diffusers, pickled
SCHEDULER_CONFIG = "scheduler_config.json"
INFO = "difftrain.json"  # difftrain's own metadata; stock diffusers ignores it

PIPELINES = {"DDPMPipeline": DDPMPipeline, "ConsistencyModelPipeline": ConsistencyModelPipeline}
SCHEDULERS = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler, "EDMEulerScheduler": EDMEulerScheduler}

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}  # diffusers' prediction_type -> DiffusionConfig.prediction
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
UNSUPPORTED_SCHEDULERS = {
    "ScoreSdeVeScheduler": "a variance-exploding score-SDE",
    "KarrasVeScheduler": "a variance-exploding",
    "CMStochasticIterativeScheduler": "a consistency-model",
}
BETA_KEYS = ("beta_start", "beta_end", "beta_schedule", "trained_betas")
# Samplers of DDPM's discrete beta schedule; any other class qualifies by having BETA_KEYS.
BETA_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                   "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                   "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")
# diffusers' defaults for keys that older scheduler configs leave out (DDPMScheduler's, shared by its siblings).
BETA_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


# ---- scheduler config <-> difftrain's formulation settings ----


def scheduler_to_diffusion(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """The DiffusionConfig fields that define the model behind a diffusers scheduler config (scheduler_config.json)."""
    name = config.get("_class_name", "an unnamed scheduler")

    def refuse(key: str, why: str) -> UserError:
        of = "" if key == "_class_name" else f" ({name})"
        return UserError(f"{where}: {key}={config.get(key)!r}{of}: {why}")

    cannot = "difftrain cannot train or sample this model; start from another model or train from scratch"
    if name in UNSUPPORTED_SCHEDULERS:
        raise refuse("_class_name", f"{UNSUPPORTED_SCHEDULERS[name]} model; difftrain supports EDM and "
                                    f"VP (DDPM beta schedule) models only, so {cannot}")
    prediction = config.get("prediction_type", "epsilon")
    if name in EDM_SCHEDULERS:
        # Only "epsilon" is Karras' c_out = sigma*sigma_data/sqrt(sigma^2+sigma_data^2); "v_prediction" flips its sign.
        if prediction != "epsilon":
            raise refuse("prediction_type", f"difftrain's EDM preconditioning is diffusers' 'epsilon' one, so {cannot}")
        return _validated({"formulation": "edm", "sigma_data": config.get("sigma_data", 0.5)}, where)
    if name not in BETA_SCHEDULERS and not any(key in config for key in BETA_KEYS):
        raise refuse("_class_name", f"not a DDPM-style (beta schedule) or EDM scheduler (flow matching and other "
                                    f"formulations are not supported), so {cannot}")
    if config.get("trained_betas") is not None:
        raise refuse("trained_betas", f"a custom beta table is not supported (only linear/scaled_linear), so {cannot}")
    if config.get("rescale_betas_zero_snr"):
        raise refuse("rescale_betas_zero_snr", f"zero-terminal-SNR schedules have an infinite sigma_max, so {cannot}")
    values = {**BETA_DEFAULTS, **{k: config[k] for k in BETA_DEFAULTS if config.get(k) is not None}}
    if values["beta_schedule"] not in ("linear", "scaled_linear"):
        raise refuse("beta_schedule", f"difftrain's VP formulation has 'linear' and 'scaled_linear' only, so {cannot}")
    if prediction == "sample":
        raise refuse("prediction_type", f"x0-prediction is not supported (VP predicts eps or v), so {cannot}")
    if prediction not in PREDICTIONS:
        raise refuse("prediction_type", f"VP predicts 'epsilon' or 'v_prediction' only, so {cannot}")
    if config.get("variance_type") in ("learned", "learned_range"):
        raise refuse("variance_type", f"its UNet also predicts a variance (doubled output channels), so {cannot}")
    if config.get("timestep_type", "discrete") != "discrete":
        raise refuse("timestep_type", f"its UNet sees log-sigma instead of the timestep t, so {cannot}")
    if config.get("use_flow_sigmas"):
        raise refuse("use_flow_sigmas", f"a flow-matching model is not supported, so {cannot}")
    return _validated({
        "formulation": "vp",
        "prediction": PREDICTIONS[prediction],
        "beta_schedule": values["beta_schedule"],
        "beta_start": values["beta_start"],
        "beta_end": values["beta_end"],
        "num_timesteps": values["num_train_timesteps"],
    }, where)


def _validated(values: dict[str, Any], where: Path) -> dict[str, Any]:
    try:
        checked = DiffusionConfig(**values)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}={err['input']!r}: {err['msg']}" for err in e.errors())
        raise UserError(f"{where}: {problems}; correct the value in that file or start from another model") from None
    return {key: getattr(checked, key) for key in values}


def diffusion_to_scheduler(diffusion: DiffusionConfig, conditional: bool) -> tuple[str, str, dict[str, Any]]:
    """(pipeline class, scheduler class, scheduler kwargs) that sample this formulation in stock diffusers."""
    if diffusion.formulation == "edm":
        return "ConsistencyModelPipeline", "EDMEulerScheduler", {
            "sigma_min": EDM.sigma_min,
            "sigma_max": EDM.sigma_max,
            "sigma_data": diffusion.sigma_data,
            "sigma_schedule": "karras",
            "rho": 7.0,
            "prediction_type": "epsilon",
            "final_sigmas_type": "zero",
        }
    vp = {
        "num_train_timesteps": diffusion.num_timesteps,
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "beta_schedule": diffusion.beta_schedule,
        "prediction_type": {v: k for k, v in PREDICTIONS.items()}[diffusion.prediction],
        "clip_sample": False,  # difftrain never clips x0_hat
        "timestep_spacing": "trailing",  # = difftrain's "uniform" VP timesteps, and starts at t = T-1
    }
    if conditional:
        return "ConsistencyModelPipeline", "DDIMScheduler", {**vp, "set_alpha_to_one": True}
    return "DDPMPipeline", "DDPMScheduler", {**vp, "variance_type": "fixed_small"}


# ---- export ----


def write_pipeline(unet: UNet2DModel, diffusion: DiffusionConfig, out: Path, info: dict[str, Any], *,
                   overwrite: bool = False) -> Path:
    """Write `out`, a folder that `DiffusionPipeline.from_pretrained(out)` loads, atomically; `info` -> difftrain.json."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another output folder or pass --overwrite to replace it")
    conditional = unet.config.num_class_embeds is not None
    pipeline_name, scheduler_name, scheduler_kwargs = diffusion_to_scheduler(diffusion, conditional)
    scheduler = SCHEDULERS[scheduler_name](**scheduler_kwargs)
    pipeline = PIPELINES[pipeline_name](unet=_portable_copy(unet), scheduler=scheduler)
    readme = _readme(pipeline_name, scheduler_name, diffusion, pipeline.unet.config, info)
    try:
        with atomic_directory(out, overwrite) as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
            (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
            (tmp / "README.md").write_text(readme)
    except FileExistsError:
        raise UserError(f"{out} appeared while exporting: choose another output folder or pass --overwrite") from None
    return out


def _portable_copy(unet: UNet2DModel) -> UNet2DModel:
    """A float32 CPU copy whose config stock pipelines read correctly."""
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    size = config["sample_size"]
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        # ConsistencyModelPipeline uses sample_size as one int for both height and width.
        config["sample_size"] = int(size[0])
    copy = UNet2DModel.from_config(config)
    copy.load_state_dict(unet.state_dict())
    return copy


def usage(*call: str) -> list[str]:
    """An exported folder's README code: load it with stock diffusers, then `call` (lines) to sample."""
    return ["```python", "import torch", "from diffusers import DiffusionPipeline", "",
            'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder")', *call, "```"]


def _readme(pipeline: str, scheduler: str, diffusion: DiffusionConfig, unet_config, info: dict[str, Any]) -> str:
    """How to load and sample the exported folder with stock diffusers."""
    embeds = unet_config.num_class_embeds
    null_label = info.get("null_label")
    what = "EDM (Karras et al. 2022)" if diffusion.formulation == "edm" else \
        f"VP/DDPM ({diffusion.prediction}-prediction, {diffusion.beta_schedule} betas, {diffusion.num_timesteps} timesteps)"
    args = ["batch_size=4", "num_inference_steps=50" if scheduler != "EDMEulerScheduler" else "num_inference_steps=32"]
    classes = null_label if null_label is not None else embeds  # the real classes, without the "no label" row
    if embeds:
        args.insert(1, f"class_labels={[i % max(classes, 1) for i in range(4)]}")
    lines = [
        "# difftrain model (diffusers format)",
        "",
        f"A {what} image diffusion model trained with difftrain, saved as a `{pipeline}` with a `{scheduler}`.",
        "",
        *usage(f"images = pipe({', '.join(args)}, generator=torch.Generator().manual_seed(0)).images"),
        "",
        "`images` are PIL images; `output_type=\"np\"` gives float arrays in [0, 1].",
    ]
    if pipeline == "ConsistencyModelPipeline":
        lines += ["`ConsistencyModelPipeline` takes 1 step unless told: always pass `num_inference_steps`."]
        if not isinstance(unet_config.sample_size, int):
            lines += [f"Its images are square; this model's are {unet_config.sample_size[0]}x{unet_config.sample_size[1]}, "
                      "so run the UNet and scheduler in your own loop."]
    if pipeline == "DDPMPipeline":
        lines += ["For deterministic DDIM sampling: `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."]
    if pipeline == "DDPMPipeline" or scheduler == "DDIMScheduler":
        lines += [f"With DDIMScheduler choose a step count that divides {diffusion.num_timesteps} (10, 20, 50, ...): "
                  "it steps by num_train_timesteps // num_inference_steps."]
    if embeds:
        names = info.get("class_names")
        lines += ["", f"The model is class-conditional: pass `class_labels` (indices 0..{embeds - 1}). Without them "
                      "`ConsistencyModelPipeline` draws random labels from every row of the class embedding."]
        if names:
            lines += ["Classes: " + ", ".join(f"{i} = {name}" for i, name in enumerate(names)) + "."]
        if null_label is not None:
            lines += [f"Label {null_label} is the \"no label\" row (null label, for classifier-free guidance): it "
                      "gives unconditional samples. The stock pipeline has no guidance scale."]
    lines += ["", f"`{INFO}` holds difftrain's metadata (classes, null label, image shape, source run); diffusers "
                  "ignores it.", ""]
    return "\n".join(lines)


# ---- import ----


@dataclass
class DiffusersModel:
    """What a diffusers folder holds, read without building the model, so a caller reports mismatches itself."""

    unet_config: dict[str, Any]  # the UNet2DModel's config.json
    weights: dict[str, torch.Tensor]  # its state dict
    diffusion: dict[str, Any] | None  # DiffusionConfig fields from the scheduler config (None: no scheduler config)
    info: dict[str, Any]  # difftrain.json, or {} when difftrain did not export the folder
    origin: str  # a human description of what was read


def is_diffusers_folder(path: Path) -> bool:
    """Whether `path` looks like a diffusers pipeline or model folder (read_diffusers then says what is wrong)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "model_index.json").is_file() or any(path.glob("diffusion_pytorch_model*")):
        return True
    try:
        return "_diffusers_version" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def read_diffusers(path: Path) -> DiffusersModel:
    """A pipeline folder (model_index.json with a UNet2DModel `unet`) or a bare UNet2DModel folder (config.json)."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        index = read_json(path / "model_index.json")
        entry = index.get("unet")
        if entry is None:
            parts = ", ".join(k for k in index if not k.startswith("_")) or "none"
            raise UserError(f"{path / 'model_index.json'}: the {index.get('_class_name', 'pipeline')} has no `unet` "
                            f"(its components: {parts}); difftrain reads pipelines built on a UNet2DModel only")
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] != UNET_CLASS:
            raise UserError(f"{path / 'model_index.json'}: its unet is {entry!r}, not a {UNET_CLASS}; "
                            f"{_UNSUPPORTED_UNET}")
        unet_dir, root = path / "unet", path
        scheduler_file = path / "scheduler" / SCHEDULER_CONFIG
        described = [f"diffusers pipeline {path}", index.get("_class_name", "unnamed pipeline")]
    elif (path / "config.json").is_file():
        unet_dir = path
        inside_pipeline = (path.parent / "model_index.json").is_file()
        root = path.parent if inside_pipeline else path
        scheduler_file = path / SCHEDULER_CONFIG
        if not scheduler_file.is_file():
            scheduler_file = path.parent / "scheduler" / SCHEDULER_CONFIG
        described = [f"diffusers {UNET_CLASS} folder {path}"]
    else:
        raise UserError(f"{path}: no model_index.json or config.json here; give a diffusers pipeline folder or a "
                        f"{UNET_CLASS} folder written by save_pretrained")
    unet_config = _read_unet_config(unet_dir / "config.json")
    weights = read_weights(unet_dir)
    diffusion, scheduler_name = None, "no scheduler config"
    if scheduler_file.is_file():
        scheduler = read_json(scheduler_file)
        diffusion = scheduler_to_diffusion(scheduler, scheduler_file)
        scheduler_name = scheduler.get("_class_name", "unnamed scheduler")
    info = read_json(root / INFO) if (root / INFO).is_file() else {}
    origin = f"{described[0]} ({', '.join(described[1:] + [scheduler_name])})"
    return DiffusersModel(unet_config=unet_config, weights=weights, diffusion=diffusion, info=info, origin=origin)


_UNSUPPORTED_UNET = ("difftrain reads UNet2DModel folders, and text-to-image pipeline folders whose unet is a "
                     "UNet2DConditionModel with their vae, text_encoder, tokenizer and scheduler (a Stable Diffusion "
                     "folder): give the whole pipeline folder, or an unconditional or class-conditional UNet2DModel")


def read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {file}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{file} is not valid JSON ({e}): re-download or re-export it") from None
    if not isinstance(data, dict):
        raise UserError(f"{file} must hold a JSON object, not {type(data).__name__}: re-download or re-export it")
    return data


def _read_unet_config(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise UserError(f"{file} is missing: a {UNET_CLASS} folder needs its config.json (written by save_pretrained)")
    config = read_json(file)
    name = config.get("_class_name")
    if name != UNET_CLASS:
        raise UserError(f"{file}: _class_name={name!r}, not {UNET_CLASS!r}; {_UNSUPPORTED_UNET}")
    return config


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict from safetensors (single or sharded), else from a pickled .bin (tensors only)."""
    if (folder / WEIGHTS).is_file():
        return _load_safetensors(folder / WEIGHTS)
    if (folder / WEIGHTS_INDEX).is_file():
        shards = sorted(set(read_json(folder / WEIGHTS_INDEX).get("weight_map", {}).values()))
        if not shards:
            raise UserError(f"{folder / WEIGHTS_INDEX} lists no weight files: re-download or re-export the model")
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (folder / shard).is_file():
                raise UserError(f"{folder / shard} (listed in {WEIGHTS_INDEX}) is missing: re-download the model")
            weights.update(_load_safetensors(folder / shard))
        return weights
    if (folder / WEIGHTS_BIN).is_file():
        try:
            # weights_only: a .bin is a pickle, and unpickling arbitrary objects could run code.
            weights = torch.load(folder / WEIGHTS_BIN, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise UserError(f"cannot read {folder / WEIGHTS_BIN} ({e}): re-download the model, or convert it to "
                            f"{WEIGHTS}") from None
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise UserError(f"{folder / WEIGHTS_BIN} is not a state dict of tensors: re-save it with save_pretrained")
        return weights
    variants = sorted(p.name for p in folder.glob("diffusion_pytorch_model.*"))
    found = f" (found only {', '.join(variants)}: rename the one to use to {WEIGHTS})" if variants else ""
    raise UserError(f"{folder / WEIGHTS} is missing{found}; a {UNET_CLASS} folder needs its weights")


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(file, device="cpu")
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {file} ({e}): the file is damaged or incomplete; re-download or re-export "
                        "the model") from None
