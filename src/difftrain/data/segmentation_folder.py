"""The image + mask folder layout: scan it into matched pairs, or write arrays out in it.

    ROOT/images/NAME.png|jpg|...   the images
    ROOT/masks/NAME.png            class-index masks (pixel value = class index), matched on NAME
    ROOT/labels.csv                optional image-level labels: columns file,label (file = image name)
    ROOT/mask_classes.txt          optional: one mask class name per line, index 0 first (else "0".."K-1")
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from difftrain.atomic import atomic_directory
from difftrain.data.image_folder import IMAGE_EXTENSIONS, visible_files
from difftrain.data.masks import MASK_EXTENSIONS
from difftrain.errors import UserError

LABELS_FILE = "labels.csv"
MASK_CLASSES_FILE = "mask_classes.txt"


@dataclass(frozen=True)
class SegmentationFolder:
    """What a scan found; paths are relative to `root` ("images/a.png", "masks/a.png"), sorted by image."""

    root: Path
    pairs: list[tuple[str, str]]  # (image, mask)
    labels: list[int] | None  # one per pair; None without labels.csv
    class_names: list[str] | None
    mask_classes: list[str] | None  # from mask_classes.txt; None: named by the indices found
    rejected: list[dict[str, str]]


def is_segmentation_folder(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


def _by_stem(root: Path, sub: str, extensions: frozenset[str], what: str, rejected: list[dict[str, str]]) -> dict[str, str]:
    """{name without extension: path relative to root} of the files in root/sub; others go to `rejected`."""
    found: dict[str, str] = {}
    for path in visible_files(root / sub, rejected, root):
        rel = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        if suffix not in extensions:
            allowed = ", ".join(sorted(extensions))
            rejected.append({"path": rel, "reason": f"unsupported {what} file type {suffix or '(no extension)'} ({allowed})"})
            continue
        stem = PurePosixPath(path.relative_to(root / sub).as_posix()).with_suffix("").as_posix()
        if stem in found:
            rejected.append({"path": rel, "reason": f"another {what} has the same name ({found[stem]}); keep one"})
            continue
        found[stem] = rel
    return found


def _read_mask_classes(root: Path) -> list[str] | None:
    path = root / MASK_CLASSES_FILE
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); save it as UTF-8 text, one class name per line.") from None
    while names and not names[-1]:
        names.pop()
    problem = None
    if not names:
        problem = "it names no class"
    elif "" in names:
        problem = f"line {names.index('') + 1} is empty"
    elif len(set(names)) != len(names):
        problem = "a class is named twice"
    elif len(names) > 256:
        problem = f"{len(names)} classes, but 8-bit masks hold at most 256"
    if problem:
        raise UserError(f"{path}: {problem}. Write one class name per line, the name of mask index 0 (background) first.")
    return names


def _read_labels(root: Path) -> dict[str, str] | None:
    """{image name relative to images/: class name} from labels.csv, or None without it."""
    path = root / LABELS_FILE
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), set(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: unreadable ({e}); save it as UTF-8 CSV with the columns file,label.") from None
    if not {"file", "label"} <= columns:
        raise UserError(f"{path}: needs a header with the columns file,label (file = image name in images/, label = its class).")
    named = "class" if "class" in columns else "label"  # synth writes file,label,class: the class is the name
    labels: dict[str, str] = {}
    for row_number, row in enumerate(rows, start=2):
        file = (row["file"] or "").strip().removeprefix("images/")
        name = (row[named] or "").strip()
        if not file:
            continue  # a blank line
        if file in labels and labels[file] != name:
            raise UserError(f"{path}: line {row_number} gives {file} a second label ({labels[file]}, then {name}); "
                            "give each image one.")
        labels[file] = name
    return labels


def _class_order(names: set[str]) -> list[str]:
    # "2" before "10": integer class names sort as numbers.
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def scan_segmentation_folder(root: Path) -> SegmentationFolder:
    """Match images/ and masks/ on their names; every image or mask without a partner is rejected."""
    rejected: list[dict[str, str]] = []
    images = _by_stem(root, "images", IMAGE_EXTENSIONS, "image", rejected)
    masks = _by_stem(root, "masks", MASK_EXTENSIONS, "mask", rejected)
    rejected += [{"path": images[s], "reason": f"image without a mask (expected masks/{s}.png)"}
                 for s in images if s not in masks]
    rejected += [{"path": masks[s], "reason": "mask without an image (no images/ file of that name)"}
                 for s in masks if s not in images]
    stems = sorted(s for s in images if s in masks)

    given = _read_labels(root)
    labels = class_names = None
    if given is not None:
        by_file = {images[s].removeprefix("images/"): s for s in stems}
        found = {rel.removeprefix("images/") for rel in images.values()}
        rejected += [{"path": f"images/{f}", "reason": f"listed in {LABELS_FILE} but not found in images/"}
                     for f in given if f not in found]
        rejected += [{"path": f"images/{f}", "reason": f"no label in {LABELS_FILE}"} for f in by_file if not given.get(f)]
        labelled = {f: given[f] for f in by_file if given.get(f)}
        stems = [by_file[f] for f in labelled]
        class_names = _class_order(set(labelled.values()))
        labels = [class_names.index(name) for name in labelled.values()]
    pairs = [(images[s], masks[s]) for s in stems]
    return SegmentationFolder(root, pairs, labels, class_names or None, _read_mask_classes(root),
                              sorted(rejected, key=lambda r: r["path"]))


def write_segmentation_folder(out: str | Path, images: np.ndarray, masks: np.ndarray, *, names: list[str] | None = None,
                              labels: np.ndarray | None = None, class_names: list[str] | None = None,
                              mask_classes: list[str] | None = None, overwrite: bool = False) -> Path:
    """Write uint8 images (N, H, W, 1|3) and masks (N, H, W) as OUT/images/NAME.png + OUT/masks/NAME.png (mode L),
    with labels.csv (file,label: label = class_names[label], or the index) and mask_classes.txt when given.

    The folder appears complete or not at all (written beside `out`, then renamed).
    """
    names = names or [f"{i:06d}" for i in range(len(images))]
    if not len(images) == len(masks) == len(names) or (labels is not None and len(labels) != len(images)):
        raise ValueError(f"{len(images)} images, {len(masks)} masks, {len(names)} names and "
                         f"{'no' if labels is None else len(labels)} labels: one of each per pair")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another folder, or pass overwrite (--overwrite) to replace it.")
    if out.exists() and not (out.is_dir() and (is_segmentation_folder(out) or not any(out.iterdir()))):
        raise UserError(f"{out} exists and is not an images/ + masks/ folder, so it is not replaced; choose another folder.")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for name, image, mask in zip(names, images, masks, strict=True):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp / "images" / f"{name}.png")
            Image.fromarray(np.asarray(mask, np.uint8)).save(tmp / "masks" / f"{name}.png")
        if labels is not None:
            with (tmp / LABELS_FILE).open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["file", "label"])
                writer.writerows([f"{n}.png", class_names[int(y)] if class_names else int(y)] for n, y in zip(names, labels))
        if mask_classes is not None:
            (tmp / MASK_CLASSES_FILE).write_text("".join(f"{c}\n" for c in mask_classes), encoding="utf-8")
    return out
