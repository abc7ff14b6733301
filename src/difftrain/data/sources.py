"""Dataset sources: each (builtin, IDX, image folder, image + mask folder) becomes a list of samples to read.

A sample reads its own pixels lazily, so prepare.py validates and converts every source in
one loop; the digest records exactly the source bytes that were read.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from difftrain.data.builtin import BUILTIN_DATASETS, load_builtin
from difftrain.data.idx import IdxFiles, find_idx_files, idx_files_for, is_idx_images, parse_idx
from difftrain.data.image_folder import scan_image_folder
from difftrain.data.images import BadImage, decode_image
from difftrain.data.masks import decode_mask
from difftrain.data.segmentation_folder import (
    LABELS_FILE,
    MASK_CLASSES_FILE,
    is_segmentation_folder,
    scan_segmentation_folder,
)
from difftrain.errors import UserError


class SourceDigest:
    """sha256 over the source bytes read: (relative name, content hash) in sorted-name order."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}

    def add(self, name: str, data: bytes) -> None:
        self._files[name] = hashlib.sha256(data).digest()

    def read(self, path: Path, name: str) -> bytes:
        data = path.read_bytes()  # opened read-only; the source is never written
        self.add(name, data)
        return data

    def hexdigest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self._files):
            h.update(name.encode() + b"\0" + self._files[name])
        return h.hexdigest()


@dataclass(frozen=True)
class Sample:
    name: str  # shown in `rejected`: the path relative to the source, or FILE[row]
    label: int | None
    read: Callable[[], np.ndarray]  # native uint8 (H, W, C); raises BadImage
    mask: str | None = None  # segmentation: the mask's name, shown in `rejected` when the mask is the problem
    read_mask: Callable[[], np.ndarray] | None = None  # segmentation: native class indices uint8 (H, W); raises BadImage
    caption: str | None = None  # captioned images: the image's caption (modalities/captions.py)


@dataclass
class Source:
    kind: str  # "builtin" | "idx" | "folder" | "mask-pairs"
    path: str  # absolute path, or "builtin:NAME"
    folder: Path | None  # where nothing may be written
    provenance: str
    class_names: list[str] | None
    train: list[Sample]
    test: list[Sample] | None  # the source's own test split, if it has one
    rejected: list[dict[str, str]]  # found before reading (e.g. unsupported file types)
    digest: SourceDigest
    mask_classes: list[str] | None = None  # segmentation: names from mask_classes.txt (None: named by index)


def _array_samples(images: np.ndarray, labels: np.ndarray | None, name: str,
                   captions: list[str] | None = None) -> list[Sample]:
    return [
        Sample(
            f"{name}[{i}]", None if labels is None else int(labels[i]), partial(operator.getitem, images, i),
            caption=None if captions is None else captions[i],
        )
        for i in range(len(images))
    ]


def _builtin_source(name: str) -> Source:
    ds = load_builtin(name)
    digest = SourceDigest()
    digest.add(name, ds.images.tobytes() + ds.labels.tobytes())
    samples = _array_samples(ds.images, ds.labels, name, ds.captions)
    return Source(
        "builtin", f"builtin:{name}", None, ds.provenance, ds.class_names, samples, None, [], digest
    )


def _idx_source(location: Path, files: IdxFiles) -> Source:
    digest = SourceDigest()

    def samples(images_path: Path, labels_path: Path | None) -> list[Sample]:
        images = parse_idx(digest.read(images_path, images_path.name), images_path, ndim=3)[..., None]
        labels = None
        if labels_path is not None:
            labels = parse_idx(digest.read(labels_path, labels_path.name), labels_path, ndim=1).astype(
                np.int64
            )
            if len(labels) != len(images):
                raise UserError(
                    f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; "
                    "the two files must come from the same dataset."
                )
        return _array_samples(images, labels, images_path.name)

    train = samples(files.train_images, files.train_labels)
    test = samples(files.test_images, files.test_labels) if files.test_images else None
    labels = [s.label for s in train + (test or []) if s.label is not None]
    class_names = [str(c) for c in range(max(labels) + 1)] if labels else None
    provenance = f"user-supplied IDX files from {location} (the dataset's own licence applies)"
    folder = location if location.is_dir() else location.parent
    return Source("idx", str(location), folder, provenance, class_names, train, test, [], digest)


def _read_image_file(digest: SourceDigest, path: Path, name: str) -> np.ndarray:
    try:
        data = digest.read(path, name)
    except OSError as e:
        raise BadImage(f"cannot read the file ({e.strerror or e})") from None
    return decode_image(data)


def _folder_source(root: Path) -> Source:
    folder = scan_image_folder(root)
    digest = SourceDigest()
    labels = folder.labels or [None] * len(folder.files)
    samples = [
        Sample(f, label, partial(_read_image_file, digest, root / f, f))
        for f, label in zip(folder.files, labels, strict=True)
    ]
    provenance = f"user-supplied images from {root}"
    return Source(
        "folder", str(root), root, provenance, folder.class_names, samples, None, folder.rejected, digest
    )


def _read_mask_file(digest: SourceDigest, path: Path, name: str, num_named: int | None) -> np.ndarray:
    try:
        mask = decode_mask(digest.read(path, name))
    except OSError as e:
        raise BadImage(f"cannot read the file ({e.strerror or e})", path=name) from None
    except BadImage as e:
        raise BadImage(e.reason, path=name) from None
    if num_named is not None and mask.size and mask.max() >= num_named:
        raise BadImage(f"class index {mask.max()}, but mask_classes.txt names only {num_named} classes "
                       f"(indices 0..{num_named - 1}); fix the mask or name the class", path=name)
    return mask


def _segmentation_source(root: Path) -> Source:
    folder = scan_segmentation_folder(root)
    digest = SourceDigest()
    for extra in (LABELS_FILE, MASK_CLASSES_FILE):  # they shape the dataset too
        if (root / extra).is_file():
            digest.read(root / extra, extra)
    labels = folder.labels or [None] * len(folder.pairs)
    num_named = len(folder.mask_classes) if folder.mask_classes is not None else None
    samples = [
        Sample(image, label, partial(_read_image_file, digest, root / image, image),
               mask, partial(_read_mask_file, digest, root / mask, mask, num_named))
        for (image, mask), label in zip(folder.pairs, labels, strict=True)
    ]
    provenance = f"user-supplied image + mask pairs from {root}"
    return Source("mask-pairs", str(root), root, provenance, folder.class_names, samples, None, folder.rejected,
                  digest, folder.mask_classes)


def open_source(source: str | Path) -> Source:
    """Find out what `source` is and list its samples (IDX arrays are read and checked here)."""
    if isinstance(source, str) and (source in BUILTIN_DATASETS or source.startswith("builtin:")):
        return _builtin_source(source.removeprefix("builtin:"))
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise UserError(
            f"source {source} not found. Give a folder of images (or of images/ + masks/ subfolders), a folder "
            "of IDX files, an IDX images "
            f"file, or a builtin dataset name ({', '.join(sorted(BUILTIN_DATASETS))})."
        )
    if path.is_file():
        if not is_idx_images(path):
            raise UserError(
                f"{path} is a file but not an IDX images file (*-idx3-ubyte[.gz]); "
                "to prepare images, pass the folder that holds them."
            )
        return _idx_source(path, idx_files_for(path))
    if is_segmentation_folder(path):
        return _segmentation_source(path)
    idx_files = find_idx_files(path)
    return _idx_source(path, idx_files) if idx_files else _folder_source(path)
