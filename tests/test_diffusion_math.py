"""The diffusion math against closed-form answers.

Gaussian data x0 ~ N(MU, COV) has the exact denoiser E[x0 | x] = MU + COV (COV + sigma^2 I)^-1 (x - MU).
An "ideal net" inverts each formulation's preconditioning so that Denoiser(ideal net) is that exact
denoiser; samplers driven by it must reproduce MU and COV, and every loss must be minimised by it.
The closed-form checks run on items shaped like images (C, H, W), sequences (C, L) and vectors (D,).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from difftrain.conditioning import ClassLabels

from difftrain.diffusion import (
    EDM,
    SAMPLERS,
    VP,
    WEIGHTINGS,
    Denoiser,
    ancestral_step,
    build_formulation,
    denoising_loss,
    guided_denoiser,
    karras_sigmas,
    loss_weight,
    network_evaluations,
    sample_heun,
    sampling_sigmas,
)

# Item shapes: an image (C, H, W), a sequence (C, L), a vector (D,); batches add the leading B.
SHAPES = [(1, 2, 2), (2, 3), (3,)]
SHAPE = SHAPES[0]  # the default of the checks that do not depend on the shape


@functools.cache
def gaussian(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """MU (d,) and a non-diagonal COV (d, d) with eigenvalues from 1 down to 0.05, for items of `shape` (d elements)."""
    d = math.prod(shape)
    eigs = torch.logspace(0, math.log10(0.05), d)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1)))
    return 0.3 * (-0.6) ** torch.arange(d), q @ torch.diag(eigs) @ q.T


MU, COV = gaussian(SHAPE)

FORMULATIONS = {
    "edm": dict(name="edm"),
    "vp_eps": dict(name="vp", prediction="eps"),
    "vp_v": dict(name="vp", prediction="v"),
    "vp_eps_scaled": dict(name="vp", prediction="eps", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}


def make(key: str):
    kwargs = dict(FORMULATIONS[key])
    return build_formulation(kwargs.pop("name"), **kwargs)


def gaussian_data(n: int, seed: int = 0, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    mu, cov = gaussian(shape)
    z = torch.randn(n, len(mu), generator=torch.Generator().manual_seed(seed))
    return (mu + z @ torch.linalg.cholesky(cov).T).reshape(n, *shape)


def per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ...), broadcastable against `like`."""
    return t.view(-1, *[1] * (like.ndim - 1))


def posterior_mean(x: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor = MU, cov: torch.Tensor = COV) -> torch.Tensor:
    """E[x0 | x0 + sigma n = x] = mu + cov (cov + sigma^2 I)^-1 (x - mu), per-sample sigma (B,), via cov's eigenbasis."""
    eigs, q = torch.linalg.eigh(cov)
    z = (x.reshape(len(x), -1) - mu) @ q
    z = z * eigs / (eigs + sigma.view(-1, 1) ** 2)
    return (mu + z @ q.T).reshape(x.shape)


def sigma_from_c_noise(formulation, c_noise: torch.Tensor) -> torch.Tensor:
    # The net sees only c_noise; invert it (EDM: c_noise = ln(sigma)/4; VP: fractional timestep).
    return (4 * c_noise).exp() if isinstance(formulation, EDM) else formulation.t_to_sigma(c_noise)


class IdealNet(torch.nn.Module):
    """F = (D_exact(x) - c_skip x) / c_out, with x = x_in / c_in: makes Denoiser(F) the exact denoiser."""

    def __init__(self, formulation, mu=MU, cov=COV, perturbation=None, delta=0.0):
        super().__init__()
        self.formulation, self.mu, self.cov = formulation, mu, cov
        self.perturbation, self.delta = perturbation, delta  # F + delta * h(x_in, c_noise)

    def forward(self, x_in, c_noise, class_labels=None):
        sigma = sigma_from_c_noise(self.formulation, c_noise)
        c_skip, c_out, c_in, _ = (per_sample(c, x_in) for c in self.formulation.scalings(sigma))
        x = x_in / c_in
        F = (posterior_mean(x, sigma, self.mu, self.cov) - c_skip * x) / c_out
        if self.perturbation is not None:
            F = F + self.delta * self.perturbation(x_in, c_noise)
        return F


