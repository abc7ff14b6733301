"""Hostile sources for `data prepare`: a decompression bomb is refused by its declared size before a pixel is decoded,
and links are never followed out of the source folder. Each is reported with its reason; the good files are prepared;
--strict makes any of them one clear error (exit 2)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difftrain.data import prepare_dataset


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit grey pixels and holds a few bytes: opening it is cheap, decoding it
    would take width x height bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def digit(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_a_decompression_bomb_is_refused_by_its_declared_size(tmp_path):
    source = tmp_path / "src"
    for i in range(4):
        digit(source / "a" / f"{i}.png", 10 * i)
        digit(source / "b" / f"{i}.png", 200 - 10 * i)
    (source / "a" / "bomb.png").write_bytes(png_header(100_000, 100_000))  # 10 gigapixels declared, 80 bytes on disk
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    ds = prepare_dataset(source, tmp_path / "out", test_fraction=0.0, progress=False)
    assert len(ds.train_data) == 8
    assert [(r["path"], "too many pixels" in r["reason"]) for r in ds.manifest["rejected"]] == [("a/bomb.png", True)]
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before  # the source is never touched

    result = subprocess.run([sys.executable, "-m", "difftrain", "data", "prepare", str(source), "--out", str(tmp_path / "strict"),
                             "--strict"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "bomb.png" in result.stderr and "too many pixels" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "strict").exists()


def test_links_are_not_followed_out_of_the_source_folder(tmp_path):
    source, outside = tmp_path / "src", tmp_path / "outside"
    for i in range(3):
        digit(source / "a" / f"{i}.png", 10 * i)
        digit(source / "b" / f"{i}.png", 250 - 10 * i)
        digit(outside / "more" / f"{i}.png", 128)
    (source / "a" / "escape.png").symlink_to(outside / "more" / "0.png")  # a file outside
    (source / "c").symlink_to(outside / "more", target_is_directory=True)  # a whole class folder outside
    (source / "b" / "broken.png").symlink_to(tmp_path / "nothing.png")
    (source / "b" / "alias.png").symlink_to(source / "a" / "1.png")  # inside: read like any file

    ds = prepare_dataset(source, tmp_path / "out", test_fraction=0.0, progress=False)
    assert ds.class_names == ["a", "b"] and len(ds.train_data) == 7  # 3 + 3 + the link inside
    reasons = {r["path"]: r["reason"] for r in ds.manifest["rejected"]}
    assert reasons == {"a/escape.png": "a link to a file outside the source folder, not followed",
                       "b/broken.png": "a link to nothing (broken)",
                       "c": "a link to a folder, not followed: copy the folder in, or link its files"}
    assert not (ds.train_data == 128).all(axis=(1, 2, 3)).any()  # no image of the outside folder got in
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["rejected"] == ds.manifest["rejected"]


def test_links_out_of_a_segmentation_folder_are_not_followed(tmp_path):
    source, outside = tmp_path / "pairs", tmp_path / "outside"
    for i in range(3):
        digit(source / "images" / f"{i}.png", 60 * i)
        digit(source / "masks" / f"{i}.png", 1)
    digit(outside / "secret.png", 7)
    (source / "images" / "3.png").symlink_to(outside / "secret.png")
    (source / "masks" / "3.png").symlink_to(outside / "secret.png")
    ds = prepare_dataset(source, tmp_path / "out", test_fraction=0.0, progress=False)
    assert len(ds.train_data) == 3
    rejected = {r["path"] for r in ds.manifest["rejected"] if "outside the source folder" in r["reason"]}
    assert rejected == {"images/3.png", "masks/3.png"}


def test_class_names_cannot_lead_synth_out_of_its_folder(tmp_path, digits_dir):
    """A run whose classes were named by hostile data (labels.csv, a crafted dataset.json) cannot write outside --out."""
    from difftrain.errors import UserError
    from difftrain.synth.generate import synthesize
    from tests.test_synth import FAST, train_tiny

    run = train_tiny(tmp_path / "run", digits_dir)
    info = json.loads((run / "dataset.json").read_text())
    for hostile in ("../../escape", "..", ".hidden", "a/b", "c\\d"):
        info["class_names"][0] = hostile
        (run / "dataset.json").write_text(json.dumps(info))
        with pytest.raises(UserError, match="cannot name a folder"):
            synthesize(run, tmp_path / "out", per_class=1, spec=FAST, report=False)
        assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()
