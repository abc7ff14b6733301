"""Masked (absorbing-state) discrete diffusion over tokens: MDLM (Sahoo et al. 2024) with the linear schedule.

Forward process: at time t in [0, 1] each token is independently replaced by the mask token with probability t
(alpha_t = 1 - t). The network sees the partly masked sequence and gives logits over the vocabulary at every position;
the denoiser reads them MDLM's way ("SUBS"): a token that is not masked is known, so its distribution is that token.

The continuous-time bound is -log p(x) <= E_t[(1/t) sum_{masked l} -log p(x_l | z_t)]. Given t the number of masked
tokens k is Binomial(L, t), and the integral over t of (1/t) Binomial(k; L, t) is exactly 1/k. So the same bound is

    NELBO(x) = sum_{k=1..L} (1/k) E_{M: |M| = k}[ sum_{l in M} -log p(x_l | x outside M) ]

(the any-order autoregressive form; Ou et al. 2024). Its one-draw estimate, k uniform on 1..L and weight L/k, is
unbiased and of finite variance, unlike t ~ U(0, 1) with weight 1/t, whose variance diverges at t -> 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


MASKED_SAMPLERS = ("ancestral",)


@dataclass(eq=False)
class MaskedDiffusion:
    """The absorbing-state formulation over a vocabulary of `vocab_size` tokens; the mask token is `vocab_size`."""

    vocab_size: int

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def sample_training_sigma(self, n: int, *, generator: torch.Generator | None = None,
                              device: torch.device | str | None = None) -> Tensor:
        """n masking times t in (0, 1], stratified (one per 1/n of the interval, then shuffled): a batch covers every
        noise level, which lowers the loss's variance (MDLM's low-discrepancy sampler)."""
        u = torch.rand(n, generator=generator, device=device)
        order = torch.randperm(n, generator=generator, device=device)
        return 1 - (order + u) / n

    def sample_training_noise(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                              device: torch.device | str | None = None) -> Tensor:
        """Uniform scores: the k positions of lowest score are the ones masked."""
        return torch.rand(shape, generator=generator, device=device)

    def masked_count(self, t: Tensor, length: int) -> Tensor:
        """k = ceil(t L) in 1..L: uniform on 1..L when t is uniform on (0, 1]."""
        return (t * length).ceil().clamp(1, length).long()

    def corrupt(self, x0: Tensor, t: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(z, masked): x0 (B, L) with the k = ceil(t L) positions of lowest score masked."""
        k = self.masked_count(t, x0.shape[1])
        rank = scores.argsort(dim=1).argsort(dim=1)
        masked = rank < k[:, None]
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0), masked


class MaskedDenoiser(torch.nn.Module):
    """log p(x0 | z): the network's logits (B, L, V) as log-probabilities, each given token certain (SUBS).

    `net(z, c_noise, cond)` takes tokens with mask ids (B, L) and returns logits (B, L, V); c_noise is the masking
    time, which MDLM finds the network does not need (the share of masks tells it), so a network may ignore it.
    """

    def __init__(self, net: torch.nn.Module, formulation: MaskedDiffusion):
        super().__init__()
        self.net = net
        self.formulation = formulation

    def with_net(self, net: torch.nn.Module) -> MaskedDenoiser:
        return MaskedDenoiser(net, self.formulation)

    def forward(self, z: Tensor, t: Tensor | float, cond: dict[str, Tensor] | None = None) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=z.device).reshape(-1).expand(z.shape[0])
        logp = torch.log_softmax(self.net(z, t, cond).float(), dim=-1)
        known = z != self.formulation.mask_id
        certain = torch.full_like(logp, -math.inf).scatter_(-1, z.clamp(max=logp.shape[-1] - 1)[..., None], 0.0)
        return torch.where(known[..., None], certain, logp)

    def loss(self, x0: Tensor, cond: dict[str, Tensor] | None = None, *, sigma: Tensor, noise: Tensor,
             where: Tensor | None = None, **_continuous_options) -> Tensor:
        """Per-sample negative ELBO in nats per token (B,): (L/k) sum over the k masked positions of -log p(x0 | z),
        divided by L. `sigma` are masking times (B,), `noise` the scores (B, L) that pick the masked positions."""
        x0 = x0.long()
        z, masked = self.formulation.corrupt(x0, sigma, noise)
        # Only masked positions count (a given token's -log p is 0 under SUBS), so the network's log-softmax suffices.
        logp = torch.log_softmax(self.net(z, sigma, cond).float(), dim=-1)
        nll = torch.where(masked, -logp.gather(-1, x0[..., None]).squeeze(-1), torch.zeros((), device=x0.device))
        k = masked.sum(dim=1).clamp(min=1)
        return nll.sum(dim=1) / k


