"""A run directory: its config, the dataset it trained on, and denoisers from its checkpoints.

    RUN/config.yaml        fully resolved config
    RUN/dataset.json       manifest of the prepared dataset (shape, classes, source)
    RUN/checkpoints/       see store/checkpoint.py
    RUN/samples/           PNG grids over training
    RUN/eval/              samples scored by `difftrain eval`, memorization pairs, metric plots
    RUN/metrics.jsonl      training and evaluation records
    RUN/tensorboard/       TensorBoard events
    RUN/README.md          model card and report
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from difftrain import atomic
from difftrain.config import Config, FinetuneConfig, read_config, save_config
from difftrain.data import PreparedDataset
from difftrain.diffusion import Denoiser, build_formulation
from difftrain.errors import UserError
from difftrain.modalities import Modality, builtin_datasets, builtin_test_fraction, prepare, run_modality
from difftrain.models import build_network
from difftrain.store.checkpoint import Checkpoint, resolve_checkpoint

if TYPE_CHECKING:
    from difftrain.sampling import SamplingSpec

LATENT_WEIGHTS = "autoencoder.safetensors"  # a latent diffusion run's copy of its autoencoder's weights


def resolve_dataset(config: Config, run_dir: Path, progress: bool = True, prepare_here: bool = True) -> Path:
    """The configured dataset's folder; a built-in name is prepared once into RUN/data.

    Under several processes only one may prepare (`prepare_here=True`); the others wait, then load.
    """
    path = config.data.path
    if not path:
        raise UserError("no dataset: pass --data DIR (make one with `difftrain data prepare SOURCE --out DIR`)")
    if str(path) in builtin_datasets():
        target = Path(run_dir) / "data"
        if prepare_here and not (target / "manifest.json").is_file():
            prepare(path, target, test_fraction=builtin_test_fraction(path), overwrite=target.exists(), progress=progress)
        return target
    return Path(path)


def with_data_defaults(config: Config, modality, train_data) -> Config:
    """`config` with the settings that 'auto' leaves to the data filled in from it: diffusion.sigma_data."""
    if config.diffusion.sigma_data != "auto":
        return config
    sigma_data = round(modality.default_sigma_data(train_data), 6)
    return config.model_copy(update={"diffusion": config.diffusion.model_copy(update={"sigma_data": sigma_data})})


def formulation_of(config: Config):
    d = config.diffusion
    if d.sigma_data == "auto":  # runs resolve it when training starts (with_data_defaults); a bare config means EDM's 0.5
        d = d.model_copy(update={"sigma_data": 0.5})
    return build_formulation(d.formulation, prediction=d.prediction, sigma_data=d.sigma_data, p_mean=d.p_mean, p_std=d.p_std,
                             beta_start=d.beta_start, beta_end=d.beta_end, num_timesteps=d.num_timesteps, beta_schedule=d.beta_schedule)


def denoiser_of(config: Config, modality: Modality, net: torch.nn.Module) -> Denoiser:
    """The network wrapped as the config's denoiser: its formulation, and its read-out of the modality's categories.
    An autoencoder's objective, its reconstruction loss, stands in the denoiser's place."""
    if config.model.is_autoencoder:
        from difftrain.models.autoencoder import Reconstruction

        return Reconstruction(net, formulation_of(config), config.model.autoencoder.kl_weight)
    return modality.denoiser(net, formulation_of(config), softmax_categories=config.diffusion.categories == "softmax")


def dataset_summary(ds: PreparedDataset, class_names: list[str] | None = None) -> dict[str, Any]:
    """What a run keeps of its dataset, so it samples without the data present.

    `class_names` is the model's label space when it differs from the data's (a fine-tune that kept old classes).
    """
    m = ds.manifest
    names = ds.class_names if class_names is None else class_names
    return {"path": str(Path(ds.path).resolve()), "modality": ds.modality.spec, "shape": list(ds.sample_shape),
            "num_classes": len(names), "class_names": names, "count": m.get("count"), "source": m.get("source"),
            "provenance": m.get("provenance"),
            # Training rows per class, in the model's label order when it is the data's (else unknown).
            "class_counts": (m.get("class_counts") or {}).get("train") if class_names in (None, ds.class_names) else None}


def label_map(data_classes: list[str], model_classes: list[str], where: str = "the dataset",
              target: str = "the model") -> list[int]:
    """The model's label of each of the data's classes, matched by name."""
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        raise UserError(f"{where} has class(es) {', '.join(unknown[:5])} that {target} lacks "
                        f"(it has {', '.join(model_classes[:10])})")
    return [model_classes.index(c) for c in data_classes]


def adapt_network(net: torch.nn.Module, fc: FinetuneConfig) -> torch.nn.Module:
    """`net` with LoRA adapters and frozen parts when finetune.* asks for them."""
    if not (fc.lora_rank or fc.train_only):
        return net
    from difftrain.models.lora import adapt

    return adapt(net, rank=fc.lora_rank, alpha=fc.lora_alpha, targets=fc.lora_targets, train_only=fc.train_only)


def network_for(config: Config, modality: Modality, num_classes: int) -> torch.nn.Module:
    return adapt_network(build_network(config.model, modality, num_classes), config.finetune)


def source_run(init: str | Path) -> "Run | None":
    """The difftrain run that --init names (a run folder or one of its checkpoints), or None."""
    path = Path(init)
    checkpoint = (path / "info.json").is_file()  # RUN/checkpoints/NAME
    for candidate in (path, path.parent.parent) if checkpoint else (path,):
        if (candidate / "config.yaml").is_file() and (candidate / "dataset.json").is_file():
            return open_run(candidate)
    return None


def replay_path(fc: FinetuneConfig) -> Path:
    """The prepared dataset replayed during a continued training: finetune.replay_data, else the source run's."""
    if fc.replay_data:
        return Path(fc.replay_data)
    run = source_run(fc.init)
    if run is None:
        raise UserError(f"--replay needs the data that {fc.init} was trained on: pass it with finetune.replay_data=DIR")
    path = Path(run.dataset["path"])
    if not path.is_dir():
        raise UserError(f"the data of {fc.init} ({path}) is gone: pass its new place with finetune.replay_data=DIR")
    return path