def ideal_denoise_fn(formulation, shape: tuple[int, ...] = SHAPE):
    denoiser = Denoiser(IdealNet(formulation, *gaussian(shape)), formulation)
    return lambda x, sigma: denoiser(x, sigma)


def moment_errors(samples: torch.Tensor) -> tuple[float, float]:
    mu, cov = (t.double() for t in gaussian(tuple(samples.shape[1:])))
    flat = samples.reshape(len(samples), -1).double()
    mean_err = (flat.mean(0) - mu).norm()
    cov_err = (torch.cov(flat.T) - cov).norm() / cov.norm()
    return float(mean_err), float(cov_err)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_exact_denoiser_is_the_gaussian_posterior_mean(shape):
    # Independently of the formula: the best affine predictor of x0 from x (least squares on many draws) is E[x0 | x].
    mu, cov = gaussian(shape)
    n = 200_000
    x0 = gaussian_data(n, seed=7, shape=shape).double()
    for s in (0.1, 0.5, 2.0):
        x = x0 + s * torch.randn(x0.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        design = torch.cat([torch.ones(n, 1, dtype=torch.float64), x.reshape(n, -1)], dim=1)
        coef = torch.linalg.lstsq(design, x0.reshape(n, -1)).solution  # (1 + d, d)
        probe = torch.eye(len(mu), dtype=torch.float64).reshape(-1, *shape)  # x = e_i: the affine map at the unit vectors
        exact = posterior_mean(probe.float(), torch.full((len(mu),), s), mu, cov).reshape(len(mu), -1).double()
        torch.testing.assert_close(coef[0] + coef[1:], exact, rtol=0, atol=0.01)
    # Every formulation's Denoiser(ideal net) is that denoiser, for any item shape.
    x = gaussian_data(16, seed=9, shape=shape) + torch.randn(16, *shape, generator=torch.Generator().manual_seed(10))
    sigma = torch.logspace(-1.5, 1.1, 16)  # inside every VP table (0.03 to 12.6), where sigma_to_t does not clamp
    for key in FORMULATIONS:
        torch.testing.assert_close(ideal_denoise_fn(make(key), shape)(x, sigma), posterior_mean(x, sigma, mu, cov),
                                   rtol=1e-4, atol=1e-4)


# 1. Samplers reproduce the data distribution. ---------------------------------------------------

N_SAMPLES = 20_000
# Monte Carlo error of the sample covariance at 20k samples is ~2% of ||COV||_F (mean: ~0.01); the step counts
# keep discretisation error at or below ~2% (see test_sampler_convergence_order for the deterministic ones).
COV_TOL = 0.05  # Frobenius error of the covariance, relative to ||COV||_F
MEAN_TOL = 0.03  # Euclidean error of the mean (~3 standard errors)
SAMPLER_CASES = [
    # sampler, kwargs, schedule, steps
    ("euler", {}, "karras", 256),
    ("heun", {}, "karras", 64),
    ("heun", dict(s_churn=10.0, s_tmin=0.05, s_tmax=50.0), "karras", 128),
    ("heun", dict(s_churn=10.0), "karras", 128),  # churn up to the top: VP's sigma_hat stops at sigma_max
    ("dpmpp_2m", {}, "karras", 64),
    ("ddim", {}, "uniform", 256),
    ("ddim", dict(eta=0.5), "karras", 500),
    ("ddpm", {}, "uniform", 1000),  # VP: the full 1000-step DDPM chain
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("key", ["edm", "vp_eps"])
@pytest.mark.parametrize("sampler,kwargs,schedule,steps", SAMPLER_CASES)
def test_sampler_reproduces_gaussian(key, sampler, kwargs, schedule, steps, shape):
    formulation = make(key)
    sigmas = sampling_sigmas(formulation, steps, schedule)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, *shape, generator=g) * formulation.prior_std(float(sigmas[0]))  # as sampling.generate
    if sampler == "heun":
        kwargs = dict(kwargs, sigma_max=formulation.sigma_max)
    out = SAMPLERS[sampler](ideal_denoise_fn(formulation, shape), x, sigmas, generator=g, **kwargs)
    assert out.shape == x.shape
    mean_err, cov_err = moment_errors(out)
    assert mean_err < MEAN_TOL, (mean_err, cov_err)
    assert cov_err < COV_TOL, (mean_err, cov_err)


def exact_output_distribution(sampler: str, formulation, steps: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a deterministic sampler's output, exactly: it is affine in its start x.

    Started from the true marginal N(MU, COV + sigma_max^2 I), the exact ODE would end at N(MU, COV), so what
    remains is discretisation error alone (no Monte Carlo noise, no sigma_max truncation).
    """
    mu, cov = gaussian(shape)
    d = len(mu)
    sigmas = sampling_sigmas(formulation, steps, "karras")
    chol = torch.linalg.cholesky(cov + sigmas[0] ** 2 * torch.eye(d))
    x = (mu + torch.cat([torch.zeros(1, d), chol.T])).reshape(d + 1, *shape)
    out = SAMPLERS[sampler](ideal_denoise_fn(formulation, shape), x, sigmas).reshape(d + 1, d).double()
    b, A = out[0], out[1:] - out[0]
    return b, A.T @ A


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("key", ["edm", "vp_eps"])
@pytest.mark.parametrize("sampler,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_sampler_convergence_order(key, sampler, order, shape):
    # Without Monte Carlo noise, doubling the steps divides the covariance error by ~2^order.
    mu, cov = (t.double() for t in gaussian(shape))
    errors = []
    for steps in (16, 32, 64):
        mean, out_cov = exact_output_distribution(sampler, make(key), steps, shape)
        errors.append(float((out_cov - cov).norm() / cov.norm()))
        assert (mean - mu).norm() < 1e-4  # MU is a fixed point of every step
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    lo, hi = (1.6, 2.5) if order == 1 else (3.5, 6.0)
    assert all(lo < r < hi for r in ratios), (errors, ratios)
    assert errors[-1] < (0.1 if order == 1 else 0.01), errors


def test_ddim_eta_one_is_ddpm_posterior():
    # One step t -> t-1 in VP coordinates (x_t = sqrt(abar_t) x_sigma) must be Ho 2020 eq. 7.
    vp = VP()
    abar = vp.alphas_cumprod
    for t in (1, 10, 500, 999):
        beta_t = 1 - abar[t] / abar[t - 1]
        sigma, sigma_next = vp.sigmas[t].double(), vp.sigmas[t - 1].double()
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta=1.0)
        # Variance: sigma_up^2 abar_{t-1} = beta_tilde = (1 - abar_{t-1}) / (1 - abar_t) beta_t.
        beta_tilde = (1 - abar[t - 1]) / (1 - abar[t]) * beta_t
        assert torch.allclose(sigma_up**2 * abar[t - 1], beta_tilde, rtol=1e-5)
        # Mean: the Euler step to sigma_down, x0 + (sigma_down/sigma)(x - x0), is the posterior mean.
        x0, x = 0.7, -1.3  # any scalars: the step is affine in both
        mean_sigma_space = x0 + sigma_down / sigma * (x - x0)
        x_t = abar[t].sqrt() * x
        mu_tilde = abar[t - 1].sqrt() * beta_t / (1 - abar[t]) * x0 + (1 - beta_t).sqrt() * (1 - abar[t - 1]) / (1 - abar[t]) * x_t
        assert torch.allclose(abar[t - 1].sqrt() * mean_sigma_space, mu_tilde, rtol=1e-5, atol=1e-6)


# 2. Every formulation x weighting is minimised by the exact denoiser. ---------------------------------

N_LOSS = 20_000
PERTURBATIONS = {
    "bias": lambda x_in, c_noise: torch.ones_like(x_in),
    "scale": lambda x_in, c_noise: x_in,
    "nonlinear": lambda x_in, c_noise: torch.tanh(x_in.flip(-1)) * per_sample(torch.cos(c_noise), x_in),
}


def per_sample_loss(formulation, weighting, x0, *, delta=0.0, perturbation=None, mu=None, cov=None):
    """Per-sample loss of the ideal net (for N(mu, cov), default the data's own) plus delta * perturbation."""
    data_mu, data_cov = gaussian(tuple(x0.shape[1:]))
    net = IdealNet(formulation, data_mu if mu is None else mu, data_cov if cov is None else cov, perturbation, delta)
    # The same seed for every call: common random numbers (same sigma and noise per sample).
    return denoising_loss(Denoiser(net, formulation), x0, weighting=weighting, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("key", list(FORMULATIONS))
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_loss_minimised_by_exact_denoiser(key, weighting, shape):
    formulation = make(key)
    x0 = gaussian_data(N_LOSS, shape=shape)
    d = x0[0].numel()
    l0 = per_sample_loss(formulation, weighting, x0).double()
    for name, h in PERTURBATIONS.items():
        # The loss is exactly quadratic in delta (F -> F + delta h): L(delta) = L(0) + b delta + c delta^2.
        lp = per_sample_loss(formulation, weighting, x0, delta=1.0, perturbation=h).double()
        lm = per_sample_loss(formulation, weighting, x0, delta=-1.0, perturbation=h).double()
        b, c = (lp - lm) / 2, (lp + lm - 2 * l0) / 2
        delta_star = -b.mean() / (2 * c.mean())
        delta_se = b.std() / math.sqrt(N_LOSS) / (2 * c.mean())
        # The minimiser sits at 0: statistically (4 standard errors) and small against the unit perturbation.
        assert c.mean() > 0
        assert abs(delta_star) < 4 * delta_se, (name, float(delta_star), float(delta_se))
        assert abs(delta_star) < 0.05, (name, float(delta_star))
    # A denoiser for the wrong data distribution (identity covariance, zero mean) scores worse.
    diff = per_sample_loss(formulation, weighting, x0, mu=torch.zeros(d), cov=torch.eye(d)).double() - l0
    assert diff.mean() > 4 * diff.std() / math.sqrt(N_LOSS), float(diff.mean())


@pytest.mark.parametrize("key", ["edm", "vp_eps", "vp_v"])
def test_weightings_in_network_target_space(key):
    # Re-draw the loss's sigma and noise, then compare with the MSE on the network's own target.
    formulation = make(key)
    B = 256
    x0 = gaussian_data(B)
    net = lambda x_in, c_noise, labels: 0.3 * x_in + 0.1  # noqa: E731 (any net will do)
    losses = {w: denoising_loss(Denoiser(net, formulation), x0, weighting=w, generator=torch.Generator().manual_seed(5)) for w in WEIGHTINGS}
    g = torch.Generator().manual_seed(5)
    sigma = formulation.sample_training_sigma(B, generator=g)
    n = torch.randn(x0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * n
    c_skip, c_out, c_in, _ = (c.view(-1, 1, 1, 1) for c in formulation.scalings(sigma))
    F = net(c_in * x, None, None)
    if key == "vp_eps":
        target, snr_factor = n, 1 / sigma**2  # eps-MSE = SNR * x0-MSE
    elif key == "vp_v":
        alpha, sig = 1 / (s**2 + 1).sqrt(), s / (s**2 + 1).sqrt()
        target, snr_factor = alpha * n - sig * x0, 1 / sigma**2 + 1  # v-MSE = (SNR + 1) * x0-MSE
    else:
        target, snr_factor = (x0 - c_skip * x) / c_out, None  # Karras 2022 eq. 8, effective training target
    target_mse = ((F - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["uniform"], target_mse, rtol=1e-4, atol=1e-5)
    if snr_factor is not None:
        # Hang et al. 2023: min(SNR, gamma)/SNR on eps-MSE, min(SNR, gamma)/(SNR + 1) on v-MSE.
        min_snr = (1 / sigma**2).clamp(max=5.0)
        torch.testing.assert_close(losses["min_snr"], min_snr / snr_factor * target_mse, rtol=1e-4, atol=1e-5)
    else:
        # For EDM, lambda = 1/c_out^2: the EDM weighting is the uniform one on F.
        torch.testing.assert_close(losses["edm"], target_mse, rtol=1e-4, atol=1e-5)


def test_loss_weight_rejects_unknown_weighting():
    with pytest.raises(ValueError, match="min_snr"):
        loss_weight(torch.ones(2), EDM(), "snr")


def test_default_weighting_is_the_formulations_own(tmp_path):
    # diffusion.weighting=auto resolves in the config, so config.yaml records it: EDM's lambda for edm, L_simple for vp.
    from difftrain.config import DiffusionConfig, load_config, read_config, save_config

    assert DiffusionConfig().weighting == "edm"
    config = load_config(overrides=["diffusion.formulation=vp"])
    save_config(config, tmp_path / "config.yaml")
    assert read_config(tmp_path / "config.yaml").diffusion.weighting == "uniform"
    assert "weighting: uniform" in (tmp_path / "config.yaml").read_text()
    vp = VP()
    torch.testing.assert_close(loss_weight(vp.sigmas, vp, config.diffusion.weighting), 1 / vp.sigmas**2)  # eps-MSE
    assert DiffusionConfig(formulation="vp", weighting="edm").weighting == "edm"  # a named weighting stays


# 3. Preconditioning, schedules and bookkeeping. ------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_vp_preconditioning_round_trip(prediction):
    vp = VP(prediction=prediction)
    # abar from the DDPM definition, independently of the package.
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))).float()
    t = torch.tensor([0, 1, 17, 250, 500, 998, 999])
    a, sigma = abar[t].view(-1, 1, 1, 1), vp.sigmas[t]
    x0, eps = gaussian_data(len(t), seed=3), torch.randn(len(t), *SHAPE, generator=torch.Generator().manual_seed(4))
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # Salimans & Ho 2022
    target = eps if prediction == "eps" else v
    seen = {}

    def oracle(x_in, c_noise, labels):
        seen.update(x_in=x_in, c_noise=c_noise)
        return target

    torch.testing.assert_close(Denoiser(oracle, vp)(x, sigma), x0, rtol=0, atol=2e-4)
    torch.testing.assert_close(seen["x_in"], a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=0, atol=1e-5)  # DDPM's x_t
    torch.testing.assert_close(seen["c_noise"], t.float(), rtol=0, atol=1e-3)


def test_vp_tables():
    vp = VP()
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(vp.sigmas.numpy(), np.sqrt((1 - abar) / abar), rtol=1e-6)
    assert vp.sigma_min == pytest.approx(float(np.sqrt((1 - abar[0]) / abar[0])), rel=1e-6)
    assert vp.sigma_max == pytest.approx(float(np.sqrt((1 - abar[-1]) / abar[-1])), rel=1e-6)
    scaled = VP(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    abar = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    np.testing.assert_allclose(scaled.sigmas.numpy(), np.sqrt((1 - abar) / abar), rtol=1e-6)
    # Training sigmas are table entries.
    drawn = vp.sample_training_sigma(1000, generator=torch.Generator().manual_seed(0))
    assert torch.isin(drawn, vp.sigmas).all()


def test_sigma_to_t():
    vp = VP()
    torch.testing.assert_close(vp.sigma_to_t(vp.sigmas), torch.arange(1000).float(), rtol=0, atol=1e-3)
    t = torch.rand(500, generator=torch.Generator().manual_seed(0)) * 999
    torch.testing.assert_close(vp.sigma_to_t(vp.t_to_sigma(t)), t, rtol=0, atol=1e-3)
    # Between neighbours, t is linear in log-sigma; outside the table it clamps to the ends.
    mid = (vp.sigmas[10].log() * 0.25 + vp.sigmas[11].log() * 0.75).exp()
    assert float(vp.sigma_to_t(mid.view(1))) == pytest.approx(10.75, abs=1e-3)
    assert vp.sigma_to_t(torch.tensor([1e-4, 1e4])).tolist() == [0.0, 999.0]


def test_edm_scalings():
    edm = EDM()
    assert (edm.sigma_data, edm.p_mean, edm.p_std, edm.sigma_min, edm.sigma_max) == (0.5, -1.2, 1.2, 0.002, 80.0)
    c_skip, c_out, c_in, c_noise = edm.scalings(torch.tensor([0.5]))  # at sigma = sigma_data
    assert (float(c_skip), float(c_out), float(c_in)) == pytest.approx((0.5, 0.5 / math.sqrt(2), 1 / (0.5 * math.sqrt(2))))
    assert float(c_noise) == pytest.approx(math.log(0.5) / 4)
    # Unit variance of the network input and of the effective target (Karras 2022 Appendix B.6).
    sigma = torch.tensor([0.01, 0.3, 2.0, 50.0])
    c_skip, c_out, c_in, _ = edm.scalings(sigma)
    torch.testing.assert_close(c_in**2 * (0.25 + sigma**2), torch.ones(4))
    torch.testing.assert_close((0.25 * (1 - c_skip) ** 2 + c_skip**2 * sigma**2) / c_out**2, torch.ones(4))
    # ln(sigma) ~ N(-1.2, 1.2^2).
    log_sigma = edm.sample_training_sigma(100_000, generator=torch.Generator().manual_seed(0)).log()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.02)


def test_build_formulation_errors():
    with pytest.raises(ValueError, match="'edm' or 'vp'"):
        build_formulation("ddpm")
    with pytest.raises(ValueError, match="prediction"):
        build_formulation("vp", prediction="x0")
    with pytest.raises(ValueError, match="beta_schedule"):
        build_formulation("vp", beta_schedule="cosine")
    assert isinstance(build_formulation("edm", sigma_data=1.0), EDM) and build_formulation("edm", sigma_data=1.0).sigma_data == 1.0


def test_denoiser_broadcasts_sigma_and_keeps_float32():
    edm = EDM()
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    net = lambda x_in, c_noise, labels: torch.sin(x_in) + c_noise.view(-1, 1, 1, 1)  # noqa: E731
    d = Denoiser(net, edm)
    ref = d(x, torch.full((3,), 0.7))
    torch.testing.assert_close(d(x, 0.7), ref)
    torch.testing.assert_close(d(x, torch.tensor(0.7)), ref)
    bf16 = Denoiser(lambda x_in, c_noise, labels: net(x_in, c_noise, labels).bfloat16(), edm)
    out = bf16(x, 0.7)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0.02)


def test_prior_std():
    # VP starts where DDPM does: its x_T ~ N(0, I) is x_T / sqrt(abar_T) in sigma space.
    vp = VP()
    abar_T = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[-1])
    assert vp.prior_std(vp.sigma_max) == pytest.approx(1 / math.sqrt(abar_T), rel=1e-6)
    assert vp.prior_std(2.0) == pytest.approx(math.sqrt(5.0))
    # EDM keeps Karras 2022's start at sigma itself.
    assert EDM().prior_std(80.0) == 80.0


def test_heun_churn_stops_at_sigma_max():
    # Churn at the first step would raise VP's sigma to sigma_max * sqrt(2), beyond its table: the net would see
    # timestep T-1 while c_in used the larger sigma. Clamped, that step adds no noise and stays at sigma_max.
    vp = VP()
    sigmas = sampling_sigmas(vp, 10)
    seen = []

    def denoise(x, sigma):
        seen.append((float(sigma), x.clone()))
        return 0.5 * x

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    sample_heun(denoise, x, sigmas, s_churn=10.0, sigma_max=vp.sigma_max, generator=torch.Generator().manual_seed(1))
    assert max(s for s, _ in seen) == pytest.approx(vp.sigma_max)
    assert seen[0][0] == pytest.approx(vp.sigma_max) and torch.equal(seen[0][1], x)
    # Below sigma_max churn still raises sigma by 1 + gamma = sqrt(2); without sigma_max (EDM) the first step too.
    assert seen[2][0] == pytest.approx(float(sigmas[1]) * math.sqrt(2))
    seen.clear()
    sample_heun(denoise, x, sigmas, s_churn=10.0, generator=torch.Generator().manual_seed(1))
    assert seen[0][0] == pytest.approx(vp.sigma_max * math.sqrt(2))


def test_karras_sigmas():
    s = karras_sigmas(10, 0.002, 80.0)
    assert s.shape == (11,) and float(s[-1]) == 0.0
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002)
    assert (s[1:] < s[:-1]).all()
    # rho = 1 is evenly spaced in sigma.
    torch.testing.assert_close(karras_sigmas(5, 1.0, 5.0, rho=1.0), torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0]))


