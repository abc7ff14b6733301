"""What every kind of prepared dataset shares on the way out: a safe output folder, stratified picks for
splits and limits, and the atomic write of arrays + manifest.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.atomic import atomic_directory, write_json
from difftrain.data.dataset import MANIFEST
from difftrain.errors import UserError
from difftrain.modalities import KINDS


def is_prepared_dataset(folder: Path) -> bool:
    """A manifest.json that difftrain wrote: any other file of that name is the user's."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest and manifest.get("kind") in KINDS


def check_out_folder(out: Path, source_folder: Path | None, overwrite: bool) -> Path:
    """The resolved output folder, after refusing one that overlaps the source or holds anything but a prepared dataset."""
    out = out.expanduser().resolve()
    if source_folder is not None and (
        out == source_folder or source_folder in out.parents or out in source_folder.parents
    ):
        raise UserError(
            f"--out {out} overlaps the source folder {source_folder}; preparing never writes into (or "
            "replaces) the source. Choose an output folder outside it."
        )
    if out.exists():
        if not overwrite:
            raise UserError(f"{out} already exists. Pass --overwrite to replace it, or choose another --out.")
        # --overwrite deletes the old folder: only ever a prepared dataset or an empty folder.
        if not out.is_dir() or not (is_prepared_dataset(out) or not any(out.iterdir())):
            raise UserError(
                f"{out} exists and is not a prepared dataset, so --overwrite will not delete it. "
                "Choose another --out."
            )
    return out


def pick_stratified(strata: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of k items drawn at random, in proportion to each stratum's size."""
    if k >= len(strata):
        return np.arange(len(strata))
    classes, counts = np.unique(strata, return_counts=True)
    quota = counts * k / len(strata)
    take = np.floor(quota).astype(int)
    # The largest remainders get the items that flooring left over.
    take[np.argsort(take - quota, kind="stable")[: k - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(strata == c))[:t] for c, t in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked))


def write_prepared(out: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any], overwrite: bool,
                   streamed: Callable[[Path], None] | None = None) -> None:
    """`arrays` as NAME.npy and `manifest` into `out`, atomically; `streamed(folder)` first writes the large arrays
    itself (and may add to the manifest what it measured on the way)."""
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            if streamed is not None:
                streamed(tmp)
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            write_json(tmp / MANIFEST, manifest)
    except FileExistsError:
        raise UserError(
            f"{out} appeared while preparing. Pass --overwrite to replace it, or choose another --out."
        ) from None
