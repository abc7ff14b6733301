"""`data prepare --kind text`: a text file, a JSON-lines corpus (or the built-in `sums`) becomes token blocks for masked
diffusion.

A plain corpus (a text file, or JSON lines without labels, whose documents are joined by line breaks) is split by
position: the first 1 - test_fraction of the text trains, the rest is held out (language-model practice, which keeps
held-out text unseen as a whole); each part is tokenized and cut into blocks of --block tokens. A labelled corpus
(JSON lines with --label-field) keeps documents apart: a seeded split by document, each document its own blocks (a
long one several, all with its label), the last one padded, so a block is one class's text and the model learns
where a document ends. The source is never touched; the output is written atomically.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.errors import UserError
from difftrain.modalities.text_tokenizer import TextTokenizer, build_tokenizer, parse_kind

BUILTIN_TEXT = {"sums": "generated sums of two numbers below 100, one per line ('12+7=19'): a corpus whose samples "
                        "can be checked (made here, nothing downloaded)"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def generate_sums(lines: int = 20_000, seed: int = 0) -> str:
    """`lines` lines 'a+b=c' with a, b uniform in 0..99: a learnable corpus whose every line is right or wrong."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 100, lines), rng.integers(0, 100, lines)
    return "".join(f"{x}+{y}={x + y}\n" for x, y in zip(a.tolist(), b.tolist()))


def read_text(source: Path) -> str:
    if not source.is_file():
        raise UserError(f"{source}: no such file; --kind text reads a UTF-8 text file or JSON lines (.jsonl), or the "
                        f"built-in: {', '.join(BUILTIN_TEXT)}")
    try:
        return source.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{source} is not UTF-8 text (byte {e.start} cannot be decoded): convert it to UTF-8, or pass "
                        "--tokenizer byte to read its raw bytes") from None


