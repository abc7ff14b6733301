"""`train --latent RUN`: a prepared image dataset seen through an autoencoder run's latent space.

A new run pins the autoencoder's checkpoint (model.latent becomes its folder), keeps a copy of its EMA weights as
RUN/autoencoder.safetensors (so the run decodes even after the autoencoder trains on and prunes that checkpoint), encodes
the training images once into RUN/latents/train.npy and scales the latents to unit RMS (model.latent_scale records the
factor). A resumed run reads it all back from its own folder.

model.latent may also name a diffusers AutoencoderKL folder, or a pipeline folder with a vae/ (Stable Diffusion's): its
weights are copied as they are, and its latents scaled by its scaling_factor, as the pipeline scales them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console
from safetensors.torch import save_file
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

from difftrain.progress import Progress, stderr_console
from difftrain import atomic
from difftrain.config import Config
from difftrain.data import PreparedDataset
from difftrain.errors import UserError
from difftrain.hashing import sha256_file
from difftrain.modalities import modality_for
from difftrain.models.autoencoder import AutoencoderFolder, autoencoder_folder
from difftrain.store.checkpoint import resolve_checkpoint
from difftrain.store.run import LATENT_WEIGHTS, source_run

LATENTS = Path("latents")  # RUN/latents/{train,replay}.npy: the model tensors of the training images, encoded once


def latents_cache(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / LATENTS / f"{name}.npy"


def latent_dataset(config: Config, dataset: PreparedDataset, run_dir: Path, *, resume: bool, device="cpu",
                   console: Console | None = None) -> tuple[Config, PreparedDataset]:
    """The config with model.latent pinned to a checkpoint, and `dataset` seen through that autoencoder."""
    run_dir, console = Path(run_dir), console or stderr_console()
    copy, summary = run_dir / LATENT_WEIGHTS, run_dir / "dataset.json"
    if resume and copy.is_file() and summary.is_file():
        spec = json.loads(summary.read_text())["modality"]
        return config, dataset.seen_as(modality_for({**spec, "latent": {**spec["latent"], "weights": str(copy)}}))

    if config.train.hflip:
        raise UserError("train.hflip mirrors images, and a latent diffusion model sees latents encoded once, whose mirror "
                        "is not the latent of the mirrored image: set train.hflip=false with --latent")
    # Every process of a launch does this alike (the same files, each written atomically): no process waits for another.
    shutil.rmtree(run_dir / LATENTS, ignore_errors=True)  # a new run's latents are its own, never an earlier start's
    copy.parent.mkdir(parents=True, exist_ok=True)
    folder = diffusers_autoencoder(config.model.latent, dataset.modality)
    if folder is not None:  # a diffusers AutoencoderKL (Stable Diffusion's VAE): its weights as they are
        with atomic.atomic_file(copy) as tmp:
            shutil.copyfile(folder.weights, tmp)
        settings, pinned, given_scale = folder.fields, str(folder.path.resolve()), folder.scaling_factor
    else:
        source, checkpoint = autoencoder_checkpoint(config.model.latent, dataset.modality, dataset.path)
        with atomic.atomic_file(copy) as tmp:  # the EMA weights, LoRA merged in, as the run decodes with them
            save_file({k: v.contiguous() for k, v in source.network(checkpoint).state_dict().items()}, tmp)
        settings, pinned, given_scale = source.config.model.autoencoder.model_dump(), str(checkpoint.path.resolve()), None
    unit = latent_modality(dataset.modality, settings, copy, sha256_file(copy))
    h, w, c = dataset.modality.shape
    codes = encode_with_progress(unit, dataset.train_data, device, console)
    scale = config.model.latent_scale or given_scale
    if scale is None:  # unit RMS, so that sigma_data = 1 describes them (Stable Diffusion's 1/std, for latents centred on zero)
        rms = float(np.sqrt(np.mean(np.square(codes, dtype=np.float64)))) if codes.size else 0.0
        scale = 1.0 / rms if rms > 0 else 1.0
        how = "to unit RMS"
    else:
        how = "as model.latent_scale says" if config.model.latent_scale else "its scaling_factor"
    unit.spec["latent"]["scale"] = scale
    atomic.write_npy(latents_cache(run_dir, "train"), codes * np.float32(scale))
    console.print(f"latent space: {pinned} encodes {h}x{w}x{c} images into {'x'.join(map(str, unit.model_shape))} "
                  f"latents (scaled by {scale:.4g}, {how})")
    model = config.model.model_copy(update={"latent": pinned, "latent_scale": scale})
    return config.model_copy(update={"model": model}), dataset.seen_as(unit)


def diffusers_autoencoder(given: str, modality) -> AutoencoderFolder | None:
    """The diffusers AutoencoderKL that model.latent names, checked against the data, or None for a difftrain run
    (autoencoder_checkpoint's, which every caller asks for after this: the data's kind is checked here once)."""
    if modality.kind != "image":
        raise UserError(f"--latent: latent diffusion takes images; this data is {modality.kind}: leave --latent out")
    folder = autoencoder_folder(given)
    if folder is None:
        return None
    if modality.shape[2] != folder.channels:
        raise UserError(f"--latent {given}: its autoencoder encodes images of {folder.channels} channel(s), this data's "
                        f"have {modality.shape[2]}: prepare the images with as many (data prepare --mode)")
    return folder


def autoencoder_checkpoint(given: str, modality, data_path) -> tuple:
    """The autoencoder run that model.latent names and its checkpoint (a run: its latest), after checking that it is an
    autoencoder of this data's images (diffusers_autoencoder has checked that they are images)."""
    source = source_run(given)
    if source is None or not source.is_autoencoder:
        what = "no difftrain run" if source is None else f"a model.arch={source.config.model.arch} run"
        raise UserError(f"--latent {given} is {what}, not an autoencoder: train one first with `difftrain train --preset "
                        f"autoencoder --data {data_path} --out RUN`, then pass --latent RUN")
    if not source.modality.same_data(modality):
        raise UserError(f"the autoencoder {source.path} was trained on {source.modality.kind} data "
                        f"{source.modality.spec_summary()}, this data is {modality.kind} {modality.spec_summary()}: "
                        "train an autoencoder on images of this size")
    checkpoint = resolve_checkpoint(source.path, "latest" if (Path(given) / "config.yaml").is_file() else str(given))
    return source, checkpoint


