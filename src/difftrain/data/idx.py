"""MNIST-style IDX files (raw or gzipped): find them by their standard names, check every header."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difftrain.errors import UserError

_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_CONTENT = {1: "labels (N,)", 3: "images (N, H, W)"}
_REDOWNLOAD = "Download or unpack the file again."


@dataclass(frozen=True)
class IdxFiles:
    """The IDX files of one dataset; labels are None when absent, test_* when it has no test split."""

    train_images: Path
    train_labels: Path | None
    test_images: Path | None = None
    test_labels: Path | None = None


def parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Decode IDX bytes (gzipped or raw) to a uint8 array with `ndim` dims; `path` names it in errors."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: corrupt or truncated gzip data ({e}). {_REDOWNLOAD}") from None
    if len(data) < 4 or data[:2] != b"\0\0":
        raise UserError(
            f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}, expected "
            f"0000080{ndim} for {_CONTENT[ndim]}). Pass MNIST-style *-idx{ndim}-ubyte[.gz] files."
        )
    code, dims = data[2], data[3]
    if code != 0x08:
        kind = _TYPE_NAMES.get(code, "unknown")
        raise UserError(f"{path}: IDX element type 0x{code:02x} ({kind}); only 0x08 (uint8) is supported.")
    if dims != ndim:
        raise UserError(f"{path}: IDX header says {dims} dimensions; expected {ndim} for {_CONTENT[ndim]}.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated inside the IDX header. {_REDOWNLOAD}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise UserError(
            f"{path}: header promises shape {shape} ({expected} bytes unpacked) but there are "
            f"{len(data)} bytes: the file is {problem}. {_REDOWNLOAD}"
        )
    if ndim == 3 and 0 in shape[1:]:
        raise UserError(f"{path}: images of size {shape[1]}x{shape[2]} hold no pixels.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def is_idx_images(path: Path) -> bool:
    """Whether the name is an IDX images file's (`*idx3-ubyte`, optionally `.gz`)."""
    return path.name.removesuffix(".gz").endswith("idx3-ubyte")


def labels_beside(images: Path) -> Path | None:
    """The labels file named like `images` (train-images-idx3-ubyte -> train-labels-idx1-ubyte[.gz])."""
    name = images.name.removesuffix(".gz").replace("images", "labels").replace("idx3", "idx1")
    return next((p for p in (images.with_name(name), images.with_name(name + ".gz")) if p.is_file()), None)


def idx_files_for(images: Path) -> IdxFiles:
    """One IDX images file given on its own: the whole dataset, labelled if its labels lie beside it."""
    return IdxFiles(images, labels_beside(images))


def find_idx_files(folder: Path) -> IdxFiles | None:
    """The IDX dataset in `folder` (a t10k-/test- images file becomes the test split), or None."""
    # Keyed by the unpacked name, so a file kept both gzipped and unpacked counts once.
    found = {
        p.name.removesuffix(".gz"): p
        for p in sorted(folder.iterdir())
        if p.is_file() and is_idx_images(p) and not p.name.startswith(".")
    }
    if not found:
        return None
    test = [p for name, p in found.items() if "t10k" in name or "test" in name]
    train = [p for p in found.values() if p not in test]
    if len(train) != 1 or len(test) > 1:
        names = ", ".join(sorted(found))
        raise UserError(
            f"{folder}: cannot tell which IDX images file is which ({names}); expected one train file "
            "and at most one t10k/test file. Pass the images file itself as the source."
        )
    files = idx_files_for(train[0])
    if test:
        files = IdxFiles(files.train_images, files.train_labels, test[0], labels_beside(test[0]))
        if (files.train_labels is None) != (files.test_labels is None):
            unlabelled = files.test_images if files.test_labels is None else files.train_images
            raise UserError(
                f"{unlabelled}: no labels file beside it, but the other split has one. "
                "Add the matching *-labels-idx1-ubyte[.gz] file or remove the unlabelled images."
            )
    return files
