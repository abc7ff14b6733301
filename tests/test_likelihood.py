"""ODE log-likelihood and bits/dim against closed-form answers.

For Gaussian data N(MU, COV) the exact denoiser is MU + COV (COV + sigma^2 I)^-1 (x - MU), the noisy marginals are
N(MU, COV + sigma^2 I) and the probability-flow ODE is linear, so both log p_{sigma_min}(x) and the ODE's endpoint
are known in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difftrain.diffusion import EDM, VP, Denoiser, Formulation
from difftrain.evaluation.likelihood import bits_per_dim, ode_log_likelihood
from difftrain.modalities import modality_for

# A 4-vector stored as a (1, 2, 2) "image", non-diagonal covariance with eigenvalues in [0.05, 1].
SHAPE = (1, 2, 2)
EIGS = torch.tensor([1.0, 0.5, 0.2, 0.05], dtype=torch.float64)
Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
COV = Q @ torch.diag(EIGS) @ Q.T
MU = torch.tensor([0.3, -0.2, 0.1, -0.05], dtype=torch.float64)

FORMULATIONS = {"edm": EDM, "vp_eps": VP, "vp_v": lambda: VP(prediction="v")}


class GaussianNet(torch.nn.Module):
    """F that makes Denoiser(F) the exact denoiser of N(mu[label], cov) under any formulation's preconditioning."""

    def __init__(self, formulation: Formulation, mu: torch.Tensor, cov: torch.Tensor):
        super().__init__()
        self.formulation = formulation
        self.mu = mu.float().reshape(-1, mu.shape[-1])  # (classes, D)
        eigs, q = torch.linalg.eigh(cov)
        self.eigs, self.q = eigs.float(), q.float()

    def forward(self, x_in, c_noise, cond=None):
        f = self.formulation
        # The net sees only c_noise; invert it (EDM: ln(sigma)/4; VP: fractional timestep).
        sigma = (4 * c_noise).exp() if isinstance(f, EDM) else f.t_to_sigma(c_noise)
        c_skip, c_out, c_in, _ = (c.view(-1, 1, 1, 1) for c in f.scalings(sigma))
        x = x_in / c_in
        mu = self.mu[0 if cond is None else cond["label"]]
        z = (x.flatten(1) - mu) @ self.q * self.eigs / (self.eigs + sigma.view(-1, 1) ** 2)
        return ((mu + z @ self.q.T).view_as(x) - c_skip * x) / c_out


def gaussian_denoiser(formulation: Formulation, mu=MU, cov=COV) -> Denoiser:
    return Denoiser(GaussianNet(formulation, mu, cov), formulation)


