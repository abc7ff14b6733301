"""Memorization of generated text: how much of a sample was copied verbatim from the training text.

Two measures over token id sequences, for the text modality's evaluation and the synthetic-dataset privacy report:
- the longest verbatim overlap: the longest contiguous run of tokens in a sample that also occurs in the training
  text (the longest common substring). A model that memorized reproduces long runs; one that generalizes only
  short, common ones, so this one number flags copying that averages would hide;
- the n-gram overlap: the share of the samples' n-grams that occur in the training text, i.e. how much of the
  output, overall, is recombined training text.

Both compare rolling polynomial hashes of m-grams (uint64, wrapping arithmetic) against a sorted array of the
training m-gram hashes, so a 1M-token training text is one sort per m rather than a substring search per sample.
Two different m-grams collide with probability 2^-64, so any false match among the k m-grams compared is about
k^2 / 2^64 likely: negligible for natural text (inputs crafted against mod-2^64 hashing, such as Thue-Morse
strings, can collide; training text is not crafted against a hash chosen here).
"""

from __future__ import annotations

import numpy as np

_MOD = 1 << 64
_BASE = 0x9E3779B97F4A7C15  # large and odd, so invertible mod 2^64: the prefix below needs its inverse
_INV = pow(_BASE, -1, _MOD)
_MAX_CACHED = 16  # sorted training hash arrays kept between calls (8 bytes per training token each)


def _powers(base: int, count: int) -> np.ndarray:
    """base^0 .. base^count mod 2^64 (uint64 products wrap, which is the arithmetic mod 2^64)."""
    out = np.full(count + 1, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


def _prefix(tokens: np.ndarray) -> np.ndarray:
    """(R, L) token ids -> (R, L+1) prefix hashes H with H[:, i] = sum_{j<i} v_j B^(i-j), v = id + 1 (so id 0 counts).

    Built in one cumulative sum (H[i] = B^i * sum_{j<i} v_j B^-j) rather than a Python loop over a 1M-token stream;
    each row starts from 0, so no m-gram spans two rows.
    """
    values = tokens.astype(np.uint64) + np.uint64(1)
    length = values.shape[1]
    prefix = np.zeros((values.shape[0], length + 1), dtype=np.uint64)
    sums = np.cumsum(values * _powers(_INV, length)[:length], axis=1, dtype=np.uint64)
    prefix[:, 1:] = sums * _powers(_BASE, length)[1:]
    return prefix


def _windows(prefix: np.ndarray, m: int) -> np.ndarray:
    """(R, L+1) prefix hashes -> (R, L-m+1) hashes of every m-gram: H[i+m] - H[i] * B^m depends only on its tokens."""
    return prefix[:, m:] - prefix[:, :prefix.shape[1] - m] * np.uint64(pow(_BASE, m, _MOD))


def _member(table: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Whether each query hash is in the sorted array `table`."""
    if table.size == 0:
        return np.zeros(queries.shape, dtype=bool)
    at = np.minimum(np.searchsorted(table, queries), table.size - 1)
    return table[at] == queries


class TrainingText:
    """The training token stream, indexed for verbatim-overlap queries.

    `tokens` is 1-D (the corpus as one stream) or 2-D (N, L) blocks, which are separate sequences: a match never
    spans two blocks, since their concatenation is not text the model was trained on.
    """

    def __init__(self, tokens: np.ndarray):
        tokens = np.asarray(tokens)
        if tokens.ndim not in (1, 2):
            raise ValueError(f"training tokens must be 1-D or 2-D, got shape {tokens.shape}")
        self._prefix = _prefix(tokens.reshape(1, -1) if tokens.ndim == 1 else tokens)
        self._grams: dict[int, np.ndarray] = {}  # m -> sorted hashes of all training m-grams

    @property
    def max_length(self) -> int:
        """The longest possible overlap: the length of the longest training sequence."""
        return self._prefix.shape[1] - 1

    def _sorted_grams(self, m: int) -> np.ndarray:
        if m not in self._grams:
            if len(self._grams) >= _MAX_CACHED:  # bounded: each array is as large as the training text
                del self._grams[next(iter(self._grams))]
            grams = _windows(self._prefix, m) if m <= self.max_length else np.empty(0, dtype=np.uint64)
            self._grams[m] = np.sort(grams, axis=None)
        return self._grams[m]

    def longest_overlap(self, samples: np.ndarray) -> np.ndarray:
        """(M, L) samples -> (M,) int64: the length of each sample's longest run of tokens that occurs verbatim in the
        training text; 0 if not even one token does.

        A run of length m in the training text implies runs of every shorter length, so the answer is found by binary
        search on m. All samples search together: each round groups them by the m they test, so one sorted array of
        training m-grams serves the whole group (and each m is built at most once per call).
        """
        prefix = _prefix(_as_samples(samples))
        count = prefix.shape[0]
        lo = np.zeros(count, dtype=np.int64)  # longest length known to occur (0 always does)
        hi = np.full(count, min(prefix.shape[1] - 1, self.max_length), dtype=np.int64)  # longest still possible
        while (active := lo < hi).any():
            mid = (lo + hi + 1) // 2
            for m in np.unique(mid[active]):
                rows = np.flatnonzero(active & (mid == m))
                found = _member(self._sorted_grams(int(m)), _windows(prefix[rows], int(m))).any(axis=1)
                lo[rows[found]] = m
                hi[rows[~found]] = m - 1
        return lo

    def ngram_overlap(self, samples: np.ndarray, n: int) -> float:
        """The share of all n-grams of the samples (with multiplicity, pooled over samples) that occur in the training
        text; NaN if the samples have no n-grams (length < n)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        prefix = _prefix(_as_samples(samples))
        if prefix.shape[0] == 0 or prefix.shape[1] - 1 < n:
            return float("nan")
        return float(_member(self._sorted_grams(n), _windows(prefix, n)).mean())


def _as_samples(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 2:
        raise ValueError(f"samples must be 2-D (M, L), got shape {samples.shape}")
    return samples
