"""The autoregressive judge of generated text: perplexities with known answers."""

from __future__ import annotations

import numpy as np

from difftrain.config import TokenTransformerConfig
from difftrain.models.token_transformer import TokenTransformer
from difftrain.modalities.text_judge import fit_judge, perplexity, token_nats

TINY = TokenTransformerConfig(width=32, depth=1, heads=2, dropout=0.0)


def test_an_untrained_judge_is_uniform_so_its_perplexity_is_the_vocabulary_size():
    model = TokenTransformer(7, 0, TINY, causal=True).eval()  # the head starts at zero: uniform over 7 tokens
    blocks = np.random.default_rng(0).integers(0, 7, (5, 9)).astype(np.int32)
    assert abs(perplexity(model, blocks) - 7.0) < 1e-4


def test_padding_is_not_scored():
    model = TokenTransformer(7, 0, TINY, causal=True).eval()
    blocks = np.array([[1, 2, 3, 6, 6], [4, 5, 6, 6, 6]], np.int32)
    nats = token_nats(model, blocks, pad_id=6)
    assert np.isnan(nats[blocks == 6]).all() and np.isfinite(nats[blocks != 6]).all()


def test_a_judge_learns_a_deterministic_text_to_a_perplexity_near_one():
    blocks = np.tile(np.arange(4, dtype=np.int32), (64, 4))  # 0 1 2 3 0 1 2 3 ...: after the first token, certain
    model = fit_judge(blocks, 4, TINY, steps=150, batch=16, lr=3e-3, warmup=10)
    nats = token_nats(model, blocks[:4])
    assert nats[:, 1:].mean() < 0.05  # every token after the first is predicted
    assert perplexity(model, blocks[:4]) < 1.5
