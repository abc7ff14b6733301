"""What `train --init SOURCE` starts from: a difftrain run or checkpoint (a UNet or a DiT, class-conditional or
captioned), a diffusers UNet2DModel folder, or a text-to-image pipeline folder (Stable Diffusion's layout: unet, vae,
text_encoder, tokenizer, scheduler).

Every source becomes the same thing: the weights of the network's transferable part (its core), the model settings and
formulation they were trained with, and the names of their class-embedding rows (and, for a run's own caption encoder,
the characters of its embedding rows). A text-to-image folder's UNet is
fine-tuned in its own VAE's latent space (model.latent, at its scaling_factor), reading prompts with its own text
encoder, frozen (model.text_encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from difftrain.config import Config, validate_config
from difftrain.errors import UserError
from difftrain.models import architecture
from difftrain.models.unet import model_fields
from difftrain.store.run import Run, source_run
from difftrain.store.checkpoint import Checkpoint, open_checkpoint, resolve_checkpoint

# The UNet settings that define the network's weights; training choices (dropout, labels) stay the user's.
ARCHITECTURE = ("channels", "attention", "layers_per_block", "attention_head_dim", "norm_groups", "unet_options")
# A network section's settings that are training choices; the rest define a run's weights.
TRAINING_CHOICES = ("dropout",)
# The diffusion settings that define what the network predicts; a fine-tune must keep them.
FORMULATION = ("formulation", "prediction", "sigma_data", "beta_schedule", "beta_start", "beta_end", "num_timesteps")


@dataclass
class Pretrained:
    origin: str  # what was loaded, for the report
    weights: dict[str, torch.Tensor]  # the state dict of the network's core (a UNet2DModel, or a captioned UNet)
    model: dict[str, Any]  # the model settings the weights need, as the config nests them: {"arch": "unet", "unet": {...}}
    diffusion: dict[str, Any] | None  # DiffusionConfig fields it was trained with (None: unknown)
    class_names: list[str] | None  # names of the class-embedding rows, in order (None: unnamed)
    has_null_label: bool  # its last class-embedding row is difftrain's "no label" row
    checkpoint: Checkpoint | None = None  # the difftrain checkpoint it comes from
    notes: list[str] = field(default_factory=list)
    caption_characters: list[str] | None = None  # a run's own caption encoder: the character of each embedding row

    @property
    def captioned(self) -> bool:
        """A text-to-image model: it reads prompts."""
        return bool(self.model.get("text_encoder")) or self.caption_characters is not None

    def check_prompts(self, captioned: bool) -> None:
        """Refuse a text-to-image source for a model that reads no captions, and the reverse."""
        if self.captioned and not captioned:
            raise UserError(f"--init {self.origin} is a text-to-image model, and this run reads no captions (the data has "
                            "none, or model.conditional=false): prepare captioned images (data prepare --captions FILE)")
        if captioned and not self.captioned:
            raise UserError(f"--init {self.origin} does not read prompts, and this data is captioned: start from a "
                            "text-to-image run or pipeline folder, or from scratch")


def transferable(net: torch.nn.Module, what: str, source: Pretrained | None = None) -> torch.nn.Module:
    """The part of a network whose weights move between runs and folders (an image network's core); refused for other
    networks, and for a `source` that reads prompts when the network does not (or the reverse)."""
    from diffusers import UNet2DModel

    from difftrain.models.dit import DiT
    from difftrain.models.unet_captions import CaptionedUNet

    core = net.core()
    if source is not None:
        source.check_prompts(getattr(core, "captions", None) is not None)
    if not isinstance(core, (UNet2DModel, CaptionedUNet, DiT)):
        raise UserError(f"{what}: its {type(net).__name__} network cannot be loaded into another network yet "
                        "(starting from weights works for image runs (UNet, DiT), diffusers UNet2DModel folders and "
                        "text-to-image pipeline folders)")
    return core


def open_pretrained(source: str | Path, warn=print) -> Pretrained:
    """A run folder (its latest checkpoint), a checkpoint folder, or a diffusers pipeline or UNet folder."""
    from difftrain.pretrained.diffusers_format import is_diffusers_folder
    from difftrain.pretrained.stable_diffusion import is_text_to_image_folder

    path = Path(source)
    if not path.exists():
        raise UserError(f"--init {source}: no such file or folder")
    is_checkpoint = (path / "info.json").is_file()
    run = source_run(path)
    if run is not None:
        return _from_run(run, open_checkpoint(path) if is_checkpoint else resolve_checkpoint(run.path, "latest", warn))
    if is_checkpoint:
        raise UserError(f"--init {source}: a checkpoint must sit in its run folder (RUN/checkpoints/NAME) to know its network")
    if is_text_to_image_folder(path):
        return _from_text_to_image(path)
    if is_diffusers_folder(path):
        return _from_diffusers(path)
    raise UserError(f"--init {source} is neither a difftrain run or checkpoint nor a diffusers folder "
                    "(model_index.json, or config.json with UNet2DModel weights)")


def _from_run(run: Run, checkpoint: Checkpoint) -> Pretrained:
    # The EMA weights, as sampling uses them; a LoRA run's adapters are merged in by run.denoiser.
    core = transferable(run.denoiser(checkpoint).net, f"--init {run.path}")
    model = run.config.model
    arch = architecture(model, run.modality)
    settings = {k: v for k, v in model.section(arch).model_dump().items() if k not in TRAINING_CHOICES}
    own_captions = run.captioned and not model.text_encoder  # (a frozen text model reads prompts by its own tokenizer)
    return Pretrained(
        origin=f"run {run.path} ({checkpoint.path.name}, {checkpoint.images:,} images)",
        weights={k: v.clone() for k, v in core.state_dict().items()},
        model={"arch": arch, arch: settings,
               # A latent model keeps its latent space and the scale it was trained at; a captioned one its text model.
               **({"latent": model.latent, "latent_scale": run.modality.scale} if model.latent else {}),
               **({"text_encoder": model.text_encoder} if run.captioned and model.text_encoder else {})},
        diffusion=run.config.diffusion.model_dump(),
        class_names=list(run.dataset["class_names"] or []) if run.num_classes else None,
        has_null_label=bool(run.num_classes),
        checkpoint=checkpoint,
        caption_characters=list(run.modality.captions.tokenizer.vocab) if own_captions else None,
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
        model={"arch": "unet", "unet": {k: fields[k] for k in ARCHITECTURE}},
        diffusion=diffusion,
        class_names=info.get("class_names"),
        has_null_label=info.get("null_label") is not None,
        notes=notes,
    )


def _from_text_to_image(path: Path) -> Pretrained:
    from difftrain.models.autoencoder import autoencoder_folder
    from difftrain.models.pretrained_text import fingerprint, weights_sha256
    from difftrain.models.unet_captions import captioned_model_fields
    from difftrain.pretrained.stable_diffusion import read_text_to_image

    found = read_text_to_image(path)
    folder = str(path.resolve())
    try:
        fields = captioned_model_fields(found.unet_config)
    except (ValueError, TypeError) as e:  # (pydantic's ValidationError is a ValueError)
        raise UserError(f"{path / 'unet' / 'config.json'}: difftrain cannot rebuild this UNet2DConditionModel ({e})") from None
    vae = autoencoder_folder(folder)
    if vae is None:
        raise UserError(f"{path / 'vae' / 'config.json'} is not a diffusers AutoencoderKL config: re-save the VAE with save_pretrained")
    # The text encoder is the network's frozen part; its weights' fingerprint is its only state.
    weights_fingerprint = fingerprint(weights_sha256(folder))
    return Pretrained(
        origin=found.origin,
        weights={**{f"unet.{k}": v for k, v in found.weights.items()}, "captions.weights_sha256": weights_fingerprint},
        model={"arch": "unet", "unet": {k: fields[k] for k in ARCHITECTURE}, "text_encoder": folder,
               "latent": str(vae.path.resolve()), "latent_scale": vae.scaling_factor},
        # A difftrain export also carries its training choices (weighting, noise levels); the scheduler's formulation wins.
        diffusion={**found.info.get("diffusion", {}), **found.diffusion},
        class_names=None,
        has_null_label=False,
        notes=[f"its text encoder ({folder}/text_encoder) reads the prompts, frozen; its VAE ({folder}/vae) encodes the "
               f"images, latents scaled by {vae.scaling_factor:g}"],
    )


def _flat(patch: dict[str, Any], prefix: str) -> dict[str, Any]:
    """{"unet": {"channels": ...}} -> {"model.unet.channels": ...}"""
    out = {}
    for key, value in patch.items():
        if isinstance(value, dict) and key != "unet_options":
            out |= _flat(value, f"{prefix}.{key}")
        else:
            out[f"{prefix}.{key}"] = value
    return out


# Settings that --latent and --text-encoder give as flags: set to anything else, they contradict the source.
_GIVEN_AS_FLAGS = ("model.latent", "model.text_encoder")


def _folder(path: str | None) -> Path | None:
    """A folder setting, resolved; a pipeline folder as its vae/ (where model.latent is pinned)."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    return resolved / "vae" if (resolved / "model_index.json").is_file() and (resolved / "vae").is_dir() else resolved


def config_for_source(config: Config, source: Pretrained, explicit: set[str] = frozenset()) -> Config:
    """`config` with the source's network and formulation, which its weights only work with.

    `explicit` holds the keys the user set (e.g. "model.unet.channels"); one that contradicts the source is an error.
    """
    arch = source.model["arch"]
    if "model.arch" in explicit and config.model.arch not in ("auto", arch):  # (a preset's choice gives way)
        raise UserError(f"model.arch={config.model.arch} contradicts --init {source.origin}, a model.arch={arch} network: "
                        "drop the model.arch setting")
    if source.diffusion is None and "diffusion.formulation" not in explicit:
        raise UserError(f"--init {source.origin}: no scheduler config says how this UNet was trained; say it yourself, "
                        "e.g. diffusion.formulation=vp diffusion.prediction=eps (with its beta schedule), or diffusion.formulation=edm")
    diffusion = {k: v for k, v in (source.diffusion or {}).items() if k in FORMULATION}
    dump = config.model_dump(mode="json")
    current = _flat(dump["model"], "model") | _flat(dump["diffusion"], "diffusion")
    for key, value in (_flat({k: v for k, v in source.model.items() if k != "arch"}, "model") | _flat(diffusion, "diffusion")).items():
        named = {key, key.replace("model.unet.", "model.")}  # (older configs name UNet keys at the model's top)
        given = bool(named & explicit) or (key in _GIVEN_AS_FLAGS and current.get(key) is not None)
        same = (_folder(current.get(key)) == _folder(value)) if key in _GIVEN_AS_FLAGS else current.get(key) == value
        if given and not same:
            raise UserError(f"{key}={current.get(key)!r} contradicts --init {source.origin}, which has {value!r}: "
                            f"its weights only work with the source's value; drop the {key} setting")
    # The source's training choices (loss weighting, noise levels) carry over unless set by the user.
    choices = {k: v for k, v in (source.diffusion or {}).items() if k not in FORMULATION and f"diffusion.{k}" not in explicit}
    if "weighting" not in (source.diffusion or {}) and diffusion.get("formulation") == "vp" and "diffusion.weighting" not in explicit:
        choices["weighting"] = "uniform"  # a foreign VP model: diffusers trains them on the plain eps/v MSE
    raw = dump
    for key, value in source.model.items():
        if isinstance(value, dict):
            raw["model"][key].update(value)
        else:
            raw["model"][key] = value
    raw["diffusion"].update(diffusion | choices)
    return validate_config(raw, f"--init {source.origin}")