def latent_modality(images, settings: dict, weights: Path, sha256: str, scale: float = 1.0):
    """`images` (an image modality) seen through the autoencoder of `settings` whose weights are in `weights`."""
    h, w, c = images.shape
    unit = modality_for({**images.spec, "latent": {"autoencoder": settings, "weights": str(weights), "sha256": sha256,
                                                   "shape": [], "scale": scale}})
    unit.spec["latent"]["shape"] = list(unit.autoencoder.latent_shape((c, h, w)))
    return unit


def latent_view(config: Config, images):
    """`images` seen through the autoencoder that model.latent names, read where it is, latents unscaled (what `doctor`
    probes a latent diffusion config with: the latents' shape, not their values, sets a step's cost)."""
    folder = diffusers_autoencoder(config.model.latent, images)
    if folder is not None:
        return latent_modality(images, folder.fields, folder.weights, sha256_file(folder.weights))
    source, checkpoint = autoencoder_checkpoint(config.model.latent, images, "DATA")
    return latent_modality(images, source.config.model.autoencoder.model_dump(), checkpoint.path / "ema.safetensors",
                           checkpoint.info["sha256"]["ema.safetensors"])


def encode_with_progress(modality, images: np.ndarray, device, console: Console) -> np.ndarray:
    columns = [TextColumn("[bold]encoding images into the latent space"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("encode", total=len(images))
        return modality.encode(images, device, progress=lambda done: bar.update(task, completed=done))
