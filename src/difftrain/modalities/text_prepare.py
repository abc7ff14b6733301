"""`data prepare --kind text`: a text file (or the built-in `sums`) becomes token blocks for masked diffusion.

The text is tokenized whole (characters, or UTF-8 bytes), split by position (the first 1 - test_fraction of the tokens
train, the rest is held out: language-model practice, which keeps held-out text unseen as a whole), and cut into
blocks of --block tokens. The source is never touched; the output is written atomically.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.errors import UserError

TOKENIZERS = ("char", "byte")
BUILTIN_TEXT = {"sums": "generated sums of two numbers below 100, one per line ('12+7=19'): a corpus whose samples "
                        "can be checked (made here, nothing downloaded)"}


def generate_sums(lines: int = 20_000, seed: int = 0) -> str:
    """`lines` lines 'a+b=c' with a, b uniform in 0..99: a learnable corpus whose every line is right or wrong."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 100, lines), rng.integers(0, 100, lines)
    return "".join(f"{x}+{y}={x + y}\n" for x, y in zip(a.tolist(), b.tolist()))


def read_text(source: Path) -> str:
    if not source.is_file():
        raise UserError(f"{source}: no such file; --kind text reads one UTF-8 text file (or the built-in: "
                        f"{', '.join(BUILTIN_TEXT)})")
    try:
        return source.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{source} is not UTF-8 text (byte {e.start} cannot be decoded): convert it to UTF-8, or pass "
                        "--tokenizer byte to read its raw bytes") from None


def tokenize(text: str | bytes, tokenizer: str) -> tuple[np.ndarray, list[str] | None]:
    """(token ids, vocabulary): characters -> their rank among the text's distinct characters; bytes -> themselves."""
    if tokenizer == "byte":
        data = text.encode("utf-8") if isinstance(text, str) else text
        return np.frombuffer(data, np.uint8).astype(np.int32), None
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return np.fromiter((index[c] for c in text), np.int32, len(text)), vocab


def prepare_text(source: str | Path, out: str | Path, *, tokenizer: str = "char", block: int | None = None,
                 limit: int | None = None, test_fraction: float = 0.1, seed: int = 0, overwrite: bool = False,
                 progress: bool = True, expect_kind: str | None = None, strict: bool = False, warn=None, **unused: Any):
    """int32 train/test_tokens.npy (N, block) and a manifest with the tokenizer and its vocabulary."""
    import difftrain
    from difftrain.data.dataset import FORMAT_VERSION, load_dataset
    from difftrain.data.prepared_output import check_out_folder, write_prepared
    from difftrain.modalities.text import TextModality

    options = {name: value for name, value in unused.items() if value not in (None, False)}
    if options:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in options)} do not apply to text ({source}): leave them out")
    if tokenizer not in TOKENIZERS:
        raise UserError(f"--tokenizer {tokenizer!r}: choose one of {', '.join(TOKENIZERS)}")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction!r}")
    block = 256 if block is None else block
    if block < 2:
        raise UserError(f"--block {block}: a block holds at least 2 tokens")
    builtin = str(source) in BUILTIN_TEXT
    out = check_out_folder(Path(out), None, overwrite)
    if not builtin and out == Path(source).expanduser().resolve():
        raise UserError(f"--out {out} is the source file itself; preparing never replaces the source. Choose a folder.")
    if builtin:
        text: str | bytes = generate_sums(seed=seed)
    elif tokenizer == "byte":
        text = Path(source).read_bytes() if Path(source).is_file() else read_text(Path(source))
    else:
        text = read_text(Path(source))
    tokens, vocab = tokenize(text, tokenizer)
    cut = int(round(len(tokens) * (1 - test_fraction)))
    train, test = (tokens[i:i + (len(part) // block) * block].reshape(-1, block)
                   for i, part in ((0, tokens[:cut]), (cut, tokens[cut:])))
    if limit is not None:
        train = train[:limit]
    if len(train) < 2:
        raise UserError(f"{source} holds {len(tokens)} tokens: {len(train)} training block(s) of {block}; a dataset needs "
                        "at least 2: pass a smaller --block or a longer text")
    raw = text.encode("utf-8") if isinstance(text, str) else text
    manifest = {
        "format_version": FORMAT_VERSION, "kind": TextModality.kind, "shape": [block], "dtype": "int32",
        "count": {"train": int(len(train)), "test": int(len(test))}, "num_classes": None, "class_names": None,
        "tokenizer": tokenizer, "vocab": vocab, "corpus": str(source) if builtin else None,  # (None for bytes: the 256 byte values)
        "tokens": {"train": int(train.size), "test": int(test.size), "dropped": int(len(tokens) - train.size - test.size)},
        "split": {"test_fraction": test_fraction, "by": "position: the end of the text is held out"},
        "source": {"path": str(source), "kind": "builtin" if builtin else "file", "sha256": hashlib.sha256(raw).hexdigest(),
                   "characters" if isinstance(text, str) else "bytes": len(text)},
        "provenance": BUILTIN_TEXT.get(str(source)) if builtin else None,
        "rejected": [],
        "options": {"tokenizer": tokenizer, "block": block, "limit": limit, "test_fraction": test_fraction, "seed": seed},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "difftrain_version": difftrain.__version__,
    }
    write_prepared(out, {"train_tokens": train.astype(np.int32), "test_tokens": test.astype(np.int32)}, manifest, overwrite)
    return load_dataset(out)