def log_normal(x: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(mu, cov).log_prob(x)


def exact_ode_answer(formulation: Formulation, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log N(x0; MU, COV + sigma_min^2 I), and what the exact ODE adds to it by using the prior N(0, sigma_max^2 I).

    In COV's eigenbasis the ODE scales each coordinate of x - MU by sqrt((lambda + sigma^2) / (lambda + sigma_min^2)).
    """
    smin, smax = formulation.sigma_min, formulation.sigma_max
    eye = torch.eye(4, dtype=torch.float64)
    x0 = x0.double().reshape(len(x0), 4)
    eigs, q = torch.linalg.eigh(COV)
    x_end = MU + ((x0 - MU) @ q * ((eigs + smax**2) / (eigs + smin**2)).sqrt()) @ q.T
    prior = log_normal(x_end, torch.zeros(4, dtype=torch.float64), smax**2 * eye)
    prior_error = prior - log_normal(x_end, MU, COV + smax**2 * eye)
    return log_normal(x0, MU, COV + smin**2 * eye), prior_error


def gaussian_points(n: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (MU + z @ torch.linalg.cholesky(COV).T).float().reshape(n, *SHAPE)


# 1. The exact-trace ODE reproduces the Gaussian's log density. ------------------------------------

@pytest.mark.parametrize("key", ["edm", "vp_eps", "vp_v"])
def test_exact_trace_matches_gaussian_log_density(key):
    formulation = FORMULATIONS[key]()
    x0 = torch.cat([gaussian_points(7, seed=2), torch.full((1, *SHAPE), 0.9)])  # the last one in the tail
    log_p = ode_log_likelihood(gaussian_denoiser(formulation), x0, steps=256, exact=True)
    expected, prior_error = exact_ode_answer(formulation, x0)
    assert log_p.shape == (8,) and log_p.dtype == torch.float64
    assert prior_error.abs().max() < 0.02  # the N(0, sigma_max^2 I) prior's own error, O(|MU| / sigma_max)
    # Discretisation error at 256 steps, measured: < 4e-4 relative (it grows with the point's distance from MU).
    torch.testing.assert_close(log_p, expected + prior_error, rtol=1e-3, atol=0)


def test_heun_is_second_order():
    # Doubling the steps divides the discretisation error by ~4.
    formulation = EDM()
    x0 = gaussian_points(8, seed=3)
    expected, prior_error = exact_ode_answer(formulation, x0)
    errors = [float((ode_log_likelihood(gaussian_denoiser(formulation), x0, steps=steps, exact=True)
                     - expected - prior_error).abs().max()) for steps in (32, 64, 128)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(3.3 < r < 4.7 for r in ratios), (errors, ratios)


# 2. Hutchinson's estimate is unbiased. ----------------------------------------------------------------

def test_hutchinson_matches_exact_trace_on_average():
    denoiser = gaussian_denoiser(EDM())
    repeats = 2000
    x0 = gaussian_points(3, seed=4).repeat_interleave(repeats, dim=0)
    exact = ode_log_likelihood(denoiser, x0[::repeats], steps=32, exact=True)
    estimate = ode_log_likelihood(denoiser, x0, steps=32, generator=torch.Generator().manual_seed(0)).view(3, repeats)
    # Same steps, same trajectory: only the probes differ, and E[eps^T J eps] = tr J.
    std_error = estimate.std(dim=1) / math.sqrt(repeats)
    assert (estimate.std(dim=1) > 0.05).all()  # the probes do matter for a non-diagonal Jacobian
    assert ((estimate.mean(dim=1) - exact).abs() < 4 * std_error).all(), (estimate.mean(dim=1), exact, std_error)

    def seeded(seed: int) -> torch.Tensor:
        return ode_log_likelihood(denoiser, x0[:10], steps=8, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(seeded(0), seeded(0)) and not torch.equal(seeded(0), seeded(1))


def test_rademacher_probes_are_exact_for_a_diagonal_jacobian():
    # eps_i^2 = 1, so with independent coordinates Hutchinson's estimate has no variance (Gaussian probes would).
    cov = torch.diag(EIGS)
    denoiser = gaussian_denoiser(EDM(), cov=cov)
    x0 = gaussian_points(16, seed=5)
    exact = ode_log_likelihood(denoiser, x0, steps=16, exact=True)
    torch.testing.assert_close(ode_log_likelihood(denoiser, x0, steps=16), exact, rtol=0, atol=1e-4)


# 3. Bits per dimension of uint8 images. ---------------------------------------------------------------

IMAGES = modality_for({"kind": "image", "shape": [2, 1, 2]})  # the (H, W, C) of quantized_images
PIXELS = modality_for({"kind": "image", "shape": [2, 2, 1]})  # 2x2 one-channel images

def quantized_images(n: int, mus: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 2, 1, 2) images (H, W, C), from N(mus[label], COV) in NCHW order, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(mus), n)
    x = mus.numpy()[labels] + rng.standard_normal((n, 4)) @ np.linalg.cholesky(COV.numpy()).T
    k = np.clip(np.floor((x + 1) * 127.5), 0, 255).astype(np.uint8)
    return k.reshape(n, 2, 2, 1).transpose(0, 2, 3, 1), labels  # (N, C, H, W) -> (N, H, W, C)


def expected_bits(images: np.ndarray, labels: np.ndarray, mus: torch.Tensor, cov: torch.Tensor,
                  sigma_min: float) -> tuple[np.ndarray, np.ndarray]:
    """E_u[-log2 N(x; mu, cov + sigma_min^2 I)] / D + log2(127.5) per image, x = (k + u)/127.5 - 1, and its std over u.

    With a = (k + 1/2)/127.5 - 1 - mu and d = x - a uniform of variance v = 1/(12 127.5^2):
    E[(a + d)^T P (a + d)] = a^T P a + v tr P, and, as E d^4 = 9/5 v^2 and odd moments vanish,
    Var = 4 v a^T P^2 a + 2 v^2 tr P^2 - 6/5 v^2 sum_i P_ii^2.
    """
    k = images.transpose(0, 3, 1, 2).reshape(len(images), 4).astype(np.float64)  # to the model's NCHW order
    cov = cov.numpy() + sigma_min**2 * np.eye(4)
    prec = np.linalg.inv(cov)
    a = (k + 0.5) / 127.5 - 1 - mus.numpy()[labels]
    v = 1 / (12 * 127.5**2)
    quad = np.einsum("ni,ij,nj->n", a, prec, a) + v * np.trace(prec)
    nats = 0.5 * (np.linalg.slogdet(2 * np.pi * cov)[1] + quad)
    var_quad = (4 * v * np.einsum("ni,ij,nj->n", a, prec @ prec, a) + 2 * v**2 * np.trace(prec @ prec)
                - 1.2 * v**2 * (np.diag(prec) ** 2).sum())
    var_nats = 0.25 * var_quad
    return nats / (4 * math.log(2)) + math.log2(127.5), np.sqrt(var_nats) / (4 * math.log(2))


def test_bits_per_dim_of_gaussian_images():
    mus = torch.stack([MU, -MU])  # two classes
    formulation = EDM()
    images, labels = quantized_images(300, mus, seed=0)
    seen = []
    denoiser = gaussian_denoiser(formulation, mu=mus).train()
    with torch.inference_mode():  # callers may be in inference mode
        result = bits_per_dim(denoiser, IMAGES, images, labels, steps=512, batch_size=128, exact=True, seed=0,
                              progress=seen.append)
    assert denoiser.training  # mode restored
    assert seen == [128, 128, 44]
    per_image, u_std = expected_bits(images, labels, mus, COV, formulation.sigma_min)
    # Randomness: u (one draw per image), bounded by u_std; discretisation: < 1e-3 nats per image at 512 steps.
    tol = 4 * np.sqrt((u_std**2).sum()) / len(images) + 1e-3 / (4 * math.log(2))
    assert abs(result["nll_bits_per_dim"] - per_image.mean()) < tol, (result, per_image.mean(), tol)
    assert result["nll_std_error"] == pytest.approx(per_image.std(ddof=1) / math.sqrt(len(images)), rel=0.05)
    assert {k: result[k] for k in ("nll_images", "nll_ode_steps", "nll_estimator", "nll_dequantization")} == {
        "nll_images": 300, "nll_ode_steps": 512, "nll_estimator": "exact", "nll_dequantization": "uniform"}
    # Without labels the model is scored against class 0's mean for every image: worse.
    unlabelled = bits_per_dim(denoiser, IMAGES, images, None, steps=32, exact=True)
    assert unlabelled["nll_bits_per_dim"] > result["nll_bits_per_dim"] + 0.1


def test_dequantization_noise_counts():
    # A model as narrow as one intensity level: the answer depends on u being uniform over the whole bin.
    k = np.array([[[[0], [100]], [[200], [255]]]], dtype=np.uint8).repeat(256, axis=0)
    v = 1 / (12 * 127.5**2)  # variance of u / 127.5
    mu = torch.tensor([0.5, 100.5, 200.5, 255.5], dtype=torch.float64) / 127.5 - 1  # NCHW order of the bin centres
    cov = v * torch.eye(4, dtype=torch.float64)
    formulation = EDM()
    result = bits_per_dim(gaussian_denoiser(formulation, mu=mu, cov=cov), PIXELS, k, None, steps=128, exact=True)
    per_image, u_std = expected_bits(k, np.zeros(len(k), dtype=np.int64), mu[None], cov, formulation.sigma_min)
    tol = 4 * np.sqrt((u_std**2).sum()) / len(k) + 1e-3 / (4 * math.log(2))
    assert abs(result["nll_bits_per_dim"] - per_image.mean()) < tol, (result, per_image.mean(), tol)


def test_bits_per_dim_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        bits_per_dim(gaussian_denoiser(EDM()), PIXELS, np.zeros((2, 2, 2, 1), dtype=np.float32), None)


# 4. A worse model scores worse. -----------------------------------------------------------------------

def test_worse_denoiser_gives_higher_bits_per_dim():
    images, _ = quantized_images(200, MU[None], seed=1)
    formulation = VP()
    kwargs = dict(labels=None, steps=64, batch_size=100, seed=0)  # Hutchinson, the same u and probes for both
    ideal = bits_per_dim(gaussian_denoiser(formulation), IMAGES, images, **kwargs)
    # The denoiser of N(MU, 2 COV): about 0.5 (ln 2 - 1/2) / ln 2 = 0.14 bits/dim more on the true data.
    worse = bits_per_dim(gaussian_denoiser(formulation, cov=2 * COV), IMAGES, images, **kwargs)
    assert ideal["nll_estimator"] == "hutchinson-rademacher"
    assert worse["nll_bits_per_dim"] > ideal["nll_bits_per_dim"] + 0.07, (ideal, worse)
