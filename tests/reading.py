"""Checks shared by the tests of the file readers (tables, series): a bad file is one clear line, and is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from difftrain.errors import UserError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def expect_read_error(read, path: Path, *fragments: str, **options) -> str:
    """`read(path, **options)` fails with a one-line UserError naming the file and every fragment, leaves the file as it
    was and writes nothing beside it; returns the message."""
    before = path.read_bytes() if path.is_file() else None
    folder = path.parent if path.parent.is_dir() else None
    listing = sorted(p.name for p in folder.iterdir()) if folder else None
    with pytest.raises(UserError) as caught:
        read(path, **options)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if before is not None:
        assert path.read_bytes() == before
    if folder:
        assert sorted(p.name for p in folder.iterdir()) == listing  # nothing written next to it
    return message