def test_sampling_sigmas():
    vp = VP()
    torch.testing.assert_close(sampling_sigmas(vp, 10, "uniform"), torch.cat([vp.sigmas[torch.arange(999, 0, -100)], torch.zeros(1)]))
    assert vp.sigma_to_t(sampling_sigmas(vp, 3, "uniform")[:-1]).round().tolist() == [999, 666, 332]  # diffusers' "trailing"
    edm = sampling_sigmas(EDM(), 4, "uniform")
    torch.testing.assert_close(edm[:-1].log(), torch.linspace(math.log(80.0), math.log(0.002), 4))
    assert float(edm[-1]) == 0.0
    karras = sampling_sigmas(vp, 7)
    assert float(karras[0]) == pytest.approx(vp.sigma_max) and float(karras[-2]) == pytest.approx(vp.sigma_min)
    with pytest.raises(ValueError, match="karras"):
        sampling_sigmas(vp, 10, "cosine")


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 1.0)])
def test_ddim_ddpm_match_diffusers(sampler, eta):
    # Our sigma-space DDIM/DDPM on the VP table against diffusers' schedulers ("trailing" spacing), same noise.
    diffusers = pytest.importorskip("diffusers")
    if sampler == "ddim":
        scheduler, step_kwargs = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"), dict(eta=eta)
    else:
        scheduler, step_kwargs = diffusers.DDPMScheduler(clip_sample=False, timestep_spacing="trailing"), {}
    scheduler.set_timesteps(10)
    vp = VP()
    sigmas = sampling_sigmas(vp, 10, "uniform")
    torch.testing.assert_close(vp.sigma_to_t(sigmas[:-1]), scheduler.timesteps.float(), rtol=0, atol=1e-3)
    eps_net = lambda x_t, t: torch.tanh(x_t) * 0.5 + t.view(-1, 1, 1, 1) / 1000  # noqa: E731 (any eps-net will do)
    x_T = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    x, g = x_T, torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:
        x = scheduler.step(eps_net(x, t.float().expand(8)), t, x, generator=g, **step_kwargs).prev_sample
    denoiser = Denoiser(lambda x_in, c_noise, labels: eps_net(x_in, c_noise), vp)
    # diffusers' x_T is x_sigma * sqrt(abar_T); its last step lands on abar = 1, i.e. sigma space itself.
    start = x_T * vp.prior_std(float(sigmas[0]))
    kwargs = dict(eta=eta) if sampler == "ddim" else {}
    ours = SAMPLERS[sampler](lambda x, sigma: denoiser(x, sigma), start, sigmas, generator=torch.Generator().manual_seed(1), **kwargs)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler,kwargs", [("euler", {}), ("heun", {}), ("heun", dict(s_churn=5.0)), ("dpmpp_2m", {}), ("ddim", {}), ("ddpm", {})])
