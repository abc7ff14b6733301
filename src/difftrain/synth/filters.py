"""Filters of a synthetic dataset: near-copies of training images, duplicates, and low classifier confidence.

`--filter memorization,dedup:0.5,confidence:0.9` chooses them; they judge each sample in the fixed order
memorization, dedup, confidence (cheapest question first is not the point: a copy of a training image is
reported as a copy even when it also repeats a kept sample), and the first that rejects it is the one counted.
Distances are pixel L2 with values in [0, 1], on the joint image + mask of a segmentation sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from difftrain.errors import UserError
from difftrain.evaluation.memorization import memorization
from difftrain.evaluation.neighbours import nearest

ORDER = ("memorization", "dedup", "confidence")
DEFAULTS = {"memorization": 1 / 3, "confidence": 0.9}  # dedup's default distance is the modality's (dedup_distance)
SYNTAX = "give a comma list such as memorization,dedup,confidence:0.9 (each NAME or NAME:VALUE)"


@dataclass(frozen=True)
class FilterSpec:
    name: str
    value: float  # memorization: ratio d1/d2; dedup: L2 distance; confidence: softmax probability

    def describe(self) -> dict:
        key = {"memorization": "ratio", "dedup": "distance", "confidence": "threshold"}[self.name]
        return {"name": self.name, key: self.value}


def _number(text: str, where: str) -> float:
    try:
        if "/" in text:  # memorization:1/3
            top, bottom = text.split("/", 1)
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--filter {where}: {text!r} is not a number; {SYNTAX}") from None


def parse_filters(text: str | None, dedup_default: float) -> list[FilterSpec]:
    """The --filter string as specs in judging order, every value resolved (dedup's default is the modality's)."""
    specs: dict[str, FilterSpec] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, raw = item.partition(":")
        name = name.strip().lower()
        if name not in ORDER:
            raise UserError(f"--filter {item}: unknown filter {name!r}; choose from {', '.join(ORDER)} ({SYNTAX})")
        if name in specs:
            raise UserError(f"--filter: {name} is given twice; give each filter once")
        if raw.strip():
            value = _number(raw.strip(), item)
        elif name == "dedup":
            value = dedup_default
        else:
            value = DEFAULTS[name]
        if name == "dedup" and not (value >= 0 and math.isfinite(value)):
            raise UserError(f"--filter {item}: the dedup distance must be >= 0 (L2: pixels in [0, 1], standardised columns)")
        if name != "dedup" and not 0 < value <= 1:
            what = "ratio to the second-nearest training image" if name == "memorization" else "class probability"
            raise UserError(f"--filter {item}: the {what} must be in (0, 1]")
        specs[name] = FilterSpec(name, round(value, 6))
    return [specs[name] for name in ORDER if name in specs]


def class_probability(model, items: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The classifier's probability of each item's own label."""
    return model.probabilities(items)[np.arange(len(items)), labels].astype(np.float64) if len(items) else np.zeros(0)


def pairwise(items: np.ndarray, modality) -> np.ndarray:
    """Distances (the modality's own, `Modality.distances`) between all pairs of `items`, exact 0 for identical ones."""
    if not len(items):
        return np.zeros((0, 0))
    return np.concatenate([d.numpy() for _, d in modality.distances(items, items)])


def nearest_kept(items: np.ndarray, kept: np.ndarray, modality) -> np.ndarray:
    """Distance (the modality's own) from each item to the nearest of `kept`; inf when nothing is kept yet."""
    if not len(kept):
        return np.full(len(items), np.inf)
    return nearest(items, kept, 1, distances=modality.distances)[0][:, 0]


@dataclass
class Verdict:
    removed_by: str | None  # the first filter that rejected the sample; "surplus" when its class was full; None: kept
    scores: dict[str, float | None]


def _score(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


class Judge:
    """The chosen filters with what they need: the training images (memorization), the confidence classifier and its
    label of each requested class (confidence); `info` is what the manifest records of them (the classifier's hash)."""

    def __init__(self, specs: list[FilterSpec], modality, train_images: np.ndarray | None = None, classifier=None,
                 classifier_labels: list[int] | None = None, info: dict[str, dict] | None = None):
        self.specs = {s.name: s.value for s in specs}
        self.modality = modality
        self.train_data, self.classifier, self.classifier_labels = train_images, classifier, classifier_labels
        self.info = info or {}

    def judge(self, images: np.ndarray, slots: list[int], room: list[int], kept: np.ndarray) -> list[Verdict]:
        """A verdict for each image, in order: a sample is kept when its class (slot: index into the requested classes)
        has room and every filter passes it; `room` shrinks by the samples kept. Duplicates are looked for among `kept`
        (uint8, the samples kept before this batch) and the ones this batch keeps."""
        n, specs = len(images), self.specs
        scores: list[dict[str, float | None]] = [{} for _ in range(n)]
        removed: list[str | None] = [None] * n
        if "memorization" in specs:
            m = memorization(images, self.train_data, self.modality, ratio=specs["memorization"])
            for i in range(n):
                ratio = m.d1[i] / m.d2[i] if m.d2[i] > 0 else 0.0  # 0/0: a copy of a duplicated training image
                scores[i] |= {"training_distance": _score(m.d1[i]), "training_ratio": _score(ratio)}
                removed[i] = "memorization" if m.flagged[i] else None
        if "confidence" in specs:
            labels = np.asarray([self.classifier_labels[s] for s in slots], np.int64)
            probability = class_probability(self.classifier, images, labels)
            for i in range(n):
                scores[i]["confidence"] = _score(probability[i])
        to_kept, among = ((nearest_kept(images, kept, self.modality), pairwise(images, self.modality)) if "dedup" in specs
                          else (None, None))
        kept_here: list[int] = []
        verdicts = []
        for i in range(n):
            if "dedup" in specs:
                d = min([to_kept[i], *among[i, kept_here]])
                scores[i]["kept_distance"] = _score(d)
                if removed[i] is None and (d < specs["dedup"] or d == 0):
                    removed[i] = "dedup"
            if removed[i] is None and "confidence" in specs and probability[i] < specs["confidence"]:
                removed[i] = "confidence"
            if room[slots[i]] <= 0:
                removed[i] = "surplus"  # its class is full: not needed, whatever the filters say
            if removed[i] is None:
                room[slots[i]] -= 1
                kept_here.append(i)
            verdicts.append(Verdict(removed[i], scores[i]))
        return verdicts
