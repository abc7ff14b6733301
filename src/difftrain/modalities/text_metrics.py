"""Sample metrics of generated text, each scored next to real text (the suite's floor): repetition (distinct n-grams,
the unigram entropy) and, for the built-in sums, whether the generated lines are right."""

from __future__ import annotations

import re

import numpy as np


def distinct_ngrams(tokens: np.ndarray, n: int) -> float:
    """Distinct n-grams over all n-grams of the sequences (Li et al. 2016's distinct-n): low when samples repeat."""
    grams = [tuple(row[i:i + n]) for row in tokens.tolist() for i in range(len(row) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy in bits of the token frequencies over all sequences: a model that repeats a few tokens scores low."""
    counts = np.bincount(tokens.ravel())
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


SUM_LINE = re.compile(r"(\d+)\+(\d+)=(\d+)")


def sums_correct(texts: list[str]) -> float:
    """Of the complete lines (between two line breaks) of the form a+b=c, the share where a + b is c; NaN when none."""
    lines = [line for text in texts for line in text.split("\n")[1:-1]]
    found = [SUM_LINE.fullmatch(line) for line in lines]
    sums = [m for m in found if m]
    if not sums:
        return float("nan")
    return sum(int(m[1]) + int(m[2]) == int(m[3]) for m in sums) / len(sums)


def well_formed_sums(texts: list[str]) -> float:
    """Share of the complete lines that have the form a+b=c at all."""
    lines = [line for text in texts for line in text.split("\n")[1:-1]]
    return sum(bool(SUM_LINE.fullmatch(line)) for line in lines) / len(lines) if lines else float("nan")