def test_network_evaluations_counts_calls(sampler, kwargs):
    calls = []
    denoise = lambda x, sigma: calls.append(1) or 0.5 * x  # noqa: E731
    SAMPLERS[sampler](denoise, torch.randn(2, 3), karras_sigmas(10, 0.01, 10.0), **kwargs)
    assert len(calls) == network_evaluations(sampler, 10)
    assert network_evaluations("heun", 10) == 19 and network_evaluations("euler", 10) == 10
    with pytest.raises(ValueError, match="heun"):
        network_evaluations("plms", 10)


# 4. Classifier-free guidance. --------------------------------------------------------------------

class CountingNet(torch.nn.Module):
    """A class-conditional toy net that records the batch size of each call."""

    def __init__(self):
        super().__init__()
        self.batches = []
        self.embed = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # 3 classes + null = 3

    def forward(self, x_in, c_noise, cond):
        self.batches.append(len(x_in))
        emb = 0 if cond is None else self.embed[cond["label"]]
        return torch.tanh(x_in) + emb * c_noise.view(-1, 1, 1, 1)


def test_guidance():
    net = CountingNet()
    d = Denoiser(net, EDM())
    labels = ClassLabels(null=3)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    sigma, cond = torch.tensor(1.3), labels.encode(torch.tensor([0, 1, 2, 1, 0]))
    d_cond, d_uncond = d(x, sigma, cond), d(x, sigma, labels.null_like(cond))
    net.batches.clear()
    # w = 1 and unlabelled: one plain call.
    torch.testing.assert_close(guided_denoiser(d, cond, 1.0, labels.null_like)(x, sigma), d_cond)
    torch.testing.assert_close(guided_denoiser(d, None, 3.0, labels.null_like)(x, sigma), d(x, sigma))
    assert net.batches == [5, 5, 5]
    net.batches.clear()
    # w = 0 is the unconditional model; any w is D_u + w (D_c - D_u), from one batched call.
    torch.testing.assert_close(guided_denoiser(d, cond, 0.0, labels.null_like)(x, sigma), d_uncond)
    torch.testing.assert_close(guided_denoiser(d, cond, 2.5, labels.null_like)(x, sigma), d_uncond + 2.5 * (d_cond - d_uncond))
    assert net.batches == [10, 10]
    with pytest.raises(ValueError, match="null condition"):
        guided_denoiser(d, cond, 2.0)


