"""The shared files of a synthetic dataset: class names as folders, labels.csv. Each sample's own files are the
modality's (Modality.synth_write): for images

    OUT/<class>/<class>-000017.png                      a class-conditional model: ImageFolder layout
    OUT/images/000017.png                               an unconditional one (`data prepare OUT/images` reads it)
    OUT/images/<name>.png + OUT/masks/<name>.png        segmentation; masks are mode "L", pixel = class index
    OUT/labels.csv                                      file,label,class (file relative to OUT), conditional models
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from difftrain import atomic
from difftrain.data.image_folder import is_folder_name
from difftrain.errors import UserError


def check_class_name(name: str) -> None:
    """A class name becomes a folder and part of file names: it must be one visible path component."""
    if not is_folder_name(name):
        raise UserError(f"class {name!r} cannot name a folder of the synthetic dataset; leave it out with --classes")


def write_labels(out: Path, files: list[dict]) -> Path:
    """labels.csv: file,label,class for each kept sample, in the manifest's order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", "class"])
    writer.writerows([f["file"], f["label"], f["class"]] for f in files)
    atomic.write_text(out / "labels.csv", buf.getvalue())
    return out / "labels.csv"
