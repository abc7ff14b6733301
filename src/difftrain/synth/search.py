"""`difftrain synth --optimize-for utility`: choose how to synthesize by what helps a classifier, judged on real
training items that the search holds back.

The run's labelled training items are split (stratified, by the seed): a `SELECTION` share is the selection set, never
trained on. The utility report's judge (the modality's `fit_downstream`: for images the ResNet, trained to convergence)
trains on the rest, alone (the baseline) and with each candidate synthetic set, and each training is scored by its
accuracy on the selection set, ties broken by the lower cross-entropy. The search goes one setting at a time, each stage
starting from the best candidate so far:

    guidance     GUIDANCE and the run's own weight, from the latest checkpoint, per_class items of each class, unfiltered
    checkpoint   the run's earlier kept checkpoints, its best one and its best post-hoc EMA reconstruction, when it has them
    confidence   the confidence filter at THRESHOLDS (the confidence classifier's probability of the intended class)
    count        fewer synthetic items per class (COUNTS, as shares of per_class)

A pool of per_class samples of each class is drawn once per (checkpoint, guidance); the confidence and count stages take
subsets of the best pool (filtered, then the first n of each class), so they cost a training each and no sampling. The
test split, which the report scores on, is never looked at.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.errors import UserError
from difftrain.evaluation.utility import validation_split
from difftrain.sampling import SamplingSpec, generate
from difftrain.store.checkpoint import list_checkpoints, open_checkpoint, resolve_checkpoint
from difftrain.store.posthoc_ema import read_best
from difftrain.synth.filters import class_probability

GUIDANCE = (1.0, 1.5, 2.0, 3.0)
THRESHOLDS = (0.5, 0.9)
COUNTS = (0.25, 0.5)
SELECTION = 0.2


@dataclass(frozen=True)
class Candidate:
    """One way to synthesize: the weights, the guidance, the confidence threshold (None: no filter), items per class
    (0: no synthetic items, the real-only baseline)."""

    checkpoint: str
    guidance: float
    confidence: float | None
    per_class: int

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Trial:
    stage: str
    candidate: Candidate
    synthetic: int  # items in the synthetic set (a filter may leave a class short)
    accuracy: float
    cross_entropy: float

    @property
    def key(self) -> tuple[float, float]:
        return self.accuracy, -self.cross_entropy

    def describe(self) -> dict[str, Any]:
        return {"stage": self.stage, **self.candidate.describe(), "synthetic_items": self.synthetic,
                "accuracy": round(self.accuracy, 6), "cross_entropy": round(self.cross_entropy, 6)}


def checkpoint_candidates(run) -> list[Path]:
    """The latest checkpoint, then the earlier ones kept (newest first), the best one and the best post-hoc EMA
    reconstruction, when the run has them."""
    found = [resolve_checkpoint(run.path, "latest").path, *reversed(list_checkpoints(run.path))]
    if (run.path / "checkpoints" / "best").is_dir():
        found.append(run.path / "checkpoints" / "best")
    posthoc = (read_best(run.path) or {}).get("checkpoint")
    if posthoc and Path(posthoc).is_dir():
        found.append(Path(posthoc))
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


class Search:
    """The selection split, the pools drawn so far and the judge's trainings."""

    def __init__(self, run, dataset, names: list[str], per_class: int, spec: SamplingSpec, *, batch_size: int, device: str,
                 progress: Callable[[str], None]):
        self.run, self.names, self.per_class, self.spec = run, names, per_class, spec
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.modality, self.num_classes = dataset.modality, dataset.num_classes
        self.data_labels = np.asarray([dataset.class_names.index(c) for c in names], np.int64)  # per requested class
        items, labels = dataset.train_data, np.asarray(dataset.train_labels, np.int64)
        fit, select = validation_split(labels, spec.seed, SELECTION)
        if not len(select):
            raise UserError(f"--optimize-for utility: no class of {dataset.path} has two training items, so none can be "
                            "held back to choose by; give more real training items")
        train, stop = validation_split(labels[fit], spec.seed)
        self.real = (items[fit][train], labels[fit][train])
        self.stop_on = (items[fit][stop], labels[fit][stop])
        self.select = (items[select], labels[select])
        self.pools: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
        self.classifier = None
        self.dataset = dataset

    def pool(self, checkpoint: str, guidance: float) -> tuple[np.ndarray, np.ndarray]:
        """per_class samples of each requested class (round-robin order), as the files would hold them, and their
        labels in the dataset's classes."""
        if (checkpoint, guidance) not in self.pools:
            self.progress(f"search: sampling {self.per_class} per class, guidance {guidance:g}, {Path(checkpoint).name}")
            slots = np.tile(np.arange(len(self.names)), self.per_class)
            model_labels = np.asarray([self.run.class_names.index(c) for c in self.names], np.int64)[slots]
            denoiser = self.run.denoiser(open_checkpoint(Path(checkpoint)), ema=True, device=self.device)
            samples = generate(denoiser, self.run.modality, len(slots), model_labels,
                               dataclasses.replace(self.spec, guidance=guidance), batch_size=self.batch_size,
                               device=self.device)
            self.pools[(checkpoint, guidance)] = (self.run.modality.canonical(samples), self.data_labels[slots])
        return self.pools[(checkpoint, guidance)]

    def synthetic_set(self, c: Candidate) -> tuple[np.ndarray, np.ndarray]:
        items, labels = self.pool(c.checkpoint, c.guidance)
        keep = np.ones(len(items), bool)
        if c.confidence is not None:
            keep = class_probability(self.confidence_classifier(), items, labels) >= c.confidence
        chosen = np.concatenate([np.flatnonzero(keep & (labels == label))[:c.per_class] for label in self.data_labels])
        chosen.sort()
        return items[chosen], labels[chosen]

    def confidence_classifier(self):
        if self.classifier is None:
            self.progress("search: the confidence filter's classifier")
            self.classifier, _ = self.modality.confidence_classifier(self.dataset, epochs=self.run.config.eval.classifier_epochs)
        return self.classifier

    def trial(self, stage: str, c: Candidate) -> Trial:
        synthetic = self.synthetic_set(c) if c.per_class else None
        parts = [self.real] + ([synthetic] if synthetic is not None else [])
        items, labels = (np.concatenate(p) for p in zip(*parts))
        what = "real only" if synthetic is None else (
            f"guidance {c.guidance:g}, {Path(c.checkpoint).name}, confidence {c.confidence or 'off'}, "
            f"{len(synthetic[0])} synthetic")
        self.progress(f"search ({stage}): the judge on {what}")
        model, _ = self.modality.fit_downstream(items, labels, self.num_classes, validation=self.stop_on, seed=self.spec.seed)
        probabilities = np.clip(model.probabilities(self.select[0]), 1e-12, 1.0)
        accuracy = float((probabilities.argmax(1) == self.select[1]).mean())
        cross_entropy = float(-np.log(probabilities[np.arange(len(self.select[1])), self.select[1]]).mean())
        return Trial(stage, c, 0 if synthetic is None else len(synthetic[0]), accuracy, cross_entropy)


