"""A fastText-style classifier of token-id blocks: CAS and the utility report of synthetic text.

Joulin et al. 2017 ("Bag of Tricks for Efficient Text Classification"): the mean of hashed n-gram embeddings, then a
linear layer. It is a strong baseline for short-text classification, within a few points of far larger networks on
topic and sentiment tasks, and it trains in seconds on a CPU, so CAS and train-on-real/synthetic/both can run every
seed of every arm without a GPU. Order enters only through the n-grams (n = 1..3 by default): a bag of single tokens
cannot tell "ab" from "ba", its bigrams can.

N-grams are hashed with fixed 64-bit integer arithmetic in numpy, never Python's `hash()` (salted per process), so a
seed gives the same classifier in every run and process. Pad tokens are dropped: an n-gram that holds one is not in
the bag, so padding a block changes nothing, and a block of only pads gets the bias alone (a prior-like output).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from difftrain.errors import UserError
from difftrain.evaluation.arms import step_budget
from difftrain.modalities.base import Classifier

# FNV-1a's 64-bit offset and prime, applied to whole token ids, then splitmix64's finalizer: FNV alone leaves the low
# bits (which `% buckets` keeps) depending only on the tokens' low bits.
_OFFSET = np.uint64(0xCBF29CE484222325)
_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_BATCH = 1024  # blocks per forward pass when scoring


def hash_ngrams(tokens: np.ndarray, *, ngrams: int, buckets: int, pad_id: int | None) -> np.ndarray:
    """(N, G) int64 bucket ids of every 1..`ngrams`-gram of each (N, L) block, in 0..buckets-1; an n-gram that holds
    `pad_id` gets `buckets`, a mark that `bags` leaves out of the mean."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    words = tokens.view(np.uint64)  # negative ids wrap: every int64 hashes
    length = tokens.shape[1]
    parts = []
    for n in range(1, ngrams + 1):
        width = length - n + 1
        if width <= 0:
            continue
        h = np.full((len(tokens), width), _OFFSET ^ np.uint64(n), np.uint64)  # n in the seed: (5,) and (5, 5) differ
        keep = np.ones((len(tokens), width), bool)
        for k in range(n):
            h ^= words[:, k:k + width]
            h *= _PRIME  # wraps modulo 2**64, as intended
            if pad_id is not None:
                keep &= tokens[:, k:k + width] != pad_id
        h ^= h >> np.uint64(30)
        h *= _MIX1
        h ^= h >> np.uint64(27)
        h *= _MIX2
        h ^= h >> np.uint64(31)
        parts.append(np.where(keep, (h % np.uint64(buckets)).astype(np.int64), buckets))
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(tokens), 0), np.int64)  # L = 0: empty bags


class FastText(nn.Module):
    """Mean of hashed n-gram embeddings -> linear layer."""

    def __init__(self, buckets: int, width: int, num_classes: int):
        super().__init__()
        self.embedding = nn.EmbeddingBag(buckets, width, mode="mean")
        self.head = nn.Linear(width, num_classes)
        # fastText's initialisation: small embeddings, a zero output layer (every class equally likely at first).
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / width, 1.0 / width)
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """`ids`: every block's kept n-gram buckets, one after another; `offsets`: where each block's ids begin. An empty
        bag (a block of only pads) embeds as zeros, so it gets the bias alone."""
        return self.head(self.embedding(ids, offsets))


