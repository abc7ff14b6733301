"""Captions of images: read from a JSON-lines file ({"file_name", "text"} per line, Hugging Face imagefolder's
metadata.jsonl), checked line by line, and tokenized to fixed-length rows of character ids.

A captioned dataset keeps `{split}_captions.npy` (int64 (N, T), padded with `pad_id`) beside its images, and the
characters in its spec's "captions", so a run trained on it reads prompts with the same tokenizer. Characters, not a
BPE: captions are short, and a model trained from scratch on a few thousand of them learns words from letters as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.errors import UserError
from difftrain.modalities.text_tokenizer import TextTokenizer, build_tokenizer

MAX_LENGTH = 256  # characters; longer captions are refused (the text encoder attends over every position)


@dataclass(frozen=True)
class CaptionFile:
    """The captions of one JSON-lines file: image name -> text, and the lines refused (as `rejected` entries)."""

    path: Path
    texts: dict[str, str]
    rejected: list[dict[str, str]]


def read_captions(path: str | Path) -> CaptionFile:
    """Parse `path`; every line is {"file_name": name relative to the image folder, "text": caption}."""
    path = Path(path).expanduser().resolve()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--captions {path}: no such file; give the JSON-lines file of {{\"file_name\", \"text\"}} "
                        "lines") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--captions {path}: cannot read it ({e}); it must be UTF-8 JSON lines") from None
    texts: dict[str, str] = {}
    rejected: list[dict[str, str]] = []

    def refuse(number: int, reason: str) -> None:
        rejected.append({"path": f"{path.name}:{number}", "reason": reason})

    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as e:
            refuse(number, f"not JSON ({e.msg})")
            continue
        name, text = (entry.get("file_name"), entry.get("text")) if isinstance(entry, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(text, str):
            refuse(number, 'needs a "file_name" and a "text", both strings')
        elif not text.strip():
            refuse(number, "the caption is empty")
        elif len(text) > MAX_LENGTH:
            refuse(number, f"the caption has {len(text)} characters; at most {MAX_LENGTH} are kept: shorten it")
        else:
            name = Path(name).as_posix().removeprefix("./")
            if name in texts:
                refuse(number, f"a second caption of {name}; give each image one")
            else:
                texts[name] = text
    if not texts:
        raise UserError(f"--captions {path}: no usable caption lines"
                        + (f" ({rejected[0]['path']}: {rejected[0]['reason']})" if rejected else " (the file is empty)"))
    return CaptionFile(path, texts, rejected)


def attach_captions(train: list, test: list | None, captions: CaptionFile) -> tuple[list, list | None, list[dict[str, str]]]:
    """The train and test samples that have a caption, each with it, and rejections: images without one, captions of
    no image."""
    def captioned(samples: list) -> list:
        return [replace(s, caption=captions.texts[s.name]) for s in samples if s.name in captions.texts]

    every = train + (test or [])
    names = {s.name for s in every}
    rejected = [{"path": s.name, "reason": f"no caption in {captions.path.name}"} for s in every if s.name not in captions.texts]
    rejected += [{"path": f"{captions.path.name}: {name}", "reason": "a caption of an image that is not in the source"}
                 for name in captions.texts if name not in names]
    return captioned(train), None if test is None else captioned(test), rejected


def caption_spec(train: list[str], every: list[str]) -> dict[str, Any]:
    """The spec's "captions": the characters of every caption (held-out ones must encode), padding, the row length."""
    return {**build_tokenizer("char", "".join(train), "".join(every), pad=True), "length": max(map(len, every))}


class CaptionTokens:
    """Captions <-> padded rows of ids, for one spec's "captions"."""

    def __init__(self, spec: dict[str, Any]):
        self.tokenizer = TextTokenizer(spec)
        self.length = int(spec["length"])
        self.pad_id = int(spec["pad_id"])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """int64 (N, length): each caption's ids, then padding; a caption too long or with an unknown character is
        refused, naming it."""
        rows = np.full((len(texts), self.length), self.pad_id, np.int64)
        for i, text in enumerate(texts):
            if len(text) > self.length:
                raise UserError(f"the prompt {text!r} has {len(text)} characters; this model read captions of at most "
                                f"{self.length}: shorten it")
            unknown = sorted(set(text) - set(self.tokenizer.vocab))
            if unknown:
                raise UserError(f"the prompt {text!r} holds {', '.join(map(repr, unknown[:10]))}, which no caption of the "
                                "training data had: leave those characters out")
            rows[i, :len(text)] = self.tokenizer.encode(text)
        return rows

    def decode(self, rows: np.ndarray) -> list[str]:
        return [self.tokenizer.decode(row) for row in rows]
