"""Text <-> token ids for the text modality: characters, UTF-8 bytes, or byte-level BPE.

A tokenizer lives in the dataset's spec (and so in every run trained on it): the characters' list, nothing for bytes,
or the BPE's own JSON (Hugging Face `tokenizers`, trained here on the training text only). With padded documents
(labelled corpora: one document per block) one more id, `pad_id`, fills a block's end; decoding drops it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np

from difftrain.errors import UserError

KINDS = ("char", "byte", "bpe")
PAD = "<pad>"  # the BPE's padding token; characters pad with "" (which decodes to nothing), bytes with id 256
BPE_SPEC = re.compile(r"bpe:(\d+)")


def parse_kind(choice: str) -> tuple[str, int | None]:
    """'char' | 'byte' | 'bpe:N' (N tokens, 256 <= N) -> (kind, N)."""
    if choice in ("char", "byte"):
        return choice, None
    match = BPE_SPEC.fullmatch(choice)
    if choice == "bpe" or (match and int(match[1]) < 260):
        raise UserError(f"--tokenizer {choice}: a BPE names its vocabulary size, at least 260 (the 256 bytes and some "
                        "merges), e.g. --tokenizer bpe:8192")
    if not match:
        raise UserError(f"--tokenizer {choice!r}: choose char, byte or bpe:N (a byte-level BPE of N tokens trained on "
                        "your text)")
    return "bpe", int(match[1])


def chunks(text: str, size: int = 1 << 16) -> Iterable[str]:
    """The text in pieces of about `size` characters cut after line breaks (BPE never merges across a piece)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


class TextTokenizer:
    """encode/decode of one spec: {"tokenizer": kind, "vocab": characters | None, "bpe": JSON | None, "pad_id"}."""

    def __init__(self, spec: dict[str, Any]):
        self.kind = spec["tokenizer"]
        self.vocab: list[str] | None = spec.get("vocab")
        self.pad_id: int | None = spec.get("pad_id")
        self._bpe = None
        if self.kind == "bpe":
            from tokenizers import Tokenizer

            self._bpe = Tokenizer.from_str(spec["bpe"])
        self._index = {c: i for i, c in enumerate(self.vocab)} if self.vocab is not None else None

    @property
    def vocab_size(self) -> int:
        if self._bpe is not None:
            return self._bpe.get_vocab_size()
        if self.vocab is not None:
            return len(self.vocab)
        return 256 + (self.pad_id is not None)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of the text; a character this vocabulary lacks is refused, naming it."""
        if self._bpe is not None:
            return np.asarray([i for piece in self._bpe.encode_batch(list(chunks(text))) for i in piece.ids], np.int32)
        if self._index is None:
            return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
        unknown = sorted(set(text) - set(self._index))
        if unknown:
            raise UserError(f"the text holds {', '.join(map(repr, unknown[:10]))}, which this model's training text never "
                            "had: leave those characters out")
        return np.fromiter((self._index[c] for c in text), np.int32, len(text))

    def decode(self, tokens: np.ndarray) -> str:
        """One block of ids as text, padding dropped (bytes that are not UTF-8 become U+FFFD)."""
        ids = [int(i) for i in tokens if int(i) != self.pad_id]
        if self._bpe is not None:
            return self._bpe.decode(ids, skip_special_tokens=True)
        if self.vocab is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.vocab[i] for i in ids)


def build_tokenizer(choice: str, train_text: str, all_text: str, *, pad: bool) -> dict[str, Any]:
    """The spec fields of a tokenizer fitted to the text: characters of the whole text (held-out text must encode), a
    BPE trained on the training part only (its merges would otherwise see the held-out text)."""
    kind, size = parse_kind(choice)
    if kind == "byte":
        return {"tokenizer": "byte", "vocab": None, "bpe": None, "pad_id": 256 if pad else None}
    if kind == "char":
        vocab = sorted(set(all_text)) + ([""] if pad else [])
        return {"tokenizer": "char", "vocab": vocab, "bpe": None, "pad_id": len(vocab) - 1 if pad else None}
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=[PAD] if pad else [], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(chunks(train_text), trainer)
    return {"tokenizer": "bpe", "vocab": None, "bpe": bpe.to_str(), "pad_id": bpe.token_to_id(PAD) if pad else None}
