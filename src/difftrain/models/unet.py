"""diffusers' UNet2DModel behind difftrain's network signature net(x, c_noise, labels)."""

from __future__ import annotations

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


def build_unet(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> UNet:
    """A UNet2DModel sized by the config for images of shape (H, W, C)."""
    height, width, channels = image_shape
    factor = 2 ** (len(cfg.channels) - 1)  # every level but the last halves the size
    if height % factor or width % factor:
        raise UserError(f"{height}x{width} images cannot pass {len(cfg.channels)} UNet levels (each halves the size): "
                        f"use fewer entries in model.channels or a --resolution divisible by {factor}")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    unet = UNet2DModel(
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
    )
    return UNet(unet)
