"""The series networks (model.arch=unet1d, transformer1d): shapes, zero start, conditioning, training, config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from difftrain.config import Transformer1DConfig, UNet1DConfig, load_config
from difftrain.errors import UserError
from difftrain.models import build_network
from difftrain.models.transformer1d import Transformer1D, build_transformer1d
from difftrain.models.unet1d import UNet1D, build_unet1d

ARCHS = ["unet1d", "transformer1d"]


def tiny(arch: str, channels: int, num_classes: int = 0, **overrides) -> torch.nn.Module:
    if arch == "unet1d":
        cfg = UNet1DConfig(**{"channels": [8, 16], "attention": [False, True], "layers_per_block": 1, "attention_heads": 2,
                              "embedding_dim": 16, "norm_groups": 4, **overrides})
        return UNet1D(channels, num_classes, cfg)
    cfg = Transformer1DConfig(**{"width": 16, "depth": 2, "heads": 2, "embedding_dim": 16, **overrides})
    return Transformer1D(channels, num_classes, cfg)


def batch(b: int, c: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, length, generator=g)
    mask = (torch.rand(b, c, length, generator=g) < 0.5).float()
    observed = torch.randn(b, c, length, generator=g) * mask
    return x, torch.randn(b, generator=g), {"observed": observed, "mask": mask}


def train_steps(net: torch.nn.Module, steps: int, c: int, length: int, lr: float = 1e-2, num_classes: int = 0) -> list[float]:
    """Adam steps on a denoising-like target: the clean series from a noisy one, given some observed values."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t = torch.linspace(0, 6.28, length)
    clean = torch.stack([torch.sin(t * (k + 1)) for k in range(c)])[None].expand(16, c, length)
    losses = []
    for _ in range(steps):
        noise = torch.randn_like(clean)
        mask = (torch.rand_like(clean) < 0.3).float()
        cond = {"observed": clean * mask, "mask": mask}
        if num_classes:
            cond["label"] = torch.randint(0, num_classes + 1, (clean.shape[0],))
        loss = (net(clean + 0.5 * noise, torch.zeros(clean.shape[0]), cond) - clean).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("length", [24, 25, 7])
@pytest.mark.parametrize("c", [1, 6])
def test_output_is_shaped_like_input_and_zero_at_init(arch, length, c):
    net = tiny(arch, c, patch=3) if arch == "transformer1d" else tiny(arch, c)
    x, c_noise, cond = batch(3, c, length)
    for conditions in (cond, None):
        out = net(x, c_noise, conditions)
        assert out.shape == x.shape
        assert torch.count_nonzero(out) == 0
    assert net(x, 0.3, cond).shape == x.shape  # one noise level for the batch


@pytest.mark.parametrize("arch", ARCHS)
def test_observed_values_reach_the_output_only_where_observed(arch):
    net = tiny(arch, 3)
    train_steps(net, 3, 3, 24)
    net.eval()
    x, c_noise, cond = batch(4, 3, 24, seed=1)
    base = net(x, c_noise, cond)
    moved = dict(cond, observed=cond["observed"] + 3.0 * cond["mask"])  # other values at observed positions
    assert not torch.allclose(net(x, c_noise, moved), base, atol=1e-6)
    junk = dict(cond, observed=cond["observed"] + 3.0 * (1 - cond["mask"]))  # values where nothing is observed
    torch.testing.assert_close(net(x, c_noise, junk), base)
    more = dict(cond, mask=torch.ones_like(cond["mask"]))  # the mask itself is an input
    assert not torch.allclose(net(x, c_noise, more), base, atol=1e-6)
    # An all-zero mask is the null condition: exactly what cond None computes, whatever `observed` holds.
    null = {"observed": torch.randn_like(x), "mask": torch.zeros_like(x)}
    torch.testing.assert_close(net(x, c_noise, null), net(x, c_noise, None))
    torch.testing.assert_close(net(x, c_noise, {}), net(x, c_noise, None))