def search_utility(run, dataset, names: list[str], per_class: int, spec: SamplingSpec, *, batch_size: int, device: str,
                   progress: Callable[[str], None] = lambda stage: None) -> dict[str, Any]:
    """Run the search (module docstring) and return what it tried and chose, as synth's manifest records it."""
    search = Search(run, dataset, names, per_class, spec, batch_size=batch_size, device=device, progress=progress)
    checkpoints = [str(p) for p in checkpoint_candidates(run)]
    baseline = search.trial("real only", Candidate(checkpoints[0], 1.0, None, 0))
    trials: list[Trial] = []

    def stage(name: str, candidates: list[Candidate]) -> Candidate:
        for c in candidates:
            trials.append(search.trial(name, c))
        return max(trials, key=lambda t: t.key).candidate

    guidances = sorted({*GUIDANCE, spec.guidance})
    best = stage("guidance", [Candidate(checkpoints[0], g, None, per_class) for g in guidances])
    if len(checkpoints) > 1:
        best = stage("checkpoint", [dataclasses.replace(best, checkpoint=p) for p in checkpoints[1:]])
    best = stage("confidence", [dataclasses.replace(best, confidence=t) for t in THRESHOLDS])
    counts = sorted({max(1, math.floor(f * per_class)) for f in COUNTS} - {per_class})
    best = stage("count", [dataclasses.replace(best, per_class=n) for n in counts])
    chosen = max(trials, key=lambda t: t.key)
    return {
        "optimized_for": "utility",
        "judge": dataset.modality.downstream_name or dataset.modality.classifier_name,
        "selection": {"share": SELECTION, "items": len(search.select[1]), "seed": spec.seed,
                      "real_training_items": len(search.real[1]), "stopping_items": len(search.stop_on[1])},
        "real_only": baseline.describe(),
        "trials": [t.describe() for t in trials],
        "chosen": chosen.candidate.describe(),
        "chosen_trial": chosen.describe(),
        # Accuracy alone: a lower cross-entropy with the same accuracy (more items, sharper predictions) is no help.
        "helps": chosen.accuracy > baseline.accuracy,
    }