def test_label_dropout_puts_the_null_label_where_not_kept():
    labels = ClassLabels(null=3)
    cond = labels.drop(labels.encode(torch.tensor([0, 1, 2, 1])), torch.tensor([True, False, True, False]))
    assert cond["label"].tolist() == [0, 3, 2, 3]
    assert labels.drop(None, torch.tensor([True])) is None and labels.encode(None) is None


# 5. Reproducibility. -----------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,kwargs", [("heun", dict(s_churn=20.0)), ("ddim", dict(eta=0.5)), ("ddpm", {})])
def test_stochastic_samplers_reproducible(sampler, kwargs):
    formulation = EDM()
    sigmas = sampling_sigmas(formulation, 12)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(64, *SHAPE, generator=g) * sigmas[0]
        return SAMPLERS[sampler](ideal_denoise_fn(formulation), x, sigmas, generator=g, **kwargs)

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_loss_reproducible():
    formulation = VP()
    d = Denoiser(IdealNet(formulation), formulation)
    x0 = gaussian_data(64)
    loss = lambda seed: denoising_loss(d, x0, weighting="min_snr", generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert loss(0).shape == (64,)
    assert torch.equal(loss(0), loss(0))
    assert not torch.equal(loss(0), loss(1))


def test_simplex_readout_with_bayes_logits_is_the_exact_denoiser():
    """A category one-hot in {-1, 1} (prior p) beside a Gaussian number: the posterior of category k given x is
    proportional to p_k exp(2 x_k / sigma^2) (every one-hot has the same norm). Denoiser's simplex read-out of those
    logits must be the exact E[x0 | x] = 2 posterior - 1 there, while the number keeps c_skip x + c_out F."""
    edm, p = EDM(), torch.tensor([0.6, 0.3, 0.1])

    def net(x_in, c_noise, cond):
        sigma = torch.exp(4 * c_noise).view(-1, 1)  # EDM: c_noise = log(sigma) / 4
        _, _, c_in, _ = edm.scalings(sigma.view(-1))
        x = x_in / c_in.view(-1, 1)
        logits = torch.log(p) + 2 * x[:, 1:] / sigma**2
        return torch.cat([torch.zeros_like(x[:, :1]), logits], dim=1)

    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) * 2
    for sigma in (0.05, 0.7, 20.0):
        out = Denoiser(net, edm, simplex=[slice(1, 4)])(x, sigma)
        one_hots = 2 * torch.eye(3) - 1
        log_post = torch.log(p) - ((x[:, None, 1:] - one_hots) ** 2).sum(-1) / (2 * sigma**2)
        exact = torch.softmax(log_post, dim=-1) @ one_hots
        torch.testing.assert_close(out[:, 1:], exact, rtol=1e-5, atol=1e-5)
        c_skip, _, _, _ = edm.scalings(torch.tensor([sigma]))
        torch.testing.assert_close(out[:, 0], c_skip * x[:, 0])
        assert torch.allclose(out[:, 1:].sum(-1), torch.tensor(-1.0))  # 2 * 1 - 3: on the simplex
    plain = Denoiser(net, edm)(x, 0.7)
    assert not torch.allclose(plain[:, 1:], out[:, 1:])


def test_loss_weighs_simplex_categories_by_one_and_numbers_by_lambda():
    edm = EDM()
    net = lambda x_in, c_noise, cond: torch.tanh(x_in) * (1 + c_noise.view(-1, 1))  # noqa: E731
    d = Denoiser(net, edm, simplex=[slice(1, 3)])
    x0 = torch.tensor([[0.3, 1.0, -1.0], [-0.5, -1.0, 1.0]])
    sigma, noise = torch.tensor([0.03, 2.0]), torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    err = (d(x0 + sigma[:, None] * noise, sigma) - x0) ** 2
    lam = loss_weight(sigma, edm, "edm")
    expected = (lam * err[:, 0] + err[:, 1:].sum(-1)) / 3
    torch.testing.assert_close(denoising_loss(d, x0, weighting="edm", sigma=sigma, noise=noise), expected)
