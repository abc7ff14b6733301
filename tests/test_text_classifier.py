"""The fastText-style text classifier (modalities/text_classifier.py): it learns word order through its n-grams,
a seed fixes it, pad tokens are not part of any block, and bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

from difftrain.errors import UserError
from difftrain.modalities.text_classifier import fit_text_classifier, hash_ngrams

PAD = 20  # outside the task's vocabulary of 20 tokens


def order_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of 32 random tokens (vocabulary 20) holding the bigram (5, 7) in class 0 and (7, 5) in class 1: every
    other token avoids 5 and 7, so both classes have the same unigram counts and only word order tells them apart."""
    rng = np.random.default_rng(seed)
    others = np.array([t for t in range(20) if t not in (5, 7)])
    blocks = others[rng.integers(0, len(others), (n, 32))]
    labels = rng.integers(0, 2, n)
    at = rng.integers(0, 31, n)
    rows = np.arange(n)
    blocks[rows, at] = np.where(labels == 0, 5, 7)
    blocks[rows, at + 1] = np.where(labels == 0, 7, 5)
    return blocks.astype(np.int32), labels


@pytest.fixture(scope="module")
def task():
    return order_task(2000, seed=0), order_task(2000, seed=1)


@pytest.fixture(scope="module")
def trained(task):
    (x, y), _ = task
    return fit_text_classifier(x, y, 2, seed=0, pad_id=PAD)


def test_bigrams_learn_word_order_that_unigrams_cannot(task, trained):
    (x, y), (x_test, y_test) = task
    assert trained.accuracy(x_test, y_test) >= 0.95
    unigrams = fit_text_classifier(x, y, 2, seed=0, ngrams=1)
    assert abs(unigrams.accuracy(x_test, y_test) - 0.5) < 0.05  # the same bag of words in both classes: chance


def test_same_seed_same_classifier(task, trained):
    (x, y), (x_test, _) = task
    p = trained.probabilities(x_test)
    assert p.shape == (len(x_test), 2) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    assert np.array_equal(fit_text_classifier(x, y, 2, seed=0, pad_id=PAD).probabilities(x_test), p)
    assert not np.array_equal(fit_text_classifier(x, y, 2, seed=1, pad_id=PAD).probabilities(x_test), p)


def test_steps_override_epochs(task):
    (x, y), (x_test, _) = task
    one_step = fit_text_classifier(x, y, 2, seed=0, epochs=10, steps=1).probabilities(x_test)
    assert not np.array_equal(one_step, fit_text_classifier(x, y, 2, seed=0, epochs=10).probabilities(x_test))
    assert np.array_equal(one_step, fit_text_classifier(x, y, 2, seed=0, epochs=3, steps=1).probabilities(x_test))


def reference_hash(gram: tuple[int, ...], buckets: int) -> int:
    """The documented hash in Python integers: FNV-1a over whole token ids (n in the seed), splitmix64's finalizer."""
    mask = 2**64 - 1
    h = 0xCBF29CE484222325 ^ len(gram)
    for t in gram:
        h = ((h ^ (t & mask)) * 0x100000001B3) & mask
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & mask
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & mask
    return (h ^ (h >> 31)) % buckets


def test_hashing_is_fixed_arithmetic():
    """The same buckets in every process (no salted hash()): pinned values, orders hashed apart, pads dropped."""
    h = hash_ngrams(np.array([[5, 7, 5]]), ngrams=2, buckets=2**16, pad_id=None)
    assert h.shape == (1, 5)  # three unigrams, two bigrams
    assert h[0, 0] == h[0, 2] and h[0, 3] != h[0, 4]  # 5 and 5 alike; (5, 7) and (7, 5) apart
    assert h.tolist() == hash_ngrams(np.array([[5, 7, 5]], np.int16), ngrams=2, buckets=2**16, pad_id=None).tolist()
    assert h.tolist() == [[11048, 35217, 11048, 8842, 39770]]
    assert h.tolist()[0] == [reference_hash(g, 2**16) for g in [(5,), (7,), (5,), (5, 7), (7, 5)]]
    padded = hash_ngrams(np.array([[5, 7, PAD]]), ngrams=3, buckets=2**16, pad_id=PAD)
    assert (padded == 2**16).sum() == 3  # the pad, (7, pad) and (5, 7, pad)


def test_pad_tokens_are_ignored(task, trained):
    _, (x_test, _) = task
    p = trained.probabilities(x_test)
    padded = np.concatenate([x_test, np.full((len(x_test), 17), PAD, np.int32)], axis=1)
    np.testing.assert_allclose(trained.probabilities(padded), p, rtol=0, atol=1e-12)
    assert np.array_equal(trained.predict(padded), trained.predict(x_test))
    # Without a pad id the same tokens are words: the test above can fail.
    (x, y), _ = task
    no_pad = fit_text_classifier(x, y, 2, seed=0)
    assert not np.allclose(no_pad.probabilities(padded), no_pad.probabilities(x_test), rtol=0, atol=1e-6)


def test_a_block_of_only_pads_gets_the_prior(task):
    (x, y), _ = task
    skewed = np.concatenate([np.zeros(150, np.int64), np.ones(50, np.int64)])  # a 3:1 class mix
    x = np.concatenate([x[:200], np.full((50, 32), PAD, np.int32)])
    y = np.concatenate([skewed, np.zeros(50, np.int64)])
    model = fit_text_classifier(x, y, 3, seed=0, pad_id=PAD)
    p = model.probabilities(np.full((4, 32), PAD, np.int32))
    assert np.isfinite(p).all() and np.allclose(p, p[0])  # the bias alone, the same for every such block
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    assert p[0, 0] > p[0, 1] > p[0, 2]  # class 2 never seen, class 0 most often
    assert model.probabilities(np.zeros((0, 32), np.int32)).shape == (0, 3)


@pytest.mark.parametrize("labels, problem", [
    (np.array([0, 1, 2]), "0..1"),  # a label past num_classes
    (np.array([0, -1, 1]), "0..1"),
    (np.array([0, 1]), "shape (3,)"),  # one label short
    (np.array([0.0, 1.0, 1.0]), "integer class ids"),
])
def test_bad_labels_are_refused(labels, problem):
    with pytest.raises(UserError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        fit_text_classifier(np.zeros((3, 8), np.int32), labels, 2, seed=0, steps=1)


def test_bad_data_is_refused():
    with pytest.raises(UserError, match="empty"):
        fit_text_classifier(np.zeros((0, 8), np.int32), np.zeros(0, np.int64), 2, seed=0)
    with pytest.raises(UserError, match="integer array"):
        fit_text_classifier(np.zeros((3, 8), np.float32), np.zeros(3, np.int64), 2, seed=0)
    with pytest.raises(UserError, match="integer array"):
        fit_text_classifier(np.zeros(8, np.int32), np.zeros(8, np.int64), 2, seed=0)