@pytest.mark.parametrize("arch", ARCHS)
def test_label_embedding_has_a_null_row(arch):
    net = tiny(arch, 2, num_classes=3)
    assert net.null_label == 3 and tiny(arch, 2).null_label is None
    assert net.label_embedding.num_embeddings == 4
    train_steps(net, 4, 2, 24, num_classes=3)
    x, c_noise, _ = batch(2, 2, 24)
    null = torch.full((2,), 3, dtype=torch.long)
    torch.testing.assert_close(net(x, c_noise, None), net(x, c_noise, {"label": null}))
    assert not torch.allclose(net(x, c_noise, {"label": torch.zeros(2, dtype=torch.long)}), net(x, c_noise, None))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_adam_steps_fit_a_denoising_target(arch):
    losses = train_steps(tiny(arch, 2), 60, 2, 24)
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_gets_a_gradient(arch):
    # Zero-initialised layers (the output; adaLN-Zero's modulations) pass no gradient upstream at first:
    # after a few steps every weight must take part.
    net = tiny(arch, 2, num_classes=2)
    train_steps(net, 3, 2, 25, num_classes=2)
    x, c_noise, cond = batch(4, 2, 25)
    cond["label"] = torch.tensor([0, 1, 2, 0])
    net.zero_grad()
    net(x, c_noise, cond).square().sum().backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_adapts_the_default_targets_and_merges_back(arch):
    from difftrain.models.lora import LORA_LAYERS, adapt, merge

    net = tiny(arch, 2)
    for target in net.lora_targets():
        found = [m for name, m in net.named_modules() if name.endswith("." + target)]
        assert found and all(isinstance(m, LORA_LAYERS) for m in found), target
    train_steps(net, 3, 2, 24)
    x, c_noise, cond = batch(2, 2, 24)
    before = net(x, c_noise, cond)
    adapt(net, rank=2, alpha=None, targets=[], train_only=[])
    torch.testing.assert_close(net(x, c_noise, cond), before)  # LoRA's B starts at zero
    for name, p in net.named_parameters():
        if "lora_B" in name:  # move every adapter, Conv1d ones included, so merging has something to fold in
            with torch.no_grad():
                p.normal_(0, 0.05)
    adapted = net(x, c_noise, cond)
    assert not torch.allclose(adapted, before)
    torch.testing.assert_close(merge(net)(x, c_noise, cond), adapted, atol=1e-5, rtol=1e-4)


def test_transformer_patches_pad_and_crop():
    net = tiny("transformer1d", 2, patch=4)
    train_steps(net, 3, 2, 24)
    x, c_noise, cond = batch(2, 2, 10)  # 10 steps: 3 tokens of 4, the last padded
    out = net(x, c_noise, cond)
    assert out.shape == x.shape and torch.count_nonzero(out) > 0


def test_builders_via_the_registry_and_wrong_ranks():
    for arch, kind in (("unet1d", UNet1D), ("transformer1d", Transformer1D)):
        cfg = load_config(overrides=[f"model.arch={arch}", "model.unet1d.channels=[8, 16]", "model.unet1d.attention=[false, true]",
                                     "model.unet1d.norm_groups=4", "model.unet1d.attention_heads=2",
                                     "model.transformer1d.width=16", "model.transformer1d.heads=2"]).model
        modality = SimpleNamespace(network_options={}, default_arch="mlp", model_shape=(6, 24))
        net = build_network(cfg, modality, num_classes=5)
        assert isinstance(net, kind) and net.num_classes == 5 and net.core() is net
        x = torch.randn(2, 6, 24)
        assert net(x, torch.zeros(2), None).shape == x.shape
    auto = load_config(overrides=["model.unet1d.channels=[8, 16]", "model.unet1d.attention=[false, true]"]).model
    assert isinstance(build_network(auto, SimpleNamespace(network_options={}, default_arch="unet1d", model_shape=(6, 24)), 0), UNet1D)
    assert isinstance(build_network(load_config().model, SimpleNamespace(network_options={}, default_arch="transformer1d", model_shape=(1, 7)), 0),
                      Transformer1D)
    for arch, build, cfg in (("unet1d", build_unet1d, UNet1DConfig()), ("transformer1d", build_transformer1d, Transformer1DConfig())):
        for shape in [(1, 8, 8), (24,)]:
            with pytest.raises(UserError, match=f"model.arch={arch}.*model.arch=auto"):
                build(cfg, shape, 0)


@pytest.mark.parametrize("overrides,key", [
    (["model.unet1d.norm_groups=6"], "model.unet1d.norm_groups"),
    (["model.unet1d.embedding_dim=33"], "model.unet1d.embedding_dim"),
    (["model.unet1d.attention=[true]"], "model.unet1d.attention"),
    (["model.unet1d.attention_heads=3"], "model.unet1d.attention_heads"),
    (["model.transformer1d.embedding_dim=17"], "model.transformer1d.embedding_dim"),
    (["model.transformer1d.heads=3"], "model.transformer1d.heads"),
    (["model.transformer1d.patch=0"], "model.transformer1d.patch"),
    (["model.arch=unet2d"], "model.arch"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(overrides=overrides)


def test_config_defaults():
    model = load_config(overrides=["model.arch=unet1d"]).model
    assert model.arch == "unet1d" and model.section("unet1d") is model.unet1d
    assert (model.unet1d.channels, model.unet1d.attention, model.unet1d.layers_per_block) == ([64, 128, 256], [False, False, True], 2)
    assert (model.unet1d.attention_heads, model.unet1d.embedding_dim, model.unet1d.norm_groups) == (4, 128, 8)
    t = load_config(overrides=["model.arch=transformer1d"]).model.transformer1d
    assert (t.width, t.depth, t.heads, t.embedding_dim, t.dropout, t.patch) == (128, 4, 4, 128, 0.0, 1)
    # The old top-level UNet keys still go to model.unet, not the series sections.
    assert load_config(overrides=["model.channels=[32, 64]", "model.attention=[false, true]"]).model.unet.channels == [32, 64]
