"""The text modality: blocks of L tokens (int32 (L,)), characters or UTF-8 bytes, learnt by masked (absorbing-state)
discrete diffusion (diffusion/masked.py) with a bidirectional token transformer. Samples are token ids; `decode`
turns them into text, and files a user opens (previews, synthetic datasets) hold the text itself.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from difftrain import atomic
from difftrain.diffusion.masked import MaskedDenoiser, MaskedDiffusion
from difftrain.errors import UserError
from difftrain.modalities.base import Classifier, Dequantized, FeatureExtractor, Modality, load_array
from difftrain.modalities.text_tokenizer import TextTokenizer

CHECK_ROWS = 1 << 14  # blocks checked at once when a dataset is opened
OVERLAP_N = 16  # tokens of the n-grams whose share found in the training text measures copying
MASK_RUN = re.compile(r"\[MASK\](?:\{(\d+)\})?")  # [MASK] or [MASK]{k} in an --infill template


class TextModality(Modality):
    """spec: {"kind": "text", "shape": [L], "tokenizer": "char" | "byte" | "bpe", "vocab": [characters] (None for bytes
    and BPE), "bpe": the BPE's JSON (None otherwise), "pad_id": the id that pads a document's last block (None for a
    plain corpus), "corpus": the built-in corpus's name (None for a file), whose own checks the evaluation adds}."""

    kind = "text"
    hub_pipeline_tag = "text-generation"
    prepare_options = frozenset({"tokenizer", "block", "field", "label_field"})
    default_arch = "token_transformer"
    samples_key = "tokens"
    item = "sequence"
    distance_name = "Hamming distance between token blocks (positions that differ)"
    spec_keys = ("kind", "shape", "tokenizer", "vocab", "bpe", "pad_id", "corpus")
    builtin_test_fraction = 0.1  # the end of the text held out, as for Tiny Shakespeare's 90/10
    synth_what = "texts"
    classifier_name = "n-gram text classifier (fastText-style)"
    synth_globs = ("texts/batch-*.jsonl",)
    synth_labels_csv = False
    table_suffixes = (".jsonl",)

    @classmethod
    def builtins(cls) -> dict[str, str]:
        from difftrain.modalities.text_prepare import BUILTIN_TEXT

        return dict(BUILTIN_TEXT)

    @classmethod
    def prepare(cls, source: str | Path, out: str | Path, **options: Any):
        from difftrain.modalities.text_prepare import prepare_text

        return prepare_text(source, out, **options)

    @cached_property
    def tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.spec)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int | None:
        return self.spec.get("pad_id")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int32)

    def load_split(self, folder: Path, split: str, count: int, broken: Callable[[str], UserError]) -> np.ndarray:
        # Memory-mapped: a corpus larger than memory trains from disk (data/loader.py reads each batch's rows).
        tokens = load_array(folder, f"{split}_tokens.npy", broken, mmap=True)
        expected = (count, *self.shape)
        if tokens.dtype != np.int32 or tokens.shape != expected:
            raise broken(f"{split}_tokens.npy holds {tokens.dtype} {tokens.shape}; the manifest says int32 {expected}")
        for start in range(0, len(tokens), CHECK_ROWS):  # checked a slice at a time, in bounded memory
            part = np.asarray(tokens[start:start + CHECK_ROWS])
            if part.size and (part.min() < 0 or part.max() >= self.vocab_size):
                raise broken(f"{split}_tokens.npy holds ids outside the vocabulary of {self.vocab_size} tokens")
        return tokens

    def same_data(self, other: Modality) -> bool:
        return super().same_data(other) and all(self.spec.get(k) == other.spec.get(k) for k in ("tokenizer", "vocab", "bpe", "pad_id"))

    def spec_summary(self) -> str:
        return f"of {self.shape[0]} {self.spec['tokenizer']} tokens ({self.vocab_size} in the vocabulary)"

    def describe(self) -> dict[str, Any]:
        return {"block": self.shape[0], "tokenizer": self.spec["tokenizer"], "vocabulary": self.vocab_size,
                **({"padded": "one document per block, padded"} if self.pad_id is not None else {})}

    def decode(self, tokens: np.ndarray) -> str:
        """One block of token ids as text (padding dropped; bytes that are not UTF-8 become U+FFFD)."""
        return self.tokenizer.decode(tokens)

    def encode(self, text: str) -> np.ndarray:
        """Text as token ids; a character outside the vocabulary is refused, naming it."""
        return self.tokenizer.encode(text)

    def given(self, prompt: str | None, infill: str | None) -> np.ndarray:
        """A block of token ids, -1 where to generate: `prompt` first, then the `infill` template, whose [MASK] is one
        token to generate and [MASK]{k} k of them; the block's remaining positions are generated too."""
        parts: list[np.ndarray] = [] if prompt is None else [self.encode(prompt)]
        for i, piece in enumerate(MASK_RUN.split(infill or "")):
            if i % 2:  # a [MASK] run's count ('' for one)
                parts.append(np.full(int(piece or 1), -1, np.int32))
            elif piece:
                parts.append(self.encode(piece))
        given = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        if len(given) > self.shape[0]:
            raise UserError(f"--prompt and --infill make {len(given)} tokens; this model's blocks hold {self.shape[0]}: "
                            "shorten them")
        return np.concatenate([given, np.full(self.shape[0] - len(given), -1, np.int32)])

    # -- model tensors: token ids as they are; the formulation is the masked one
    @property
    def model_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def network_options(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}

    def denoiser(self, net: torch.nn.Module, formulation, *, softmax_categories: bool = False) -> MaskedDenoiser:
        return MaskedDenoiser(net, MaskedDiffusion(self.vocab_size))

    def to_model(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.long()

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy().astype(np.int32)

    def default_sigma_data(self, train: np.ndarray) -> float:
        return 1.0  # (a Gaussian noise scale; masked diffusion has none)

    # -- outputs
    def save_preview(self, data: np.ndarray, path: Path, *, labels: np.ndarray | None = None,
                     class_names: list[str] | None = None, reference: np.ndarray | None = None) -> Path:
        texts = [self.decode(t) for t in data[:8]]
        if labels is not None and class_names:
            texts = [f"[{class_names[int(k)]}] {t}" for t, k in zip(texts, labels)]
        return save_text_image(texts, path)

    def save_pairs(self, left: np.ndarray, right: np.ndarray, path: Path) -> Path:
        return save_text_image([f"{self.decode(a)}\n  ~ {self.decode(b)}" for a, b in zip(left[:8], right[:8])], path)

    def write_table(self, path: Path, samples: np.ndarray, labels: np.ndarray | None) -> Path:
        """Samples as JSON lines {"text", "tokens"} (and "label": the class index, when conditional)."""
        atomic.write_text(path, "".join(json.dumps({"text": self.decode(t), "tokens": t.tolist(),
                                                    **({"label": int(labels[i])} if labels is not None else {})},
                                                   ensure_ascii=False) + "\n" for i, t in enumerate(samples)))
        return path

    def synth_write(self, out: Path, batch: int, items: np.ndarray, names: list[tuple[str | None, int]]) -> list[dict[str, Any]]:
        file = f"texts/batch-{batch:06d}.jsonl"
        lines = [json.dumps({"text": self.decode(t), "tokens": t.tolist(), **({"label": c} if c is not None else {})},
                            ensure_ascii=False) for t, (c, _) in zip(items, names)]
        if lines:
            atomic.write_text(out / file, "\n".join(lines) + "\n")
        return [{"file": file, "line": i} for i in range(len(items))]

    def synth_read(self, out: Path, entries: list[dict[str, Any]]) -> np.ndarray:
        files: dict[str, list[list[int]]] = {}
        rows = []
        for entry in entries:
            if entry["file"] not in files:
                try:
                    files[entry["file"]] = [json.loads(line)["tokens"] for line in (out / entry["file"]).read_text("utf-8").splitlines()]
                except (OSError, ValueError, KeyError) as e:
                    raise UserError(f"cannot read {out / entry['file']} ({e}), written by an earlier `difftrain synth`: "
                                    "pass --overwrite to start again") from None
            lines = files[entry["file"]]
            if entry["line"] >= len(lines) or len(lines[entry["line"]]) != self.shape[0]:
                raise UserError(f"{out / entry['file']} lacks sequence {entry['line']}: pass --overwrite to start {out} again")
            rows.append(lines[entry["line"]])
        return np.asarray(rows, np.int32).reshape(-1, *self.shape)

    def distances(self, a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> Iterator[tuple[slice, torch.Tensor]]:
        """Hamming distances (positions that differ) between blocks, compared as ids: no one-hot view, whose size
        grows with the vocabulary. Rows of a go a few at a time, so memory stays near 16M comparisons."""
        b_ids = torch.as_tensor(np.asarray(b))
        step = max(1, min(chunk, (1 << 24) // max(1, b_ids.numel())))
        for start in range(0, len(a), step):
            rows = slice(start, min(start + step, len(a)))
            a_ids = torch.as_tensor(np.asarray(a[rows]))
            yield rows, (a_ids[:, None, :] != b_ids[None]).sum(-1).double()

    def judge(self, dataset, *, network=None, steps: int = 1000, say: Callable[[str], None] | None = None
              ) -> tuple[Callable[[np.ndarray], float], dict[str, Any]]:
        """Perplexity under the autoregressive judge (modalities/text_judge.py) of `network`'s size (a model config;
        None: the default token transformer), trained without the floor pool, so the floor is text it never saw."""
        from difftrain.config import TokenTransformerConfig
        from difftrain.evaluation.reference import floor_pool
        from difftrain.modalities.text_judge import load_or_fit_judge, perplexity

        cfg = network.token_transformer if network is not None else TokenTransformerConfig()
        learn = np.setdiff1d(np.arange(len(dataset.train_data)), floor_pool(dataset))
        model, meta = load_or_fit_judge(dataset, cfg, steps=steps, train_index=learn, say=say)
        return (lambda s: perplexity(model, s, self.pad_id)), meta

    def copy_metrics(self, train: np.ndarray) -> dict[str, Callable[[np.ndarray], float]]:
        """Verbatim copying: the mean (and the max) over samples of the longest run of tokens found in the training
        text, and the share of the samples' n-grams found there (n = OVERLAP_N tokens, or the block when shorter). Padding never matches."""
        from difftrain.modalities.text_overlap import TrainingText

        unpadded = (lambda x, fill: np.asarray(x, np.int64) if self.pad_id is None
                    else np.where(np.asarray(x) == self.pad_id, fill, np.asarray(x, np.int64)))
        index = TrainingText(unpadded(train, -2))  # training padding and sample padding differ: neither matches
        return {"longest_overlap": lambda s: float(index.longest_overlap(unpadded(s, -1)).mean()),
                "longest_overlap_max": lambda s: float(index.longest_overlap(unpadded(s, -1)).max()),
                "ngram_overlap": lambda s: index.ngram_overlap(unpadded(s, -1), min(OVERLAP_N, self.shape[0]))}

    def extra_metrics(self, samples: np.ndarray, reference: np.ndarray, seed: int) -> dict[str, Callable[[np.ndarray], float]]:
        from difftrain.modalities import text_metrics as tm

        metrics = {"distinct_2": lambda s: tm.distinct_ngrams(s, 2), "distinct_4": lambda s: tm.distinct_ngrams(s, 4),
                   "unigram_entropy": tm.unigram_entropy}
        if self.spec.get("corpus") == "sums":
            metrics["sums_well_formed"] = lambda s: tm.well_formed_sums([self.decode(t) for t in s])
            metrics["sums_correct"] = lambda s: tm.sums_correct([self.decode(t) for t in s])
        return metrics

    # -- evaluation: the bound is the masked formulation's (diffusion/masked.py); sample metrics for text come later
    def feature_extractor(self, dataset, choice: str, *, inception_weights: str | None, classifier_epochs: int,
                          device: str | torch.device) -> FeatureExtractor:
        raise UserError("FID-style metrics need a feature space; text has none in difftrain yet: leave fid, kid and pr "
                        "out of eval.metrics for text runs")

    def domain_classifier(self, dataset, epochs: int) -> tuple[Classifier, dict[str, Any]]:
        model = self.fit_classifier(dataset.train_data, dataset.train_labels, dataset.num_classes, epochs=epochs, seed=0)
        return model, {"name": "difftrain-text-ngram", "weights_sha256": None,
                       "test_accuracy": model.accuracy(dataset.test_data, dataset.test_labels)}

    def fit_classifier(self, data: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int, seed: int,
                       steps: int | None = None, batch: int = 128) -> Classifier:
        from difftrain.modalities.text_classifier import fit_text_classifier

        return fit_text_classifier(data, labels, num_classes, seed=seed, epochs=epochs, steps=steps, batch=batch,
                                   pad_id=self.pad_id)

    def dequantize(self, batch: torch.Tensor, generator: torch.Generator) -> Dequantized:
        raise UserError("nll integrates a Gaussian probability flow; a text model's likelihood is its masked-diffusion "
                        "bound (difftrain.diffusion.masked.negative_elbo): leave nll out of eval.metrics")


def save_text_image(texts: list[str], path: Path, width: int = 100) -> Path:
    """A PNG of texts, one paragraph each, wrapped at `width` characters, in Pillow's built-in font."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    lines: list[str] = []
    for i, text in enumerate(texts):
        lines.append(f"-- {i + 1} " + "-" * (width - 6))  # where one text ends and the next begins (texts hold blank lines)
        for part in text.splitlines() or [""]:
            lines += textwrap.wrap(part, width) or [""]
    step = 14
    image = Image.new("RGB", (8 + 7 * width, 8 + step * max(1, len(lines))), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * step), line, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, _png(image))
    return path


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
