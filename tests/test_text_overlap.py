"""Memorization measures of generated text (modalities/text_overlap.py), checked against answers known by construction
and against a brute-force longest common substring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from difftrain.modalities.text_overlap import TrainingText


def brute_longest(training: np.ndarray, sample: np.ndarray) -> int:
    """The longest common substring of `sample` and any training row, by the O(n^2) dynamic programme."""
    best = 0
    for row in np.atleast_2d(training).tolist():
        previous = [0] * (len(sample) + 1)
        for token in row:
            current = [0] * (len(sample) + 1)
            for j, s in enumerate(sample.tolist()):
                if token == s:
                    current[j + 1] = previous[j] + 1
                    best = max(best, current[j + 1])
            previous = current
    return best


def test_planted_slice_is_found_exactly_and_foreign_tokens_score_zero():
    rng = np.random.default_rng(0)
    training = rng.integers(0, 50, 5000).astype(np.int32)
    # Everything around the slice comes from ids 50..99, which training never uses, so no match can extend it.
    planted = rng.integers(50, 100, 100).astype(np.int32)
    planted[20:57] = training[1000:1037]
    foreign = rng.integers(50, 100, 100).astype(np.int32)
    assert TrainingText(training).longest_overlap(np.stack([planted, foreign])).tolist() == [37, 0]


def test_a_match_does_not_span_two_training_blocks():
    blocks = np.arange(80, dtype=np.int32).reshape(2, 40)  # every token unique, so matches are known exactly
    sample = np.concatenate([blocks[0, -10:], blocks[1, :15]])[None]  # the end of block 0, then the start of block 1
    assert TrainingText(blocks).longest_overlap(sample).tolist() == [15]  # the longer part, not 10 + 15
    assert TrainingText(blocks.ravel()).longest_overlap(sample).tolist() == [25]  # as one stream it is one run


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(60,), (3, 20)])
def test_longest_overlap_matches_brute_force(seed, shape):
    rng = np.random.default_rng(seed)
    training = rng.integers(0, 3, shape).astype(np.int32)
    samples = rng.integers(0, 3, (8, 15)).astype(np.int32)
    samples[0] = np.resize(np.atleast_2d(training)[0], 15)  # one long copy, so long overlaps are exercised too
    expected = [brute_longest(training, s) for s in samples]
    index = TrainingText(training)
    assert index.longest_overlap(samples).tolist() == expected
    assert index.longest_overlap(samples).tolist() == expected  # again, from the cached training hashes


def test_ngram_overlap_known_shares():
    rng = np.random.default_rng(1)
    training = rng.integers(0, 50, 2000).astype(np.int32)
    copied = np.stack([training[i:i + 32] for i in (0, 500, 1500)])
    foreign = rng.integers(50, 100, (3, 32)).astype(np.int32)
    index = TrainingText(training)
    assert index.ngram_overlap(copied, 4) == 1.0
    assert index.ngram_overlap(foreign, 4) == 0.0
    assert index.ngram_overlap(np.concatenate([copied, foreign]), 4) == 0.5  # pooled over samples
    assert math.isnan(index.ngram_overlap(copied[:, :3], 4))  # shorter than n: no n-grams at all


def test_ngram_overlap_counts_with_multiplicity_and_respects_blocks():
    index = TrainingText(np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int32))
    # Bigrams (0,1) (0,1) (0,1) occur; (1,0) (1,0) do not; (2,3) would only occur across the block boundary.
    assert index.ngram_overlap(np.array([[0, 1, 0, 1, 0, 1]]), 2) == 0.6
    assert index.ngram_overlap(np.array([[2, 3]]), 2) == 0.0
    assert math.isnan(index.ngram_overlap(np.array([[0, 1]]), 4))  # longer than any block, and than the samples
    assert index.ngram_overlap(np.array([[0, 1, 2, 5]]), 4) == 0.0  # longer than any block
