"""The files of a synthetic dataset: one PNG per sample (and its mask), labels.csv, and reading them back.

    OUT/<class>/<class>-000017.png                      a class-conditional model: ImageFolder layout
    OUT/images/000017.png                               an unconditional one (`data prepare OUT/images` reads it)
    OUT/images/<name>.png + OUT/masks/<name>.png        segmentation; masks are mode "L", pixel = class index
    OUT/labels.csv                                      file,label,class (file relative to OUT), conditional models
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from difftrain import atomic
from difftrain.errors import UserError


def check_class_name(name: str) -> None:
    """A class name becomes a folder and part of file names: it must be one visible path component."""
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in '/\\\0'):
        raise UserError(f"class {name!r} cannot name a folder of the synthetic dataset; leave it out with --classes")


def sample_files(class_name: str | None, number: int, segmentation: bool) -> tuple[str, str | None]:
    """(image file, mask file or None), relative to OUT, of the `number`-th kept sample of a class (None: unconditional)."""
    stem = f"{number:06d}" if class_name is None else f"{class_name}-{number:06d}"
    if segmentation:
        return f"images/{stem}.png", f"masks/{stem}.png"
    return (f"images/{stem}.png" if class_name is None else f"{class_name}/{stem}.png"), None


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 (H, W, 1) or (H, W, 3) as a grayscale or RGB PNG, (H, W) as mode L."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or pixels.shape[2] == 3):
        raise UserError(f"a PNG holds 1 or 3 channels; these samples have {pixels.shape[2]}")
    with atomic.atomic_file(path) as tmp:
        # uint8 (H, W) is mode "L", (H, W, 3) "RGB".
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(tmp, format="PNG")


def write_sample(out: Path, file: str, mask_file: str | None, image: np.ndarray, mask: np.ndarray | None) -> None:
    _write_png(out / file, image)
    if mask_file is not None:
        _write_png(out / mask_file, mask)


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e}), written by an earlier `difftrain synth`: "
                        "pass --overwrite to start again") from None


def read_sample(out: Path, file: str, mask_file: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (H, W, C) and mask (H, W) or None of a sample written by `write_sample`, exactly as written."""
    pixels = _read_png(out / file)
    return (pixels[..., None] if pixels.ndim == 2 else pixels), (None if mask_file is None else _read_png(out / mask_file))


def write_labels(out: Path, files: list[dict]) -> Path:
    """labels.csv: file,label,class for each kept sample, in the manifest's order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", "class"])
    writer.writerows([f["file"], f["label"], f["class"]] for f in files)
    atomic.write_text(out / "labels.csv", buf.getvalue())
    return out / "labels.csv"
