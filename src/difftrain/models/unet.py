"""diffusers' UNet2DModel behind difftrain's network signature net(x, c_noise, labels)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from diffusers import UNet2DModel

from difftrain.config import ModelConfig
from difftrain.errors import UserError


class UNet(torch.nn.Module):
    """UNet2DModel, class-conditional through its class embedding.

    With `num_classes` > 0 the embedding has one extra row, index `num_classes`,
    the "no label" used by label dropout and classifier-free guidance.
    """

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet
        embeds = unet.config.num_class_embeds
        self.num_classes = embeds - 1 if embeds else 0

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.num_classes else None

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and class_labels is None:
            class_labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        return self.unet(x, c_noise, class_labels=class_labels if self.num_classes else None).sample


def unet_arguments(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
    """UNet2DModel's arguments for the config, images of shape (H, W, C) and `num_classes` labels."""
    height, width, channels = image_shape
    factor = 2 ** (len(cfg.channels) - 1)  # every level but the last halves the size
    if height % factor or width % factor:
        raise UserError(f"{height}x{width} images cannot pass {len(cfg.channels)} UNet levels (each halves the size): "
                        f"use fewer entries in model.channels or a --resolution divisible by {factor}")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return dict(
        sample_size=(height, width),
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.channels),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_groups,
        dropout=cfg.dropout,
        num_class_embeds=num_classes + 1 if num_classes else None,
    ) | cfg.unet_options


def build_unet(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> UNet:
    """A UNet2DModel sized by the config for images of shape (H, W, C)."""
    try:
        return UNet(UNet2DModel(**unet_arguments(cfg, image_shape, num_classes)))
    except (TypeError, ValueError) as e:
        raise UserError(f"the network cannot be built from model.unet_options={cfg.unet_options}: {e}") from None


# Config keys that describe the data or the labels, not the architecture: the run sets them.
_NOT_ARCHITECTURE = {"sample_size", "in_channels", "out_channels", "num_class_embeds"}


def model_fields(unet_config: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig fields that rebuild a UNet2DModel of this config.json exactly: the fields
    difftrain names, and every other argument that differs from what they build as `unet_options`."""
    c = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    channels = list(c.get("block_out_channels", (224, 448, 672, 896)))
    head_dim = c.get("attention_head_dim", 8)
    if not head_dim or any(ch % head_dim for ch in channels):
        head_dim = None  # diffusers allows these; ModelConfig's check wants a divisor: take the gcd, the option wins
    fields = {
        "channels": channels,
        "attention": [t.startswith("Attn") for t in c.get("down_block_types", ())] or [False] * len(channels),
        "layers_per_block": c.get("layers_per_block", 2),
        "attention_head_dim": head_dim or math.gcd(*channels),
        "norm_groups": c.get("norm_num_groups", 32),
        "dropout": c.get("dropout", 0.0),
    }
    built = unet_arguments(ModelConfig(**fields), (8 * 2 ** len(channels),) * 2 + (3,), 0)
    defaults = {name: p.default for name, p in inspect.signature(UNet2DModel.__init__).parameters.items()}
    options = {}
    for key, value in c.items():
        if key in _NOT_ARCHITECTURE or key not in defaults:
            continue
        ours = built.get(key, defaults[key])
        if _plain(value) != _plain(ours):
            options[key] = value
    return fields | {"unet_options": options}


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal (JSON has only lists)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value
