"""Post-hoc EMA (EDM2): the power-function profiles against closed forms, their reconstruction, snapshots kept through
a resume exactly, and `eval --ema-length` picking the best length."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import integrate

from difftrain.config import load_config
from difftrain.errors import UserError
from difftrain.store.checkpoint import latest_checkpoint
from difftrain.store.posthoc_ema import (coefficients, exponent, power_beta, profile_dot, reconstruct,
                                         reconstructed_checkpoint, snapshots)
from difftrain.training.ema import PowerEMAs
from tests.conftest import tiny_overrides
from tests.test_cli import cli, difftrain


def test_the_exponent_gives_the_relative_length():
    for sigma in (0.01, 0.05, 0.10, 0.25):
        gamma = exponent(sigma)
        assert sigma ** 2 == pytest.approx((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))
    assert exponent(0.10) == pytest.approx(6.94, abs=0.01) and exponent(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's
    with pytest.raises(UserError, match="outside"):
        exponent(0.3)


def test_profile_inner_products_match_numerical_integrals():
    def density(t, gamma):
        return lambda tau: (gamma + 1) * tau ** gamma / t ** (gamma + 1) if tau <= t else 0.0

    for t_a, g_a, t_b, g_b in ((100, 6.9, 60, 17.0), (30, 3.0, 30, 5.0), (10, 17.0, 80, 6.9)):
        expected = integrate.quad(lambda tau: density(t_a, g_a)(tau) * density(t_b, g_b)(tau), 0, min(t_a, t_b))[0]
        assert profile_dot(t_a, g_a, t_b, g_b) == pytest.approx(expected, rel=1e-6)


def test_a_parameter_growing_linearly_is_averaged_and_reconstructed_in_closed_form():
    """theta(tau) = tau: an EMA of exponent gamma at t averages it to t (gamma + 1) / (gamma + 2)."""
    batch, steps = 4, 2000
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    emas = PowerEMAs(net, [0.05, 0.10])
    times, sigmas, values = [], [], []
    for step in range(1, steps + 1):
        with torch.no_grad():
            net.weight.fill_(step * batch)  # the weight is the images seen
        emas.update(net, step * batch, batch, None)
        if step % 125 == 0:
            for sigma, ema in zip(emas.sigmas, emas.emas):
                times.append(step * batch)
                sigmas.append(sigma)
                values.append(ema.net.weight.item())
    for sigma, value in zip(sigmas[-2:], values[-2:]):  # the discrete EMA follows the continuous profile
        gamma = exponent(sigma)
        assert value == pytest.approx(steps * batch * (gamma + 1) / (gamma + 2), rel=1e-3)
    # A length never stored, at a snapshot's time: the snapshots' combination averages theta as that profile would.
    for sigma in (0.03, 0.07, 0.15):
        x = coefficients(times, sigmas, times[-1], sigma)
        gamma = exponent(sigma)
        assert x.sum() == pytest.approx(1)
        assert float(x @ np.array(values)) == pytest.approx(times[-1] * (gamma + 1) / (gamma + 2), rel=2e-3)
    # A stored length at a snapshot's time is that snapshot.
    x = coefficients(times, sigmas, times[-1], 0.10)
    assert x[-1] == pytest.approx(1, abs=1e-6) and np.abs(x[:-1]).max() < 1e-6


@pytest.fixture(scope="module")
def posthoc_run(digits_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "posthoc"
    cli("train", "--out", run, "--no-progress", *tiny_overrides(digits_dir, **{
        "train.posthoc_ema": "[0.05, 0.10]", "train.duration_steps": 8, "train.checkpoint_every_images": 64}))
    return run


def test_snapshots_are_kept_and_a_resume_continues_the_profiles_exactly(digits_dir, posthoc_run, tmp_path):
    # Every 1/16 of the 128 images, and at the checkpoints: 8 snapshots of each profile.
    assert [(s, at) for s, at, _ in snapshots(posthoc_run)] == [(s, 16 * k) for k in range(1, 9) for s in (0.05, 0.10)]
    checkpoint = latest_checkpoint(posthoc_run)
    kept = checkpoint.posthoc_weights()
    assert kept and {k.split("/")[0] for k in kept} == {"0.0500", "0.1000"}
    # The same run interrupted at its first checkpoint, a stray snapshot of the crash left behind, and resumed.
    overrides = tiny_overrides(digits_dir, **{"train.posthoc_ema": "[0.05, 0.10]", "train.duration_steps": 8,
                                              "train.checkpoint_every_images": 64})
    interrupted = tmp_path / "interrupted"
    cli("train", "--out", interrupted, "--no-progress", *overrides, "train.duration_steps=4")
    stray = interrupted / "posthoc" / "ema-0.0500-000000112.safetensors"
    stray.write_bytes((posthoc_run / "posthoc" / "ema-0.0500-000000112.safetensors").read_bytes()[:100])
    cli("train", "--out", interrupted, "--no-progress", "--resume", *overrides)
    for _, at, path in snapshots(posthoc_run):
        again = load_file(interrupted / "posthoc" / path.name)
        assert all(torch.equal(v, again[k]) for k, v in load_file(path).items()), f"{path.name} differs after the resume"
    refused = difftrain("train", "--out", interrupted, "--resume", *overrides, "train.duration_steps=12",
                        "train.posthoc_ema=[0.05, 0.2]")
    assert refused.returncode == 2 and "no post-hoc EMA of sigma_rel 0.2" in " ".join(refused.stderr.split())


def test_eval_sweeps_the_ema_length_and_keeps_the_best(posthoc_run):
    result = cli("eval", posthoc_run, "--ema-length", "0.05,0.2", "--n", "40", "--metrics", "fid", "--steps", "2", "--json")
    records = json.loads(result.stdout[result.stdout.index("["):])
    assert [r["ema_length"] for r in records] == [0.05, 0.2] and all(r["images"] == 128 for r in records)
    best = json.loads((posthoc_run / "posthoc" / "best.json").read_text())
    assert best["metric"] == "fid" and best["best"] == min(r["fid"] for r in records)
    assert best["best_ema_length"] == next(r["ema_length"] for r in records if r["fid"] == best["best"])
    readme = (posthoc_run / "README.md").read_text()
    assert "## Post-hoc EMA" in readme and f"EMA length {best['best_ema_length']:g} (best)" in readme
    # Each length is a checkpoint folder that sample (and export) read like any other.
    folder = posthoc_run / "posthoc" / "ckpt-000000128-ema-0.2000"
    assert json.loads((folder / "info.json").read_text())["posthoc_ema"]["sigma_rel"] == 0.2
    cli("sample", posthoc_run, "--checkpoint", folder, "--n", "2", "--steps", "2", "--out", folder.parent / "s.npz")
    # The stored length at the last snapshot is the stored EMA itself.
    weights, made = reconstruct(posthoc_run, 0.10, 128)
    stored = load_file(posthoc_run / "posthoc" / "ema-0.1000-000000128.safetensors")
    assert made["largest_coefficient"] == pytest.approx(1, abs=1e-5)
    assert all(torch.allclose(weights[k], v, atol=1e-5) for k, v in stored.items())
    assert reconstructed_checkpoint(posthoc_run, 0.2, 128) == folder  # reused, not made again


def test_post_hoc_ema_errors_name_the_fix(digits_dir, tmp_path):
    with pytest.raises(UserError, match="train.posthoc_ema"):
        load_config("digits", overrides=["train.posthoc_ema=[0.05, 0.4]"])
    plain = tmp_path / "plain"
    cli("train", "--out", plain, "--no-progress", *tiny_overrides(digits_dir))
    refused = difftrain("eval", plain, "--ema-length", "0.1", "--n", "20")
    assert refused.returncode == 2 and "train.posthoc_ema" in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr


def test_power_beta_starts_at_the_network_and_grows():
    assert power_beta(0.1, 4, 4) == 0.0  # the first update copies the network
    betas = [power_beta(0.1, 4 * k, 4) for k in range(2, 100)]
    assert all(a < b for a, b in zip(betas, betas[1:])) and betas[-1] < 1
