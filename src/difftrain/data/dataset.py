"""The prepared-dataset format: a folder with manifest.json and its arrays, loaded and checked.

The manifest's `kind` names the modality (modalities/), which reads and checks the arrays of each split:
the dataset itself only knows the labels, the counts and the classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.errors import UserError
from difftrain.modalities import KINDS, Modality, modality_for
from difftrain.modalities.base import load_array

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
_REQUIRED = ("kind", "shape", "dtype", "count", "num_classes", "class_names", "source")


@dataclass
class PreparedDataset:
    """A prepared dataset in memory: each split's items as the modality holds them, and int64 labels (None if unlabelled)."""

    path: Path
    manifest: dict[str, Any]
    train_data: np.ndarray
    train_labels: np.ndarray | None
    test_data: np.ndarray
    test_labels: np.ndarray | None
    # Captioned images: int64 (N, T) caption token rows per split (the spec's "captions" reads them); else None.
    train_captions: np.ndarray | None = None
    test_captions: np.ndarray | None = None

    @cached_property
    def modality(self) -> Modality:
        return modality_for(self.manifest)

    def seen_as(self, modality: Modality) -> "PreparedDataset":
        """The same arrays seen through another modality of the same data (latent diffusion: images through an
        autoencoder, whose latents are the model's tensors)."""
        ds = replace(self)
        ds.__dict__["modality"] = modality  # (the cached property's slot)
        return ds

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"] or 0

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"] or [])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One item as the arrays hold it (for segmentation: the image's channels and the mask's one-hot)."""
        return self.modality.shape


def _broken(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}. Prepare it with `difftrain data prepare SOURCE --out {path}`.")


def _labels_fit(labels: np.ndarray, n: int, num_classes: int) -> bool:
    if labels.dtype != np.int64 or labels.shape != (n,):
        return False
    return n == 0 or 0 <= labels.min() <= labels.max() < num_classes


def load_dataset(path: str | Path) -> PreparedDataset:
    """Load a folder written by `prepare_dataset`, checking its arrays against the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise _broken(path, "no prepared dataset here (not a folder)")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _broken(path, f"no {MANIFEST}, so this is not a prepared dataset") from None
    except (OSError, ValueError) as e:
        raise _broken(path, f"{MANIFEST} is unreadable ({e})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise _broken(path, f"{MANIFEST} has format_version {version!r}; this difftrain reads {FORMAT_VERSION}")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise _broken(path, f"{MANIFEST} lacks {', '.join(missing)}")
    if manifest["kind"] not in KINDS:
        raise _broken(path, f"{MANIFEST} has kind {manifest['kind']!r}; this difftrain reads {', '.join(KINDS)}")
    try:
        modality = modality_for(manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise _broken(path, f"{MANIFEST} does not describe {manifest['kind']} data ({e})") from None

    num_classes = manifest["num_classes"]
    arrays: dict[str, np.ndarray | None] = {}
    for split in SPLITS:
        n = manifest["count"].get(split) if isinstance(manifest["count"], dict) else None
        arrays[f"{split}_data"] = modality.load_split(path, split, n, lambda problem: _broken(path, problem))
        labels = load_array(path, f"{split}_labels.npy", lambda problem: _broken(path, problem)) if num_classes else None
        if labels is not None and not _labels_fit(labels, n, num_classes):
            raise _broken(path, f"{split}_labels.npy holds {labels.dtype} {labels.shape}; "
                                f"expected int64 ({n},) with values below {num_classes}")
        arrays[f"{split}_labels"] = labels
        arrays[f"{split}_captions"] = _captions(path, manifest, split, n) if manifest.get("captions") else None
    return PreparedDataset(path, manifest, **{f"{split}_{what}": arrays[f"{split}_{what}"] for split in SPLITS
                                              for what in ("data", "labels", "captions")})


def _captions(path: Path, manifest: dict[str, Any], split: str, n: int) -> np.ndarray:
    rows = load_array(path, f"{split}_captions.npy", lambda problem: _broken(path, problem))
    spec = manifest["captions"]
    fits = isinstance(spec, dict) and isinstance(spec.get("length"), int) and isinstance(spec.get("vocab"), list)
    if not fits or rows.dtype != np.int64 or rows.shape != (n, spec["length"]) or \
            (rows.size and not 0 <= rows.min() <= rows.max() < len(spec["vocab"])):
        raise _broken(path, f"{split}_captions.npy holds {rows.dtype} {rows.shape}, which does not fit the manifest's "
                            "captions")
    return rows


def describe_dataset(ds: PreparedDataset) -> dict[str, Any]:
    """A JSON-able summary of `ds` for `difftrain data info`."""
    m = ds.manifest
    counts = m.get("class_counts") or {}
    classes = [
        {"name": name, **{split: counts[split][i] for split in SPLITS if split in counts}}
        for i, name in enumerate(ds.class_names)
    ]
    info: dict[str, Any] = {"path": str(ds.path.resolve()), "kind": m["kind"], "shape": list(ds.sample_shape),
                            **ds.modality.describe()}
    return info | {
        "dtype": m["dtype"],
        "count": dict(m["count"]),
        "num_classes": ds.num_classes,
        "classes": classes,
        "source": dict(m["source"]),
        "provenance": m.get("provenance"),
        **({"channel_stats": m["channel_stats"]} if "channel_stats" in m else {}),
        "rejected": len(m.get("rejected", [])),
        "created": m.get("created"),
    }
