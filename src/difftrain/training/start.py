"""What a run starts from: the checkpoint it resumes (after refusing to train over anything else), the
--init source and its network and formulation, the replayed data, the model's classes; and the record of it."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from difftrain import atomic
from difftrain.config import Config
from difftrain.data import PreparedDataset, load_dataset
from difftrain.errors import UserError
from difftrain.models import CLASS_ROWS
from difftrain.pretrained.source import Pretrained, config_for_source, open_pretrained
from difftrain.pretrained.transfer import LoadReport, label_space
from difftrain.store.checkpoint import Checkpoint, checkpoint_images, latest_checkpoint, list_checkpoints
from difftrain.store.run import replay_path

RUN_FILES = {"config.yaml", "dataset.json", "checkpoints", "samples", "eval", "metrics.jsonl", "tensorboard", "README.md", "data",
             "autoencoder.safetensors", "latents", "posthoc"}  # (latent diffusion, store/latent.py; post-hoc EMA)


def resumable_checkpoint(run_dir: Path, resume: bool, console: Console) -> Checkpoint | None:
    """The checkpoint to resume from, after refusing to train over anything else."""
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "config.yaml").is_file():
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES)
        if foreign:
            raise UserError(f"--out {run_dir} is a folder with other files ({', '.join(foreign[:3])}); choose a new or empty folder for the run")
    if not resume:
        if list_checkpoints(run_dir):
            raise UserError(f"{run_dir} already holds a trained run; pass --resume to continue it or choose another --out")
        return None
    existing = latest_checkpoint(run_dir, warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
    if existing is None and list_checkpoints(run_dir):
        raise UserError(f"no valid checkpoint left in {run_dir / 'checkpoints'} to resume from")
    # Damaged checkpoints newer than the one resumed from are set aside (kept, never deleted),
    # so they cannot shadow or displace the checkpoints that this run writes next.
    for path in list_checkpoints(run_dir):
        if existing is not None and checkpoint_images(path) > existing.images:
            path.rename(path.with_name(f"damaged-{path.name}"))
            console.print(f"[yellow]warning:[/] set aside damaged checkpoint as {path.with_name(f'damaged-{path.name}')}")
    return existing


def starting_point(config: Config, dataset: PreparedDataset, run_dir: Path, existing: Checkpoint | None,
                    source: Pretrained | None, console: Console) -> tuple[Config, Pretrained | None, PreparedDataset | None, list[str]]:
    """What a run starts from besides its data: the --init source (its network and formulation
    taken into the config), the replayed data, and the model's classes."""
    fc = config.finetune
    if fc.init and existing is None and source is None:
        source = open_pretrained(fc.init, warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
        config = config_for_source(config, source)
    if source is not None and existing is None:  # (before a latent space encodes the data for nothing)
        source.check_prompts(dataset.train_captions is not None and config.model.conditional)
    replay = None
    if fc.replay:
        if not fc.init:
            raise UserError("finetune.replay (--replay) mixes in the data of the run you start from: pass --init RUN")
        replay = load_dataset(replay_path(fc))
        if replay.sample_shape != dataset.sample_shape or (replay.num_classes == 0) != (dataset.num_classes == 0):
            raise UserError(f"the replayed data {replay.path} holds {replay.sample_shape} images "
                            f"{'with' if replay.num_classes else 'without'} labels, the new data {dataset.sample_shape} "
                            f"{'with' if dataset.num_classes else 'without'}: replay needs the same shape, and labels on both or neither")
    # The model's classes: kept from the run before when resuming, else the source's then the data's.
    if existing is not None:
        model_classes = json.loads((run_dir / "dataset.json").read_text())["class_names"] or []
    else:
        model_classes = label_space(source, dataset.class_names, *([replay.class_names] if replay else []))
    new_classes = (source is not None and not source.captioned and config.model.conditional
                   and len(model_classes) > len(source.class_names or []))  # (a captioned model has no class rows)
    rows = CLASS_ROWS[source.model["arch"]] if new_classes else None
    if new_classes and (fc.lora_rank or fc.train_only) and rows not in fc.train_only:
        # New classes need their embedding rows trained, even when the rest is frozen or adapted.
        config = config.model_copy(update={"finetune": fc.model_copy(update={"train_only": [*fc.train_only, rows]})})
    return config, source, replay, model_classes


def record_start(run_dir: Path, init: str, source: Pretrained, report: LoadReport, trainable: int, total: int, console: Console) -> None:
    """Print the load report and keep it as RUN/init.json (the run's README shows it)."""
    console.print(f"started from {source.origin}")
    for line in [*source.notes, *report.lines()]:
        console.print(f"  {line}")
    atomic.write_json(run_dir / "init.json", {
        "source": init, "origin": source.origin, "notes": source.notes,
        "checkpoint": str(source.checkpoint.path.resolve()) if source.checkpoint else None,
        **report.as_dict(), "trainable_parameters": trainable, "parameters": total})


def unlabelled_data(config: Config, dataset: PreparedDataset) -> PreparedDataset | None:
    """data.unlabelled, checked against the training data: items of the same kind and shape, for a class-conditional
    model (they are drawn under its 'no label' condition)."""
    path = config.data.unlabelled
    if not path:
        return None
    if not (config.model.conditional and dataset.num_classes) or dataset.train_captions is not None:
        what = "captioned" if dataset.train_captions is not None else "not class-conditional"
        raise UserError(f"data.unlabelled={path} adds items under the 'no label' condition of a class-conditional model; "
                        f"this run is {what}: leave data.unlabelled out, or put those items into data.path")
    if not (Path(path) / "manifest.json").is_file():
        raise UserError(f"data.unlabelled={path} is not a prepared dataset: prepare it first "
                        f"(`difftrain data prepare SOURCE --out {path}`)")
    extra = load_dataset(path)
    if extra.modality.kind != dataset.modality.kind or extra.sample_shape != dataset.sample_shape:
        raise UserError(f"data.unlabelled={path} holds {extra.modality.kind} items of shape {extra.sample_shape}, the "
                        f"training data {dataset.modality.kind} items of shape {dataset.sample_shape}: give items of the "
                        "same kind and shape")
    return extra
