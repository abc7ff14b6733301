"""Masked discrete diffusion (diffusion/masked.py) against closed-form answers: the bound of a uniform model is ln V,
the bound of the exact conditionals of a known distribution is -log p(x) itself, and sampling with them draws p."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from difftrain.diffusion.masked import MaskedDenoiser, MaskedDiffusion, negative_elbo, sample_masked

V, L = 2, 3
# A joint distribution over {0, 1}^3 with dependence between every position (no two equal probabilities).
SEQUENCES = list(itertools.product(range(V), repeat=L))
P = torch.tensor([0.30, 0.02, 0.08, 0.15, 0.05, 0.20, 0.12, 0.08], dtype=torch.float64)


class ExactConditionals(torch.nn.Module):
    """Logits of p(x_l | the unmasked tokens) under P, at every position: the ideal masked-diffusion network."""

    def __init__(self, mask_id: int):
        super().__init__()
        self.mask_id = mask_id
        self.calls = 0

    def forward(self, z, c_noise, cond):
        self.calls += 1
        seqs = torch.tensor(SEQUENCES)
        fits = ((z[:, None, :] == self.mask_id) | (z[:, None, :] == seqs)).all(-1)  # (B, 8): sequences z may come from
        out = torch.einsum("bs,spv->bpv", fits * P, torch.nn.functional.one_hot(seqs, V).double())
        return out.clamp(min=1e-300).log().float()


class Constant(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, z, c_noise, cond):
        return self.logits.expand(*z.shape, -1)


def exact_bound(denoiser: MaskedDenoiser, x: tuple[int, ...]) -> float:
    """sum_k (1/k) E_{|M| = k} sum_{l in M} -log p(x_l | x outside M), enumerating every mask set: nats per sequence."""
    total = 0.0
    x0 = torch.tensor([x])
    for k in range(1, L + 1):
        sets = list(itertools.combinations(range(L), k))
        for mask in sets:
            z = x0.clone()
            z[0, list(mask)] = denoiser.formulation.mask_id
            logp = denoiser(z, 0.5)
            total += sum(-float(logp[0, l, x[l]]) for l in mask) / k / len(sets)
    return total


def test_a_uniform_model_is_bound_by_ln_v_at_every_draw():
    f = MaskedDiffusion(vocab_size=7)
    denoiser = MaskedDenoiser(Constant(torch.zeros(7)), f)
    x0 = torch.randint(0, 7, (64, 16), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    loss = denoiser.loss(x0, sigma=f.sample_training_sigma(64, generator=g), noise=f.sample_training_noise((64, 16), generator=g))
    assert torch.allclose(loss, torch.full((64,), math.log(7)), atol=1e-5)


def test_a_one_token_corpus_learnt_is_bound_by_zero():
    f = MaskedDiffusion(vocab_size=5)
    denoiser = MaskedDenoiser(Constant(torch.tensor([-30.0, -30.0, 30.0, -30.0, -30.0])), f)
    nelbo = negative_elbo(denoiser, torch.full((8, 32), 2), draws=4, generator=torch.Generator().manual_seed(0))
    assert nelbo.max() < 1e-6


def test_the_bound_of_exact_conditionals_is_minus_log_p():
    f = MaskedDiffusion(vocab_size=V)
    denoiser = MaskedDenoiser(ExactConditionals(f.mask_id), f)
    for x, p in zip(SEQUENCES, P.tolist()):
        assert exact_bound(denoiser, x) == pytest.approx(-math.log(p), rel=1e-5)


def test_the_one_draw_estimate_is_unbiased():
    f = MaskedDiffusion(vocab_size=V)
    denoiser = MaskedDenoiser(ExactConditionals(f.mask_id), f)
    x = (1, 0, 1)
    estimates = negative_elbo(denoiser, torch.tensor([x] * 3000), generator=torch.Generator().manual_seed(0)) * L
    # k is uniform on 1..3 across the stratified draws: the mean is the exact sum to within its standard error.
    assert float(estimates.mean()) == pytest.approx(-math.log(P[SEQUENCES.index(x)]), abs=4 * float(estimates.std()) / 3000**0.5)


def test_sampling_with_exact_conditionals_draws_the_distribution():
    f = MaskedDiffusion(vocab_size=V)
    denoiser = MaskedDenoiser(ExactConditionals(f.mask_id), f)
    n = 2000
    # Many steps: two tokens are almost never revealed in one step, so each is drawn given the ones before it.
    samples = sample_masked(denoiser, torch.full((n, L), f.mask_id), steps=300, generator=torch.Generator().manual_seed(0))
    counts = torch.tensor([sum(tuple(row) == seq for row in samples.tolist()) for seq in SEQUENCES], dtype=torch.float64)
    expected = n * P
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.3  # the chi-square 0.999 quantile with 7 degrees of freedom


def test_given_tokens_are_kept_and_unchanged_steps_reuse_the_network():
    f = MaskedDiffusion(vocab_size=V)
    net = ExactConditionals(f.mask_id)
    denoiser = MaskedDenoiser(net, f)
    given = torch.tensor([[f.mask_id, 1, f.mask_id]] * 50)
    samples = sample_masked(denoiser, given, steps=8, generator=torch.Generator().manual_seed(0))
    assert (samples[:, 1] == 1).all() and (samples != f.mask_id).all()
    net.calls = 0
    one = sample_masked(denoiser, torch.full((1, L), f.mask_id), steps=1000, generator=torch.Generator().manual_seed(0))
    assert (one != f.mask_id).all() and net.calls <= L  # one network call per step that revealed something
