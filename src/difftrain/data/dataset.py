"""The prepared-dataset format: a folder with manifest.json and its arrays, loaded and checked.

A "segmentation" dataset keeps its masks beside the images (train_masks.npy, uint8 (N, H, W) class
indices); in memory each image and its one-hot mask are one (C + K)-channel image
(modalities/segmentation.py), so training, sampling and evaluation need no special case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.errors import UserError
from difftrain.modalities import segmentation

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
KINDS = ("image", "segmentation")
_REQUIRED = ("kind", "shape", "dtype", "count", "num_classes", "class_names", "source", "channel_stats")


@dataclass
class PreparedDataset:
    """A prepared dataset in memory: uint8 images (N, H, W, C) and int64 labels (None if unlabelled).

    For segmentation, the images are the joint (N, H, W, C + K) arrays: `segmentation.split(images,
    ds.image_channels)` gives the images and masks back.
    """

    path: Path
    manifest: dict[str, Any]
    train_images: np.ndarray
    train_labels: np.ndarray | None
    test_images: np.ndarray
    test_labels: np.ndarray | None

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"] or 0

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"] or [])

    @property
    def mask_classes(self) -> list[str]:
        """Names of the mask's classes (index i = mask_classes[i]); [] for plain images."""
        return list(self.manifest.get("mask_classes") or [])

    @property
    def image_channels(self) -> int:
        """Channels of the image itself (the joint image's first ones)."""
        return int(self.manifest["shape"][2])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, channels) as the model sees it: C + K for segmentation."""
        h, w, c = self.manifest["shape"]
        return h, w, c + len(self.mask_classes)


def dataset_from_arrays(path: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray | None]) -> PreparedDataset:
    """The in-memory dataset of a manifest and its arrays; a segmentation dataset's images and masks joined."""
    images = {split: arrays[f"{split}_images"] for split in SPLITS}
    num_mask_classes = len(manifest.get("mask_classes") or [])
    if num_mask_classes:
        images = {split: segmentation.join(images[split], arrays[f"{split}_masks"], num_mask_classes) for split in SPLITS}
    return PreparedDataset(path=path, manifest=manifest, train_images=images["train"], train_labels=arrays.get("train_labels"),
                           test_images=images["test"], test_labels=arrays.get("test_labels"))


def _broken(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}. Prepare it with `difftrain data prepare SOURCE --out {path}`.")


def _load_array(folder: Path, name: str) -> np.ndarray:
    try:
        return np.load(folder / name, allow_pickle=False)
    except FileNotFoundError:
        raise _broken(folder, f"{name} is missing") from None
    except (OSError, ValueError) as e:
        raise _broken(folder, f"{name} is unreadable ({e})") from None


def _labels_fit(labels: np.ndarray, n: int, num_classes: int) -> bool:
    if labels.dtype != np.int64 or labels.shape != (n,):
        return False
    return n == 0 or 0 <= labels.min() <= labels.max() < num_classes


def _mask_classes(path: Path, manifest: dict[str, Any]) -> list[str] | None:
    """The manifest's mask class names (None for an image dataset), checked."""
    if manifest["kind"] not in KINDS:
        raise _broken(path, f"{MANIFEST} has kind {manifest['kind']!r}; this difftrain reads {', '.join(KINDS)}")
    if manifest["kind"] != "segmentation":
        return None
    names = manifest.get("mask_classes")
    if not (isinstance(names, list) and 0 < len(names) <= 256 and all(isinstance(n, str) for n in names)):
        raise _broken(path, f"{MANIFEST} of a segmentation dataset needs mask_classes, a list of 1 to 256 class names")
    return names


def _load_masks(path: Path, split: str, expected: tuple[int, ...], num_mask_classes: int) -> np.ndarray:
    masks = _load_array(path, f"{split}_masks.npy")
    if masks.dtype != np.uint8 or masks.shape != expected:
        raise _broken(path, f"{split}_masks.npy holds {masks.dtype} {masks.shape}; the manifest says uint8 {expected}")
    if masks.size and masks.max() >= num_mask_classes:
        raise _broken(path, f"{split}_masks.npy has class index {masks.max()}, but the manifest names only "
                            f"{num_mask_classes} mask classes")
    return masks


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
        raise _broken(
            path, f"{MANIFEST} has format_version {version!r}; this difftrain reads {FORMAT_VERSION}"
        )

    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise _broken(path, f"{MANIFEST} lacks {', '.join(missing)}")

    num_classes = manifest["num_classes"]
    mask_classes = _mask_classes(path, manifest)
    arrays: dict[str, np.ndarray | None] = {}
    for split in SPLITS:
        n = manifest["count"].get(split) if isinstance(manifest["count"], dict) else None
        expected = (n, *manifest["shape"])
        images = _load_array(path, f"{split}_images.npy")
        if images.dtype != np.uint8 or images.shape != expected:
            raise _broken(
                path,
                f"{split}_images.npy holds {images.dtype} {images.shape}; the manifest says uint8 {expected}",
            )
        labels = _load_array(path, f"{split}_labels.npy") if num_classes else None
        if labels is not None and not _labels_fit(labels, n, num_classes):
            raise _broken(
                path,
                f"{split}_labels.npy holds {labels.dtype} {labels.shape}; "
                f"expected int64 ({n},) with values below {num_classes}",
            )
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
        if mask_classes is not None:
            arrays[f"{split}_masks"] = _load_masks(path, split, (n, *manifest["shape"][:2]), len(mask_classes))
    return dataset_from_arrays(path, manifest, arrays)


def describe_dataset(ds: PreparedDataset) -> dict[str, Any]:
    """A JSON-able summary of `ds` for `difftrain data info`."""
    m = ds.manifest
    counts = m.get("class_counts") or {}
    classes = [
        {"name": name, **{split: counts[split][i] for split in SPLITS if split in counts}}
        for i, name in enumerate(ds.class_names)
    ]
    info: dict[str, Any] = {"path": str(ds.path.resolve()), "kind": m["kind"], "shape": list(ds.image_shape)}
    if ds.mask_classes:
        # Pixel shares show at a glance how rare each class is (a class in 0.1% of pixels is hard to learn).
        fractions = m.get("mask_pixel_fractions") or {}
        info["image_channels"] = ds.image_channels
        info["mask_classes"] = [
            {"name": name, **{f"{split}_pixels": fractions[split][i] for split in SPLITS if split in fractions}}
            for i, name in enumerate(ds.mask_classes)
        ]
    return info | {
        "dtype": m["dtype"],
        "count": dict(m["count"]),
        "num_classes": ds.num_classes,
        "classes": classes,
        "source": dict(m["source"]),
        "provenance": m.get("provenance"),
        "channel_stats": m["channel_stats"],
        "rejected": len(m.get("rejected", [])),
        "created": m.get("created"),
    }
