"""LoRA and freezing: exact at the start, trains only what it should, merges back into a plain UNet."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from difftrain.config import ModelConfig
from difftrain.errors import UserError
from difftrain.modalities import modality_for
from difftrain.models import build_network
from difftrain.models.lora import adapt, is_adapted, merge, parameter_counts
from difftrain.training.ema import EMA

TINY = ModelConfig(unet=dict(channels=[32, 32], attention=[False, True], layers_per_block=1, norm_groups=8, attention_head_dim=8))
RANK = 2


def fresh_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(TINY, modality_for({"kind": "image", "shape": [8, 8, 1]}), 3)


# The UNet's own choice of LoRA layers (finetune.lora_targets=[] means these).
LORA_TARGETS = fresh_net().lora_targets()


def batch() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, generator=g), {"label": torch.tensor([0, 1, 2, 3])}


def lora_net(train_only: list[str] | None = None) -> torch.nn.Module:
    return adapt(fresh_net(), rank=RANK, alpha=4.0, targets=LORA_TARGETS, train_only=train_only or [])


def train_a_little(net: torch.nn.Module, steps: int = 3) -> None:
    """A few AdamW steps towards a random target, enough to move every trainable weight."""
    x, c, labels = batch()
    target = torch.randn_like(x)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x, c, labels), target).backward()
        opt.step()


def contiguous_cpu(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint saves (training/checkpoint.py)."""
    return {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}


def test_adapted_net_starts_as_the_original():
    net = fresh_net()
    x, c, labels = batch()
    before = net(x, c, labels)
    adapted = lora_net()
    assert torch.equal(adapted(x, c, labels), before)
    assert (adapted.num_classes, adapted.null_label) == (3, 3)
    assert torch.equal(adapted(x, c), net(x, c))  # no labels: the null label, as before


def test_training_moves_only_lora_and_train_only():
    net = lora_net(train_only=["class_embedding", "conv_out"])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train_a_little(net)
    after = net.state_dict()
    for key, old in before.items():
        trained = ".lora_" in key or key.startswith(("unet.class_embedding.", "unet.conv_out."))
        assert torch.equal(after[key], old) != trained, key
    assert any(".base_layer." in key for key in before)  # the LoRA-wrapped base weights stayed put


def test_merge_gives_a_plain_unet_with_the_same_output():
    net = lora_net(train_only=["conv_out"])
    train_a_little(net)
    x, c, labels = batch()
    with torch.no_grad():
        expected = net(x, c, labels)
        merged = merge(net)
        assert not is_adapted(merged) and is_adapted(net)  # the training network keeps its LoRA
        torch.testing.assert_close(merged(x, c, labels), expected, atol=1e-5, rtol=0)
        assert torch.equal(net(x, c, labels), expected)

        plain = fresh_net()
        assert list(merged.state_dict()) == list(plain.state_dict())
        plain.load_state_dict(merged.state_dict())
        torch.testing.assert_close(plain(x, c, labels), expected, atol=1e-5, rtol=0)


def _lora_size(module: torch.nn.Module, rank: int) -> int:
    """LoRA's trainable parameters: A maps in -> rank (a conv A keeps the kernel), B maps rank -> out by 1x1."""
    if isinstance(module, torch.nn.Linear):
        return rank * (module.in_features + module.out_features)
    kh, kw = module.kernel_size
    return rank * (module.in_channels * kh * kw + module.out_channels)


def test_parameter_counts_match_the_closed_form():
    plain = fresh_net()
    total = sum(p.numel() for p in plain.parameters())
    assert parameter_counts(plain) == (total, total)
    targeted = [m for n, m in plain.core().named_modules() if any(n == t or n.endswith("." + t) for t in LORA_TARGETS)]
    assert {type(m) for m in targeted} == {torch.nn.Linear, torch.nn.Conv2d}
    added = sum(_lora_size(m, RANK) for m in targeted)

    assert parameter_counts(lora_net()) == (added, total + added)
    embedding = plain.core().class_embedding.weight.numel()
    assert parameter_counts(lora_net(train_only=["class_embedding"])) == (added + embedding, total + added)


def test_rank_zero_trains_everything_or_only_train_only():
    net = fresh_net()
    assert adapt(net, rank=0, alpha=None, targets=LORA_TARGETS, train_only=[]) is net
    assert all(p.requires_grad for p in net.parameters())

    net = adapt(fresh_net(), rank=0, alpha=None, targets=LORA_TARGETS, train_only=["up_blocks"])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("unet.up_blocks.") for n in trainable)
    assert parameter_counts(net)[0] == sum(p.numel() for p in net.core().up_blocks.parameters())
    assert merge(net) is net and list(net.state_dict()) == list(fresh_net().state_dict())


def test_state_dict_round_trip_through_safetensors(tmp_path):
    """Resume: the same adapt call on a fresh network loads what a checkpoint saved."""
    net = lora_net(train_only=["class_embedding"])
    train_a_little(net)
    save_file(contiguous_cpu(net), tmp_path / "model.safetensors")

    resumed = lora_net(train_only=["class_embedding"])
    resumed.load_state_dict(load_file(tmp_path / "model.safetensors"))
    x, c, labels = batch()
    assert torch.equal(resumed(x, c, labels), net(x, c, labels))
    assert parameter_counts(resumed) == parameter_counts(net)


def test_deepcopy_and_ema_work(tmp_path):
    net = lora_net()
    train_a_little(net)
    x, c, labels = batch()
    assert torch.equal(copy.deepcopy(net)(x, c, labels), net(x, c, labels))
    ema = EMA(net)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    train_a_little(net)  # the network moves on, the EMA's copy stays behind
    after = {name: p.detach() for name, p in net.named_parameters()}
    assert any("lora_" in name and not torch.equal(before[name], p) for name, p in after.items())
    ema.update(net, 0.25)
    # ema = beta*ema + (1-beta)*net, weight by weight: LoRA weights blended, frozen ones unchanged.
    for name, p in ema.net.named_parameters():
        torch.testing.assert_close(p, 0.25 * before[name] + 0.75 * after[name], rtol=0, atol=1e-6)
    save_file(contiguous_cpu(ema.net), tmp_path / "ema.safetensors")  # no shared tensors in the copy either
    assert list(merge(ema.net).state_dict()) == list(fresh_net().state_dict())


@pytest.mark.parametrize("targets, words", [
    (["to_qq"], ["finetune.lora_targets", "'to_qq'", "to_q", "conv1"]),
    (["norm1"], ["finetune.lora_targets", "GroupNorm"]),
])
def test_bad_target_is_a_user_error(targets, words):
    with pytest.raises(UserError) as error:
        adapt(fresh_net(), rank=RANK, alpha=None, targets=targets, train_only=[])
    assert all(w in str(error.value) for w in words)


def test_bad_prefix_is_a_user_error():
    for rank in (0, RANK):
        with pytest.raises(UserError, match=r"finetune\.train_only.*'upblocks'.*up_blocks"):
            adapt(fresh_net(), rank=rank, alpha=None, targets=LORA_TARGETS, train_only=["upblocks"])


def test_no_targets_means_the_networks_own():
    by_default = adapt(fresh_net(), rank=RANK, alpha=None, targets=[], train_only=[])
    named = adapt(fresh_net(), rank=RANK, alpha=None, targets=LORA_TARGETS, train_only=[])
    assert [n for n, p in by_default.named_parameters() if p.requires_grad] == [n for n, p in named.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n, _ in by_default.named_parameters())