def read_jsonl(source: Path, field: str, label_field: str | None) -> tuple[list[str], list[str] | None, list[dict]]:
    """Documents (and their labels, as text) of a JSON-lines file; each unusable line is rejected with its reason."""
    texts: list[str] = []
    labels: list[str] | None = [] if label_field else None
    rejected: list[dict] = []
    for number, line in enumerate(read_text(source).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except ValueError as e:
            rejected.append({"path": where, "reason": f"not JSON ({e}): each line holds one object"})
            continue
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text:
            rejected.append({"path": where, "reason": f"no text in field {field!r}: pass --field with the key that holds "
                                                      "each document's text"})
            continue
        if labels is not None:
            label = record.get(label_field)
            if label is None or isinstance(label, (dict, list)) or str(label) == "":
                rejected.append({"path": where, "reason": f"no label in field {label_field!r}: give every line one, "
                                                          "or leave --label-field out"})
                continue
            labels.append(str(label))
        texts.append(text)
    return texts, labels, rejected


def blocks_of(tokens: np.ndarray, block: int) -> np.ndarray:
    """Consecutive blocks of a token stream (the tail shorter than a block is dropped)."""
    return tokens[:len(tokens) // block * block].reshape(-1, block)


def padded_blocks(tokens: np.ndarray, block: int, pad_id: int) -> np.ndarray:
    """A document's blocks, the last one filled with padding."""
    count = max(1, -(-len(tokens) // block))
    out = np.full(count * block, pad_id, np.int32)
    out[:len(tokens)] = tokens
    return out.reshape(count, block)


def prepare_text(source: str | Path, out: str | Path, *, tokenizer: str = "char", block: int | None = None,
                 field: str | None = None, label_field: str | None = None, limit: int | None = None,
                 test_fraction: float = 0.1, seed: int = 0, overwrite: bool = False, progress: bool = True,
                 expect_kind: str | None = None, strict: bool = False, warn=None, **unused: Any):
    """int32 train/test_tokens.npy (N, block) (and int64 labels) and a manifest with the tokenizer."""
    import difftrain
    from difftrain.data.dataset import FORMAT_VERSION, load_dataset
    from difftrain.data.prepared_output import check_out_folder, write_prepared
    from difftrain.modalities.text import TextModality

    options = {name: value for name, value in unused.items() if value not in (None, False)}
    if options:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in options)} do not apply to text ({source}): leave them out")
    kind, _ = parse_kind(tokenizer)
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction!r}")
    block = 256 if block is None else block
    if block < 2:
        raise UserError(f"--block {block}: a block holds at least 2 tokens")
    builtin = str(source) in BUILTIN_TEXT
    jsonl = not builtin and Path(source).suffix.lower() in JSONL_SUFFIXES
    if (field or label_field) and not jsonl:
        raise UserError(f"--field and --label-field read JSON lines (.jsonl); {source} is plain text: leave them out")
    out = check_out_folder(Path(out), None, overwrite)
    if not builtin and out == Path(source).expanduser().resolve():
        raise UserError(f"--out {out} is the source file itself; preparing never replaces the source. Choose a folder.")

    rejected: list[dict] = []
    documents, names = None, None
    if builtin:
        text: str | bytes = generate_sums(seed=seed)
    elif jsonl:
        documents, doc_labels, rejected = read_jsonl(Path(source), field or "text", label_field)
        if strict and rejected:
            raise UserError(f"{len(rejected)} line(s) of {source} rejected (--strict): {rejected[0]['path']}: "
                            f"{rejected[0]['reason']}")
        if not documents:
            raise UserError(f"{source} holds no usable documents" + (f" ({rejected[0]['path']}: {rejected[0]['reason']})"
                                                                      if rejected else ""))
        if doc_labels is None:
            text, documents = "\n".join(documents) + "\n", None
        else:
            names = sorted(set(doc_labels))
            labels = np.asarray([names.index(label) for label in doc_labels], np.int64)
            text = "".join(documents)
    elif kind == "byte":
        text = Path(source).read_bytes() if Path(source).is_file() else read_text(Path(source))
    else:
        text = read_text(Path(source))

    if documents is None:  # one stream, split by position
        cut = int(round(len(text) * (1 - test_fraction)))
        spec = build_tokenizer(tokenizer, text[:cut] if isinstance(text, str) else "", text if isinstance(text, str) else "",
                               pad=False)
        coder = TextTokenizer(spec)
        parts = [np.frombuffer(part, np.uint8).astype(np.int32) if isinstance(part, bytes) else coder.encode(part)
                 for part in (text[:cut], text[cut:])]
        train, test = (blocks_of(part, block) for part in parts)
        train_labels = test_labels = None
        tokens_total = sum(map(len, parts))
    else:  # labelled documents, split by document
        order = np.random.default_rng(seed).permutation(len(documents))
        held = set(order[:int(round(len(documents) * test_fraction))].tolist())
        train_text = "".join(d for i, d in enumerate(documents) if i not in held)
        spec = build_tokenizer(tokenizer, train_text, text, pad=True)
        coder = TextTokenizer(spec)
        encoded = [coder.encode(d) for d in documents]
        split: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
        for i, tokens in enumerate(encoded):
            rows = padded_blocks(tokens, block, spec["pad_id"])
            split[i in held][0].append(rows)
            split[i in held][1].append(np.full(len(rows), labels[i], np.int64))
        (train, train_labels), (test, test_labels) = (
            (np.concatenate(b) if b else np.zeros((0, block), np.int32), np.concatenate(y) if y else np.zeros(0, np.int64))
            for b, y in (split[False], split[True]))
        tokens_total = sum(map(len, encoded))
    if limit is not None:
        train = train[:limit]
        train_labels = None if train_labels is None else train_labels[:limit]
    if len(train) < 2:
        raise UserError(f"{source} holds {tokens_total} tokens: {len(train)} training block(s) of {block}; a dataset needs "
                        "at least 2: pass a smaller --block or a longer text")
    raw = text.encode("utf-8") if isinstance(text, str) else text

    def text_tokens(rows: np.ndarray) -> int:  # tokens of text, padding left out
        return int(rows.size - (0 if spec["pad_id"] is None else (rows == spec["pad_id"]).sum()))

    manifest = {
        "format_version": FORMAT_VERSION, "kind": TextModality.kind, "shape": [block], "dtype": "int32",
        "count": {"train": int(len(train)), "test": int(len(test))},
        "num_classes": len(names) if names else None, "class_names": names,
        **spec, "corpus": str(source) if builtin else None,
        "tokens": {"train": text_tokens(train), "test": text_tokens(test),
                   "dropped": tokens_total - text_tokens(train) - text_tokens(test)},
        "split": {"test_fraction": test_fraction,
                  "by": "document: a seeded shuffle" if names else "position: the end of the text is held out"},
        "source": {"path": str(source), "kind": "builtin" if builtin else "file", "sha256": hashlib.sha256(raw).hexdigest(),
                   "characters" if isinstance(text, str) else "bytes": len(text)},
        "provenance": BUILTIN_TEXT.get(str(source)) if builtin else None,
        "rejected": rejected,
        "options": {"tokenizer": tokenizer, "block": block, "field": field, "label_field": label_field, "limit": limit,
                    "test_fraction": test_fraction, "seed": seed},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "difftrain_version": difftrain.__version__,
    }
    arrays = {"train_tokens": train.astype(np.int32), "test_tokens": test.astype(np.int32)}
    if names:
        arrays |= {"train_labels": train_labels, "test_labels": test_labels}
    write_prepared(out, arrays, manifest, overwrite)
    return load_dataset(out)
