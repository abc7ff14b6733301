"""Modalities: one module per kind of data owns everything that depends on it (modalities/base.py).

Registering a modality is one line in MODALITIES; nothing outside this package asks which kind it holds.
"""

from __future__ import annotations

from typing import Any

from difftrain.modalities.base import Classifier, Dequantized, FeatureExtractor, Modality
from difftrain.modalities.image import ImageModality
from difftrain.modalities.points import PointsModality
from difftrain.modalities.segmentation import SegmentationModality
from difftrain.modalities.series import SeriesModality
from difftrain.modalities.table import TableModality
from difftrain.modalities.text import TextModality

MODALITIES: dict[str, type[Modality]] = {m.kind: m for m in (ImageModality, SegmentationModality, PointsModality, SeriesModality,
                                                              TableModality, TextModality)}
KINDS = tuple(MODALITIES)


def modality_for(spec: dict[str, Any]) -> Modality:
    """The modality a manifest or a run's spec describes (its `kind` and the fields that kind keeps)."""
    cls = MODALITIES[spec["kind"]]
    if spec.get("latent"):  # images that a latent diffusion model makes through its autoencoder
        from difftrain.modalities.latent import LatentImageModality

        cls = LatentImageModality
    return cls({key: spec[key] for key in cls.spec_keys if key in spec})


# The first kind that claims a source prepares it; images come last, as they take any folder or IDX file. Series and
# tables claim only their built-in names: a CSV is a table of points unless --kind timeseries or tabular says otherwise.
_PREPARE_ORDER = (SeriesModality, TableModality, TextModality, PointsModality, ImageModality)


def builtin_datasets() -> dict[str, str]:
    """Every built-in dataset name (a run prepares it into RUN/data) -> its description."""
    return {name: text for m in _PREPARE_ORDER for name, text in m.builtins().items()}


def builtin_test_fraction(name: str) -> float:
    """The held-out share when a run prepares the built-in dataset `name`."""
    return next(m.builtin_test_fraction for m in _PREPARE_ORDER if name in m.builtins())


def stand_in(name: str) -> tuple[Modality, int] | None:
    """The modality and class count of a built-in dataset or preset that `doctor` probes with random data, if any."""
    for m in _PREPARE_ORDER:
        if name in m.stand_ins():
            spec, classes = m.stand_ins()[name]
            return modality_for(spec), classes
    return None


# Options every kind takes; the rest each modality declares in `prepare_options`, so one that does not
# take an option refuses it instead of ignoring it.
COMMON_PREPARE_OPTIONS = frozenset({"limit", "test_fraction", "seed", "strict", "overwrite", "progress", "warn"})


def prepare(source, out, *, kind: str | None = None, **options: Any):
    """Prepare `source` as a dataset of `kind` (None: the kind that claims it: a built-in name, a table, a folder)."""
    if kind is not None and kind not in MODALITIES:
        from difftrain.errors import UserError

        raise UserError(f"unknown --kind {kind!r}; choose one of: {', '.join(MODALITIES)}")
    cls = MODALITIES[kind] if kind else next(m for m in _PREPARE_ORDER if m.claims(source))
    foreign = sorted(set(options) - COMMON_PREPARE_OPTIONS - cls.prepare_options)
    if foreign:
        from difftrain.errors import UserError

        def takers(option: str) -> str:
            return " and ".join(m.kind for m in MODALITIES.values() if option in m.prepare_options) or "no kind"

        flags = [f"--{k.replace('_', '-')}" for k in foreign]
        if len(foreign) == 1:
            raise UserError(f"{flags[0]} applies to {takers(foreign[0])}, not to {cls.kind} ({source}): leave it out, or "
                            f"pass the --kind it belongs to")
        raise UserError(f"{', '.join(flags)} do not apply to {cls.kind} ({source}): "
                        f"{'; '.join(f'{f} is for {takers(k)}' for f, k in zip(flags, foreign))}. Leave them out, or "
                        "pass the --kind they belong to")
    from difftrain.atomic import remove_leftovers
    from difftrain.folder_lock import folder_lock

    with folder_lock(out, "--out"):  # two prepares of one folder: the second is refused, naming the first
        remove_leftovers(out, inside=False)  # the half-written folder of a killed prepare, beside OUT
        return cls.prepare(source, out, expect_kind=kind, **options)


def run_modality(summary: dict[str, Any]) -> Modality:
    """The modality of a run's dataset.json; runs from before modalities kept the shape and masks beside it."""
    if "modality" in summary:
        return modality_for(summary["modality"])
    h, w, c = summary["shape"]
    if summary.get("mask_classes"):
        return modality_for({"kind": "segmentation", "shape": [h, w, summary["image_channels"]],
                             "mask_classes": summary["mask_classes"]})
    return modality_for({"kind": "image", "shape": [h, w, c]})


__all__ = ["KINDS", "MODALITIES", "builtin_datasets", "builtin_test_fraction", "prepare", "stand_in", "Classifier", "Dequantized", "FeatureExtractor", "Modality", "modality_for", "run_modality"]
