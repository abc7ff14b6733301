"""LoRA and freezing for fine-tuning (through peft); `merge` folds LoRA back into a plain network.

LoRA (Hu et al. 2021) trains W + (alpha/r)·B·A on chosen layers of a frozen network. B starts
at zero, so the adapted network first computes exactly what the original did.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from difftrain.errors import UserError

# Layer types peft's LoRA adapts and can merge back into their weights.
LORA_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)


def adapt(net: torch.nn.Module, *, rank: int, alpha: float | None, targets: list[str], train_only: list[str]) -> torch.nn.Module:
    """Add LoRA of `rank` to the `targets` layers of net.core() (default: the network's own `lora_targets()`)
    and freeze all but LoRA and `train_only`.

    Changes `net` in place and returns it: the network wrapper (its call, num_classes, null_label)
    stays, the LoRA layers replace the targeted ones inside its core. Rank 0 trains no LoRA:
    only `train_only` is trained, or everything when it is empty (full fine-tuning). The same
    call on a fresh network rebuilds the structure a saved state dict of this one loads into.
    """
    inner = net.core()
    targets = list(targets) or net.lora_targets()
    _check_prefixes(inner, train_only)
    if rank:
        _check_targets(inner, targets)
        # Dropout 0 and peft's default init (B = 0) keep the first output exact; peft freezes the rest.
        config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=0.0, target_modules=list(targets))
        inject_adapter_in_model(config, inner)
    elif train_only:
        inner.requires_grad_(False)
    for name, param in inner.named_parameters():
        if _under(_plain_name(name), train_only):
            param.requires_grad_(True)
    return net


def is_adapted(net: torch.nn.Module) -> bool:
    """Whether the network holds LoRA layers (and so needs `merge` before export)."""
    return any(isinstance(m, BaseTunerLayer) for m in net.modules())


def merge(net: torch.nn.Module) -> torch.nn.Module:
    """A plain network with each LoRA delta (alpha/r)·B·A added to its layer's weight.

    `net` itself is left as it is (training goes on); a network without LoRA is returned as is.
    """
    if not is_adapted(net):
        return net
    merged = copy.deepcopy(net)
    inner = merged.core()
    for name, module in list(inner.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(inner.get_submodule(parent), child, module.get_base_layer())
    if hasattr(inner, "peft_config"):  # peft's note that adapters were injected; none are left
        del inner.peft_config
    return merged


def parameter_counts(net: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; the total counts every weight once, LoRA factors included."""
    params = list(net.parameters())  # deduplicated by identity, so shared weights count once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _plain_name(name: str) -> str:
    """A parameter's name as in the network without LoRA (peft moves the weight to `base_layer`)."""
    return name.replace(".base_layer.", ".")


def _short_name(name: str) -> str:
    """The name ending a user would target: 'conv1', or 'to_out.0' for a list entry."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def _check_targets(unet: torch.nn.Module, targets: list[str]) -> None:
    layers = sorted({_short_name(n) for n, m in unet.named_modules() if isinstance(m, LORA_LAYERS)})
    hint = f"layers LoRA can adapt: {', '.join(layers)}"
    if not targets:
        raise UserError(f"finetune.lora_targets is empty: name layers for LoRA ({hint}) or set finetune.lora_rank to 0")
    for target in targets:
        # peft's matching for a list of targets: the whole name or its ending after a dot.
        found = [m for n, m in unet.named_modules() if n == target or n.endswith("." + target)]
        if not found:
            raise UserError(f"finetune.lora_targets: no layer of the network is named {target!r} or ends with it; {hint}")
        wrong = sorted({type(m).__name__ for m in found if not isinstance(m, LORA_LAYERS)})
        if wrong:
            raise UserError(f"finetune.lora_targets: {target!r} names {', '.join(wrong)} modules, which LoRA cannot adapt "
                            f"(only Linear, Conv1d, Conv2d and Embedding layers); {hint}")


def _check_prefixes(unet: torch.nn.Module, prefixes: list[str]) -> None:
    names = [_plain_name(n) for n, _ in unet.named_parameters()]
    for prefix in prefixes:
        if not any(_under(n, [prefix]) for n in names):
            tops = [n for n, m in unet.named_children() if any(True for _ in m.parameters())]
            raise UserError(f"finetune.train_only: no weights of the network lie under {prefix!r}; give module names "
                            f"such as {', '.join(tops)} or a path inside one (e.g. up_blocks.1)")
