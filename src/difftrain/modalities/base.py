"""The Modality seam: everything that depends on the kind of data, in one object per dataset.

A modality is built from its `spec`, the JSON description that a prepared dataset's manifest and a
run's dataset.json both hold ({"kind": "image", "shape": [8, 8, 1], ...}). The trainer, samplers,
evaluation, synth and doctor only call these methods; none of them asks which kind it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from difftrain.errors import UserError


@dataclass
class FeatureExtractor:
    """A feature space for sample metrics; every number records its name and weights hash, so numbers
    from different feature spaces are never compared by accident."""

    name: str
    sha256: str
    embed: Callable[[torch.Tensor], torch.Tensor]  # a batch of data arrays (as tensors) -> (B, ...) features
    batch_size: int = 256
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the domain classifier's held-out accuracy

    @torch.no_grad()
    def features(self, data: np.ndarray) -> np.ndarray:
        """(N, F) float64 features of N items."""
        parts = [self.embed(torch.from_numpy(np.ascontiguousarray(data[i:i + self.batch_size]))).double().flatten(1).cpu().numpy()
                 for i in range(0, len(data), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0))

    @property
    def identity(self) -> dict[str, Any]:
        return {"extractor": self.name, "extractor_sha256": self.sha256, **{f"extractor_{k}": v for k, v in self.info.items()}}


class Classifier(ABC):
    """A classifier of one modality's items: the domain features' network, CAS and the confidence filter."""

    @abstractmethod
    def probabilities(self, data: np.ndarray) -> np.ndarray:
        """(N, K) class probabilities of N items."""

    def predict(self, data: np.ndarray) -> np.ndarray:
        return self.probabilities(data).argmax(1) if len(data) else np.zeros(0, np.int64)

    def accuracy(self, data: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(data) == labels).mean()) if len(data) else float("nan")


@dataclass
class Dequantized:
    """Model-space points for a likelihood: x, and the constant that turns -ln p(x) / (D ln 2) into
    bits per dimension of the data as stored (the data's discretisation and scale)."""

    x: torch.Tensor
    bits_offset: float
    dequantization: str


class Modality(ABC):
    kind: ClassVar[str]
    default_arch: ClassVar[str]  # model.arch when the config leaves it to the data
    samples_key: ClassVar[str]  # the array's name in a samples .npz
    item: ClassVar[str] = "item"  # what one sample is called in messages ("image", "point")
    hub_pipeline_tag: ClassVar[str | None] = None  # the Hugging Face Hub's task for a model of this data (model cards)
    distance_name: ClassVar[str] = "L2"  # what `neighbour_view`'s Euclidean distance is, for reports
    spec_keys: ClassVar[tuple[str, ...]] = ("kind", "shape")  # what the spec keeps of a manifest
    distance_unit: ClassVar[float] = 1.0  # neighbour distances are divided by it (pixels: 255, so values in [0, 1])
    builtin_test_fraction: ClassVar[float] = 0.2  # held out when a run prepares a built-in dataset of this kind
    observable: ClassVar[bool] = False  # items can be partly known (series): one model also imputes and forecasts
    proportional_classes: ClassVar[bool] = False  # samples keep the training class mix (tables), not balanced classes
    prepare_options: ClassVar[frozenset[str]] = frozenset()  # options of `data prepare` only this kind takes (--window...)

    @property
    def has_gaps(self) -> bool:
        """Whether the prepared items hold missing values (NaN), which training neither observes nor scores."""
        return False

    def __init__(self, spec: dict[str, Any]):
        self.spec = dict(spec)

    # -- preparing a dataset (data prepare; built-in names prepared into a run) ------------------------
    @classmethod
    def builtins(cls) -> dict[str, str]:
        """Built-in datasets of this kind: name -> description."""
        return {}

    @classmethod
    def stand_ins(cls) -> dict[str, tuple[dict[str, Any], int]]:
        """Specs and class counts that `doctor` may probe with random data instead of preparing a dataset:
        built-in names and presets whose data is large."""
        return {}

    @classmethod
    def claims(cls, source: str | Path) -> bool:
        """Whether this kind prepares `source` when `--kind` is not given."""
        return str(source) in cls.builtins()

    @classmethod
    @abstractmethod
    def prepare(cls, source: str | Path, out: str | Path, **options: Any):
        """Validate and convert `source` into a prepared dataset at `out` (never touching the source)."""

    # -- the prepared arrays ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """One item as datasets and samples files hold it in memory (the spec's "shape", unless a kind adds to it)."""
        return tuple(self.spec["shape"])

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """The arrays' dtype in memory and in samples files."""

    @abstractmethod
    def load_split(self, folder: Path, split: str, count: int, broken: Callable[[str], UserError]) -> np.ndarray:
        """The `count` items of `split` from a prepared folder, checked against the spec (`broken(problem)` to refuse)."""

    def same_data(self, other: "Modality") -> bool:
        """Whether `other` describes data of the same kind and shape (statistics and provenance may differ)."""
        return self.kind == other.kind and self.shape == other.shape

    def spec_summary(self) -> str:
        """The spec in a few words for messages: shape and names, not statistics."""
        names = self.spec.get("mask_classes") or self.spec.get("columns")
        return f"of shape {self.shape}" + (f" ({', '.join(map(str, names))})" if names else "")

    def describe(self) -> dict[str, Any]:
        """Extra lines for `difftrain data info`."""
        return {}

    # -- model tensors -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def model_shape(self) -> tuple[int, ...]:
        """One item as the network sees it: the noise shape."""

    def denoiser(self, net: torch.nn.Module, formulation, *, softmax_categories: bool = False) -> torch.nn.Module:
        """The network wrapped as this data's denoiser: the config's continuous formulation, with the categories read
        out through a softmax when asked (a kind of data that diffuses another way returns its own)."""
        from difftrain.diffusion import Denoiser

        return Denoiser(net, formulation, self.category_slices if softmax_categories else ())

    @property
    def network_options(self) -> dict[str, Any]:
        """What the network needs to know of the data beyond its shape (tokens: the vocabulary's size; captions: their
        characters' count and length, for the network's caption encoder)."""
        captions = self.captions
        return {} if captions is None else {"caption_vocab": captions.vocab_size, "caption_length": captions.length,
                                            "caption_pad": captions.pad_id}

    @property
    def captions(self):
        """The captions' tokenizer (modalities/captions.py: CaptionTokens) of captioned data, else None."""
        from difftrain.modalities.captions import CaptionTokens

        spec = self.spec.get("captions")
        return CaptionTokens(spec) if spec else None

    @property
    def category_slices(self) -> list[slice]:
        """Slices of the model vector's last axis that each hold one categorical value one-hot in {-1, 1}."""
        return []

    @abstractmethod
    def to_model(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of data (as a tensor of `dtype`, on any device) -> float model tensors (B, *model_shape)."""

    @abstractmethod
    def from_model(self, x: torch.Tensor) -> np.ndarray:
        """Model tensors -> data as stored (rounded, clipped, in the data's units)."""

    def batch_view(self, data: np.ndarray, cache: Path | None = None, device: torch.device | str = "cpu") -> tuple[np.ndarray, Any]:
        """The items as training batches hold them, and what turns those into model tensors (`to_model`, `mirror`,
        `model_shape`): here the data and this modality (latent images: their latents, encoded once and kept in `cache`)."""
        return data, self

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        """The left-right mirror of model tensors (train.hflip)."""
        raise UserError(f"train.hflip mirrors images; {self.kind} data has no left and right: set train.hflip=false")

    def default_sigma_data(self, train: np.ndarray) -> float:
        """EDM's sigma_data when diffusion.sigma_data=auto: the std of the training data as the model sees it."""
        sample = torch.as_tensor(train[::max(1, len(train) // 10_000)])  # evenly spread: files may be sorted by class
        return float(self.to_model(sample).double().std(correction=0))

    # -- outputs --------------------------------------------------------------------------------------
    def check_samples(self, data: np.ndarray, where: str) -> None:
        """Refuse a samples array of another dtype or shape, naming `where` it came from."""
        if data.dtype != self.dtype or tuple(data.shape[1:]) != self.shape:
            raise UserError(f"{where}: `{self.samples_key}` must be {self.dtype} (N, {', '.join(map(str, self.shape))}) "
                            f"for this {self.kind} data, got {data.dtype} {data.shape}")

    table_suffixes: ClassVar[tuple[str, ...]] = ()  # samples files other than .npz that this kind writes (tables)

    def write_table(self, path: Path, samples: np.ndarray, labels: np.ndarray | None) -> Path:
        """Samples as a table file a user opens (for a suffix in `table_suffixes`)."""
        raise UserError(f"--out {path}: {self.kind} samples are written to .npz files")

    @abstractmethod
    def save_preview(self, data: np.ndarray, path: Path, *, labels: np.ndarray | None = None,
                     class_names: list[str] | None = None, reference: np.ndarray | None = None) -> Path:
        """A PNG that shows samples (by class when labelled; `reference`: real data to compare with)."""

    @abstractmethod
    def save_pairs(self, left: np.ndarray, right: np.ndarray, path: Path) -> Path:
        """A PNG of item pairs side by side (memorization: each sample and its nearest training item)."""

    def given(self, prompt: str | None, infill: str | None) -> np.ndarray:
        """`sample --prompt/--infill`: one item of token ids with -1 where the model generates (text)."""
        raise UserError(f"--prompt, --infill and --length are for text models; this run's data is {self.kind}")

    def where(self, conditions: list[str], class_names: list[str] | None) -> tuple[int | None, Callable | None]:
        """`sample --where`: (the class the conditions pick or None, a filter of items -> bool mask or None)."""
        raise UserError(f"--where picks rows of a table by column values; this run's data is {self.kind}: "
                        "use --class for a class")

    # -- synthetic datasets ---------------------------------------------------------------------------
    synth_task: ClassVar[str] = "classification"

    @abstractmethod
    def synth_write(self, out: Path, batch: int, items: np.ndarray, names: list[tuple[str | None, int]]) -> list[dict[str, Any]]:
        """Write the kept samples of synth batch `batch`, atomically; `names` gives each one's class (None: unconditional)
        and its number within the class. Returns each sample's file entry for the manifest ({"file": ..., ...})."""

    @abstractmethod
    def synth_read(self, out: Path, entries: list[dict[str, Any]]) -> np.ndarray:
        """The samples of these entries back from their files, exactly as written (refusing a damaged file)."""

    classifier_name: ClassVar[str] = "classifier"  # its domain classifier, for reports
    synth_what: ClassVar[str] = "items"  # what a synthetic dataset of this kind holds, for its card
    synth_globs: ClassVar[tuple[str, ...]] = ()  # the files synth_write makes (under the output folder): strays are removed
    synth_labels_csv: ClassVar[bool] = True  # labels.csv (file,label,class) lists each sample's file

    def synth_manifest_fields(self) -> dict[str, Any]:
        """What a synthetic dataset's manifest.json says of its data, beside the spec."""
        return {}

    def synth_loading(self, conditional: bool) -> list[str]:
        """How to read a synthetic dataset of this kind (its card's "Loading it")."""
        return []

    def synth_notes(self) -> list[str]:
        """Further lines of the card's "Contents"."""
        return []

    def synth_finish(self, out: Path, entries: list[dict[str, Any]], items: np.ndarray) -> list[str]:
        """Files written once every sample is kept (e.g. one table of all rows); their names relative to `out`."""
        return []

    def synth_utility(self, real, synth: np.ndarray, synth_labels: np.ndarray | None, *, seeds: tuple[int, ...],
                      steps: int | None, progress) -> tuple[dict | None, str | None]:
        """Train on real, synthetic and both, test on real: the utility result, or None and why it was skipped."""
        from difftrain.evaluation.utility import classification_utility

        if not len(real.test_data):
            return None, f"{real.path} has no held-out (test) data to score on"
        if not real.num_classes:
            return None, f"{real.path} has no class labels (unconditional data): a classifier needs labelled real data"
        if synth_labels is None:
            return None, "the synthetic data has no labels (an unconditional model): a classifier needs labelled synthetic data"
        return classification_utility((real.train_data, real.train_labels), (real.test_data, real.test_labels),
                                      (synth, synth_labels), real.num_classes, modality=self, seeds=seeds, steps=steps,
                                      progress=progress), None

    def privacy_view(self, data: np.ndarray) -> tuple[np.ndarray, "Modality"]:
        """The part of the data that privacy is measured on, and the modality whose distances measure it."""
        return data, self

    def canonical(self, data: np.ndarray) -> np.ndarray:
        """Samples as their files hold them (what a reader of the files gets back)."""
        return data

    # -- evaluation -----------------------------------------------------------------------------------
    @abstractmethod
    def feature_extractor(self, dataset, choice: str, *, inception_weights: str | None, classifier_epochs: int,
                          device: str | torch.device) -> FeatureExtractor:
        """The feature space of FID/KID/precision-recall: `choice` is eval.extractor ('auto' = this data's default)."""

    def dedup_distance(self) -> float:
        """synth's default --filter dedup distance (in neighbour-view units divided by `distance_unit`)."""
        return 0.0

    def neighbour_view(self, data: np.ndarray) -> np.ndarray:
        """Arrays in which Euclidean distance compares items (memorization, duplicates, distance to closest record)."""
        return data.reshape(len(data), -1).astype(np.float32)

    def judge(self, dataset, *, network=None, steps: int = 1000, say: Callable[[str], None] | None = None
              ) -> tuple[Callable[[np.ndarray], float], dict[str, Any]]:
        """A score of samples by a model of the data (text: perplexity under an autoregressive judge) and its identity."""
        raise UserError(f"judge scores text by an autoregressive model; {self.kind} data has none: leave judge out of the metrics")

    def copy_metrics(self, train: np.ndarray) -> dict[str, Callable[[np.ndarray], float]]:
        """Measures of copying beyond nearest neighbours (text: verbatim overlap with the training text), each scored on
        samples and, as the floor, on held-out real items (`mem`, synth's privacy report)."""
        return {}

    def distances(self, a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> Iterator[tuple[slice, torch.Tensor]]:
        """Distances between items of a and of b in the unit reports give (`distance_name`), in blocks of rows of a:
        Euclidean in the `neighbour_view`, divided by `distance_unit`, unless the kind measures its own."""
        from difftrain.evaluation.neighbours import distance_blocks

        for rows, d in distance_blocks(self.neighbour_view(a), self.neighbour_view(b), chunk):
            yield rows, d / self.distance_unit

    @abstractmethod
    def domain_classifier(self, dataset, epochs: int) -> tuple[Classifier, dict[str, Any]]:
        """The dataset's own classifier (cached beside it when it trains): label agreement, the evaluation's features."""

    def confidence_classifier(self, dataset, epochs: int) -> tuple[Classifier, dict[str, Any]]:
        """The classifier whose probability of the intended class the confidence filter thresholds, and what it is
        (`name`, `test_accuracy`, `weights_sha256`); the domain classifier unless the kind trains a stronger one."""
        return self.domain_classifier(dataset, epochs)

    @abstractmethod
    def fit_classifier(self, data: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int, seed: int,
                       steps: int | None = None, batch: int = 128) -> Classifier:
        """The same classifier recipe trained on any labelled items (CAS: on samples, and on real items of the same count);
        `steps` optimizer steps of `batch` items, when given, instead of `epochs` (equal compute for every arm)."""

    downstream_name: ClassVar[str] = ""  # the utility reports' classifier, for reports ("": the classifier_name)

    def fit_downstream(self, data: np.ndarray, labels: np.ndarray, num_classes: int, *,
                       validation: tuple[np.ndarray, np.ndarray], seed: int, max_steps: int | None = None,
                       weights: np.ndarray | None = None) -> tuple[Classifier, dict[str, Any]]:
        """The utility reports' classifier (the judge of synthetic data) trained on labelled items, and what its
        training did. Kinds with a neural judge stop early on `validation` (real held-back items); the default is
        `fit_classifier`'s recipe, for `max_steps` steps (None: 20 epochs), which does not look at `validation`.
        `weights`: how often each item is drawn, relative to the others (None: all alike); a kind whose judge cannot
        weight its items refuses them."""
        if weights is not None:
            raise UserError(f"the utility report's classifier of {self.kind} data cannot weight its training items; "
                            "leave the real share unset")
        return self.fit_classifier(data, labels, num_classes, epochs=20, seed=seed, steps=max_steps), {}

    def extra_metrics(self, samples: np.ndarray, reference: np.ndarray, seed: int) -> dict[str, Callable[[np.ndarray], float]]:
        """Further sample metrics of this kind of data, each a function of a sample set scored against `reference`
        (the held-out data); the suite prints each next to its floor."""
        return {}

    @abstractmethod
    def dequantize(self, batch: torch.Tensor, generator: torch.Generator) -> Dequantized:
        """Model-space points for the likelihood of a batch of data (see evaluation/likelihood.py)."""


def load_array(folder: Path, name: str, broken: Callable[[str], UserError], *, mmap: bool = False) -> np.ndarray:
    """One array of a prepared folder (`mmap`: memory-mapped, read from disk as used); a missing or unreadable file is
    `broken(problem)`, a one-line user error."""
    try:
        # Copy-on-write: the array is writable (torch takes it as it is) and the file is never written.
        return np.load(folder / name, allow_pickle=False, mmap_mode="c" if mmap else None)
    except FileNotFoundError:
        raise broken(f"{name} is missing") from None
    except (OSError, ValueError) as e:
        raise broken(f"{name} is unreadable ({e})") from None