@torch.no_grad()
def negative_elbo(denoiser: MaskedDenoiser, x0: Tensor, cond: dict[str, Tensor] | None = None, *, draws: int = 1,
                  generator: torch.Generator | None = None) -> Tensor:
    """The bound in nats per token of each sequence (B,), averaged over `draws` stratified draws of k."""
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    f = denoiser.formulation
    for i in range(draws):
        u = torch.rand(x0.shape[0], generator=generator, device=x0.device)
        t = 1 - (i + u) / draws  # stratified over the draws: every sequence sees every part of (0, 1]
        scores = f.sample_training_noise(tuple(x0.shape), generator=generator, device=x0.device)
        total += denoiser.loss(x0, cond, sigma=t, noise=scores).double()
    return total / draws


def guided_log_probs(denoiser: MaskedDenoiser, cond: dict[str, Tensor] | None, guidance: float = 1.0,
                     null: dict[str, Tensor] | None = None):
    """log p(x0 | z_t) as a function of (z, t), with classifier-free guidance for tokens (Nisonoff et al. 2024,
    Schiff et al. 2024): log p_u + w (log p_c - log p_u), renormalised over the vocabulary; w = 1 is the conditional
    model itself. Given positions are certain under both branches and never resampled."""
    if cond is None or guidance == 1.0:
        return lambda z, t: denoiser(z, t, cond)
    if null is None:
        raise ValueError("guidance != 1 needs the null condition")
    both = {key: torch.cat([cond[key], null[key]]) for key in cond}

    def log_probs(z: Tensor, t: float) -> Tensor:
        conditional, unconditional = denoiser(torch.cat([z, z]), t, both).chunk(2)
        # Given positions hold -inf off their token in both branches; their rows are never drawn from.
        mixed = torch.where(torch.isfinite(unconditional), unconditional + guidance * (conditional - unconditional), -math.inf)
        return torch.log_softmax(mixed, dim=-1)

    return log_probs


@torch.no_grad()
def sample_masked(denoiser: MaskedDenoiser, given: Tensor, steps: int, *, cond: dict[str, Tensor] | None = None,
                  generator: torch.Generator | None = None, guidance: float = 1.0,
                  null: dict[str, Tensor] | None = None, temperature: float = 1.0) -> Tensor:
    """MDLM's ancestral sampler from t = 1 to 0 in `steps` equal steps; `given` (B, L) holds tokens, with the mask id
    where to generate (all masks: unconditional; some tokens: a prompt or an infilling, which are kept as they are).

    From t to s < t each masked token is revealed with probability (t - s)/t, drawn from p(x0 | z_t) (guided when
    `guidance` != 1: `null` is the unconditional condition; with `temperature` T, from p^(1/T) renormalised). The network sees only z_t (no time), so a step that
    reveals nothing reuses the last output (MDLM's caching): with many steps most of them are free.
    """
    mask_id = denoiser.formulation.mask_id
    log_probs = guided_log_probs(denoiser, cond, guidance, null)
    z = given.long().clone()
    t_grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    probs = None
    for t, s in zip(t_grid[:-1].tolist(), t_grid[1:].tolist()):
        masked = z == mask_id
        if not masked.any():
            break
        if probs is None:
            probs = torch.softmax(log_probs(z, t) / temperature, dim=-1)
        reveal = masked & (torch.rand(z.shape, generator=generator, device=z.device) < (t - s) / t)
        if reveal.any():
            flat = probs[reveal]
            z[reveal] = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
            probs = None
    return z
