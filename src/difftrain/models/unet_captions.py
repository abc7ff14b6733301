"""diffusers' UNet2DConditionModel for captioned images: the UNet of Stable Diffusion and GLIDE, whose attention levels
also attend to the caption (cross-attention), behind net(x, c_noise, {"caption": (B, T) ids}).

The caption encoder (models/caption_encoder.py) is trained with it from scratch. Its tokens are the
`encoder_hidden_states`. The empty caption (padding only) is the null one of caption dropout and guidance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from difftrain.config import UNetConfig
from difftrain.errors import UserError
from difftrain.models.caption_encoder import CaptionEncoder
from difftrain.models.unet import options_beyond, unet_arguments


class CaptionedUNet(torch.nn.Module):
    def __init__(self, unet: UNet2DConditionModel, captions: CaptionEncoder):
        super().__init__()
        self.unet = unet
        self.captions = captions
        self.caption_pad = captions.pad_id

    null_label = None  # conditioned on captions, not labels

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        ids = (cond or {}).get("caption")
        if ids is None:
            ids = torch.full((x.shape[0], self.captions.length), self.caption_pad, device=x.device)
        context, _ = self.captions(ids.long())
        return self.unet(x, c_noise, encoder_hidden_states=context).sample

    def core(self) -> "CaptionedUNet":
        return self

    def lora_targets(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"]


def captioned_unet_arguments(cfg: UNetConfig, shape: tuple[int, ...], width: int) -> dict[str, Any]:
    """UNet2DConditionModel's arguments for the config, model tensors (C, H, W) and caption tokens `width` wide."""
    plain = unet_arguments(cfg.model_copy(update={"unet_options": {}}), shape, 0)
    return dict(
        sample_size=plain["sample_size"], in_channels=plain["in_channels"], out_channels=plain["out_channels"],
        block_out_channels=plain["block_out_channels"], layers_per_block=plain["layers_per_block"],
        norm_num_groups=plain["norm_num_groups"], dropout=plain["dropout"], cross_attention_dim=width,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
        # diffusers' UNet2DConditionModel reads `attention_head_dim` as the number of heads (a naming it keeps).
        attention_head_dim=tuple(c // cfg.attention_head_dim for c in cfg.channels)) | cfg.unet_options


def build_captioned_unet(cfg: UNetConfig, shape: tuple[int, ...], *, caption_vocab: int = 0, caption_length: int = 0,
                         caption_pad: int | None = None, caption_encoder: torch.nn.Module | None = None) -> CaptionedUNet:
    """The configured UNet with cross-attention at its attention levels (and in its middle block). A pretrained
    `caption_encoder` is attended to as it is (cross_attention_dim: its width), as Stable Diffusion's UNet attends to
    CLIP's hidden states; else a caption encoder of model.unet.caption_width is trained with it. model.unet.unet_options
    are further UNet2DConditionModel arguments (set by --init from a Stable Diffusion folder)."""
    width = cfg.caption_width if caption_encoder is None else caption_encoder.width
    try:
        unet = UNet2DConditionModel(**captioned_unet_arguments(cfg, shape, width))
    except (TypeError, ValueError) as e:
        raise UserError(f"the network cannot be built from model.unet.unet_options={cfg.unet_options}: {e}") from None
    if caption_encoder is not None:
        return CaptionedUNet(unet, caption_encoder)
    heads = max(1, width // 32)
    return CaptionedUNet(unet, CaptionEncoder(caption_vocab, caption_length, caption_pad, width, cfg.caption_depth, heads))


def captioned_model_fields(unet_config: dict[str, Any]) -> dict[str, Any]:
    """UNetConfig fields that rebuild a UNet2DConditionModel of this config.json exactly (cf. unet.model_fields)."""
    c = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    channels = list(c.get("block_out_channels", (320, 640, 1280, 1280)))
    heads = c.get("attention_head_dim", 8)
    heads = [heads] * len(channels) if isinstance(heads, int) else list(heads)
    # One channels-per-head for every level when the heads allow it (difftrain's own); else the option wins.
    per_head = channels[0] // heads[0] if heads and heads[0] else 0
    uniform = per_head and all(h * per_head == ch for h, ch in zip(heads, channels))
    fields = {
        "channels": channels,
        "attention": [t.startswith(("CrossAttn", "Attn")) for t in c.get("down_block_types", ())] or [False] * len(channels),
        "layers_per_block": c.get("layers_per_block", 2) if isinstance(c.get("layers_per_block", 2), int) else 2,
        "attention_head_dim": per_head if uniform else math.gcd(*channels),
        "norm_groups": c.get("norm_num_groups", 32),
        "dropout": c.get("dropout", 0.0),
    }
    shape = (c.get("in_channels", 4),) + (8 * 2 ** len(channels),) * 2
    built = captioned_unet_arguments(UNetConfig(**fields), shape, c.get("cross_attention_dim", 1280))
    return fields | {"unet_options": options_beyond(c, built, UNet2DConditionModel)}