def bags(hashed: np.ndarray, buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """hash_ngrams' (N, G) ids -> EmbeddingBag's flat ids and offsets, the dropped n-grams left out. (A padding_idx
    would drop them too, but makes EmbeddingBag's forward several times slower on CPU.)"""
    keep = hashed != buckets
    offsets = np.zeros(len(hashed), np.int64)
    np.cumsum(keep.sum(1)[:-1], out=offsets[1:])
    return torch.from_numpy(hashed[keep]), torch.from_numpy(offsets)


class TextClassifier(Classifier):
    """A trained FastText and the hashing it was trained with (n-gram orders, buckets, pad id)."""

    def __init__(self, net: FastText, *, ngrams: int, pad_id: int | None):
        self.net = net.eval()
        self.ngrams = ngrams
        self.pad_id = pad_id
        self.buckets = net.embedding.num_embeddings
        self.num_classes = net.head.out_features

    def logits(self, data: np.ndarray) -> torch.Tensor:
        return self.net(*bags(hash_ngrams(data, ngrams=self.ngrams, buckets=self.buckets, pad_id=self.pad_id), self.buckets))

    @torch.no_grad()
    def probabilities(self, data: np.ndarray) -> np.ndarray:
        """(N, K) float64 softmax probabilities of (N, L) token-id blocks (any L)."""
        data = _check_tokens(data, "data")
        parts = [torch.softmax(self.logits(data[i:i + _BATCH]).double(), 1).numpy()  # float64: thresholds compare exactly
                 for i in range(0, len(data), _BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, self.num_classes))


def _check_tokens(data: np.ndarray, what: str) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.integer):
        raise UserError(f"{what} must be token ids, an integer array (N, L) of N blocks of L tokens; "
                        f"got {data.dtype} {data.shape}: tokenize the text first")
    return data


def fit_text_classifier(data: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int, epochs: int = 10,
                        steps: int | None = None, batch: int = 128, pad_id: int | None = None, buckets: int = 2**16,
                        width: int = 64, lr: float = 1e-2, ngrams: int = 3) -> TextClassifier:
    """Train a fastText-style classifier on (N, L) token-id blocks; the seed fixes everything.

    `steps` (optimizer steps of `batch` blocks, drawn with replacement) overrides `epochs`, so training sets of
    different sizes get the same compute. 2**16 buckets of width 64 are 16 MiB of embeddings: collisions cost little
    at the vocabularies of character and byte tokens.
    """
    data = _check_tokens(data, "the training data")
    labels = np.asarray(labels)
    if not len(data):
        raise UserError("the training data is empty: a classifier needs at least one labelled block")
    if labels.shape != (len(data),):
        raise UserError(f"labels must be one class per block, shape ({len(data)},); got {labels.shape}: "
                        "pass the labels of exactly these blocks")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be integer class ids 0..{num_classes - 1}; got {labels.dtype}: map class names to ids")
    if num_classes < 1 or labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must lie in 0..{num_classes - 1} for {num_classes} classes; got {labels.min()}..{labels.max()}: "
                        "fix the labels or num_classes")
    for name, value in (("epochs", epochs), ("batch", batch), ("buckets", buckets), ("width", width), ("ngrams", ngrams)):
        if value < 1:
            raise UserError(f"the text classifier's {name} must be at least 1, got {value}")
    if steps is not None and steps < 1:
        raise UserError(f"the text classifier's steps must be at least 1 (or None for epochs), got {steps}")
    if not lr > 0:
        raise UserError(f"the text classifier's lr must be positive, got {lr}")

    # A private RNG stream: evaluating during training must not move the trainer's random numbers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FastText(buckets, width, num_classes)
        # fused: one pass over the 4M embedding numbers per step, several times faster on CPU than foreach.
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4, fused=True)
        y_all = torch.from_numpy(labels.astype(np.int64))
        gen = torch.Generator().manual_seed(seed)
        steps = step_budget(len(data), epochs, batch) if steps is None else steps
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        net.train()
        for _ in range(steps):
            idx = torch.randint(len(data), (batch,), generator=gen)
            # Hashed per batch, not up front: memory stays one batch of bags however large the data.
            hashed = hash_ngrams(data[idx.numpy()], ngrams=ngrams, buckets=buckets, pad_id=pad_id)
            loss = nn.functional.cross_entropy(net(*bags(hashed, buckets)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return TextClassifier(net, ngrams=ngrams, pad_id=pad_id)