@dataclass
class Run:
    path: Path
    config: Config
    dataset: dict[str, Any]

    @cached_property
    def modality(self) -> Modality:
        summary = self.dataset
        if (summary.get("modality") or {}).get("latent"):  # a latent diffusion run decodes with its own autoencoder copy
            spec = summary["modality"]
            summary = {**summary, "modality": {**spec, "latent": {**spec["latent"], "weights": str(self.path / LATENT_WEIGHTS)}}}
        return run_modality(summary)


    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.modality.shape

    @property
    def captioned(self) -> bool:
        """Whether the model is conditioned on captions (captioned data, model.conditional), not on class labels."""
        return self.config.model.conditional and self.modality.captions is not None

    @property
    def is_autoencoder(self) -> bool:
        return self.config.model.is_autoencoder

    @property
    def num_classes(self) -> int:
        return int(self.dataset["num_classes"] or 0) if self.config.model.conditional and not self.captioned else 0

    @property
    def class_names(self) -> list[str]:
        """The model's classes: label i draws class_names[i]."""
        return list(self.dataset["class_names"] or []) if self.num_classes else []

    @property
    def class_counts(self) -> list[int] | None:
        """Training items of each of the model's classes, when the run knows them (runs from before: None)."""
        counts = self.dataset.get("class_counts")
        return list(counts) if counts and len(counts) == self.num_classes else None

    def sampling_labels(self, n: int, class_names: list[str] | None = None) -> np.ndarray | None:
        """Class indices (into `class_names`, default the model's) of n samples: balanced, or in the training data's
        class proportions for data whose class mix is part of the data (tables: the target is a column)."""
        from difftrain.sampling import class_labels

        names = self.class_names if class_names is None else class_names
        if not self.num_classes:
            return None
        counts = self.class_counts if self.modality.proportional_classes and names == self.class_names else None
        return class_labels(n, len(names), counts)

    def sampling_spec(self, seed: int = 0, **overrides) -> "SamplingSpec":
        """The run's configured sampler settings, with `overrides` (None values ignored)."""
        from difftrain.sampling import SamplingSpec

        return SamplingSpec.from_config(self.config.sample, seed, **overrides)

    def checkpoint(self, which: str = "latest", warn=print) -> Checkpoint:
        return resolve_checkpoint(self.path, which, warn)

    def denoiser(self, checkpoint: Checkpoint, ema: bool = True, device: str | torch.device = "cpu") -> Denoiser:
        """The checkpoint's network (LoRA merged into its weights) as a frozen denoiser."""
        if self.is_autoencoder:
            raise UserError(f"{self.path} is an autoencoder (model.arch=autoencoder): it encodes and decodes images and "
                            "draws none. Train a diffusion model in its latent space with `difftrain train --latent "
                            f"{self.path} ...`; `difftrain eval {self.path}` measures its reconstructions")
        return denoiser_of(self.config, self.modality, self.network(checkpoint, ema, device))

    def network(self, checkpoint: Checkpoint, ema: bool = True, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The checkpoint's network, LoRA merged into its weights, frozen."""
        from difftrain.models.lora import merge

        net = network_for(self.config, self.modality, self.num_classes)
        load_weights(net, checkpoint.weights(ema), checkpoint.path, self.path / "config.yaml")
        return merge(net).to(device).eval().requires_grad_(False)


def save_run_info(run_dir: Path, config: Config, ds: PreparedDataset, class_names: list[str] | None = None) -> None:
    save_config(config, Path(run_dir) / "config.yaml")
    atomic.write_json(Path(run_dir) / "dataset.json", dataset_summary(ds, class_names))


def load_weights(net: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path, config_file: Path) -> None:
    """Load a checkpoint's weights; a network/config mismatch is a user error, not a traceback."""
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[1:3] or [str(e)[:300]]
        raise UserError(f"{source} does not fit the network that {config_file} describes "
                        f"(was a model setting or the dataset changed?): {' '.join(s.strip() for s in first)}") from None


def open_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory {path} does not exist")
    config = read_config(path / "config.yaml")
    info = path / "dataset.json"
    if not info.is_file():
        raise UserError(f"{info} is missing: is {path} a difftrain run directory?")
    return Run(path, config, json.loads(info.read_text()))
