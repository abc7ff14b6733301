"""Optimizers, LR schedules, EMA and config against closed-form answers and clear errors."""

from __future__ import annotations


import pytest
import torch

from difftrain.config import PRESETS, OptimConfig, describe_fields, load_config
from difftrain.errors import UserError
from difftrain.training.ema import EMA, ema_beta
from difftrain.training.lamb import Lamb
from difftrain.training.optim import learning_rate


def test_lamb_first_step_matches_closed_form():
    # Step 1: Adam's bias-corrected direction is g/(|g|+eps) ~ sign(g); LAMB rescales the
    # update u = sign(g) + wd*w by ||w||/||u||.
    w0 = torch.tensor([3.0, -4.0])
    g = torch.tensor([0.5, 2.0])
    p = torch.nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.1, eps=0.0, weight_decay=0.01)
    p.grad = g.clone()
    opt.step()
    u = torch.sign(g) + 0.01 * w0
    expected = w0 - 0.1 * (w0.norm() / u.norm()) * u
    torch.testing.assert_close(p.detach(), expected)


def test_lamb_zero_weights_use_plain_adam_step():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = Lamb([p], lr=0.5, eps=0.0)
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.5, 0.5, -0.5]))


def test_learning_rate_schedules():
    cfg = OptimConfig(lr=1.0, warmup_images=100, schedule="constant")
    assert learning_rate(cfg, 50, 1000) == pytest.approx(0.5)
    assert learning_rate(cfg, 500, 1000) == pytest.approx(1.0)
    cos = OptimConfig(lr=1.0, warmup_images=100, schedule="cosine")
    assert learning_rate(cos, 550, 1000) == pytest.approx(0.5)
    assert learning_rate(cos, 1000, 1000) == pytest.approx(0.0, abs=1e-12)
    inv = OptimConfig(lr=1.0, warmup_images=0, schedule="inverse_sqrt", decay_images=100)
    assert learning_rate(inv, 50, 10**6) == pytest.approx(1.0)
    assert learning_rate(inv, 400, 10**6) == pytest.approx(0.5)


def test_ema_halves_after_one_halflife():
    # After `halflife` images, the initial weights' share in the EMA is one half.
    batch, halflife = 32, 3200
    beta = ema_beta(batch, 10**9, halflife, rampup=None)
    assert beta ** (halflife / batch) == pytest.approx(0.5)
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(net.weight)
    ema = EMA(net)
    torch.nn.init.zeros_(net.weight)
    for _ in range(halflife // batch):
        ema.update(net, beta)
    assert ema.net.weight.item() == pytest.approx(0.5)
    # Ramp-up: early in training the half-life is a fraction of the images seen.
    assert ema_beta(batch, 1000, halflife, rampup=0.1) == pytest.approx(0.5 ** (batch / 100))


def test_presets_are_valid_and_overrides_apply():
    for name in PRESETS:
        load_config(name)
    cfg = load_config("digits", overrides=["train.batch_size=64", "optim.name=lamb", "model.channels=[32, 64]"])
    assert (cfg.train.batch_size, cfg.optim.name, cfg.model.unet.channels) == (64, "lamb", [32, 64])
    # The per-architecture key, and the flat key of configs written before model.unet existed, set the same field.
    assert load_config("digits", overrides=["model.unet.channels=[32, 64]"]).model == cfg.model


@pytest.mark.parametrize("override, message", [
    ("train.batch_sise=3", "train.batch_sise"),
    ("train.batch_size=abc", "train.batch_size"),
    ("diffusion.formulation=flow", "diffusion.formulation"),
    ("train.accumulation=3", "not divisible"),
    ("model.channels=[16, 20]", "norm_groups"),
    ("no_equals_sign", "key=value"),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(UserError, match=message):
        load_config("digits", overrides=[override])


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="choose one of"):
        load_config("cifar")
    with pytest.raises(UserError, match="does not exist"):
        load_config(file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(file=bad)


def test_every_field_has_a_description():
    rows = describe_fields()
    assert len(rows) > 40
    assert all(desc for _, _, desc in rows), [k for k, _, d in rows if not d]


def test_config_choices_match_the_implementations():
    import typing

    from difftrain.config import DiffusionConfig, SampleConfig
    from difftrain.diffusion import MASKED_SAMPLERS, SAMPLERS, WEIGHTINGS

    assert set(typing.get_args(SampleConfig.model_fields["sampler"].annotation)) == {*SAMPLERS, *MASKED_SAMPLERS}
    assert set(typing.get_args(DiffusionConfig.model_fields["weighting"].annotation)) == {"auto", *WEIGHTINGS}


def test_a_training_length_is_required():
    with pytest.raises(UserError, match="training needs a length"):
        load_config("digits", overrides=["train.duration_images=null"])
