"""diffusers' UNet2DConditionModel for captioned images: the UNet of Stable Diffusion and GLIDE, whose attention levels
also attend to the caption (cross-attention), behind net(x, c_noise, {"caption": (B, T) ids}).

The caption encoder (models/caption_encoder.py) is trained with it from scratch. Its tokens are the
`encoder_hidden_states`. The empty caption (padding only) is the null one of caption dropout and guidance.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from difftrain.config import UNetConfig
from difftrain.errors import UserError
from difftrain.models.caption_encoder import CaptionEncoder
from difftrain.models.unet import unet_arguments


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


def build_captioned_unet(cfg: UNetConfig, shape: tuple[int, ...], *, caption_vocab: int = 0, caption_length: int = 0,
                         caption_pad: int | None = None, caption_encoder: torch.nn.Module | None = None) -> CaptionedUNet:
    """The configured UNet with cross-attention at its attention levels (and in its middle block). A pretrained
    `caption_encoder` is attended to as it is (cross_attention_dim: its width), as Stable Diffusion's UNet attends to
    CLIP's hidden states; else a caption encoder of model.unet.caption_width is trained with it."""
    if cfg.unet_options:
        raise UserError("model.unet.unet_options are UNet2DModel arguments; a captioned UNet is a UNet2DConditionModel: "
                        "leave them out")
    plain = unet_arguments(cfg, shape, 0)
    width = cfg.caption_width if caption_encoder is None else caption_encoder.width
    unet = UNet2DConditionModel(
        sample_size=plain["sample_size"], in_channels=plain["in_channels"], out_channels=plain["out_channels"],
        block_out_channels=plain["block_out_channels"], layers_per_block=plain["layers_per_block"],
        norm_num_groups=plain["norm_num_groups"], dropout=plain["dropout"], cross_attention_dim=width,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
        # diffusers' UNet2DConditionModel reads `attention_head_dim` as the number of heads (a naming it keeps).
        attention_head_dim=tuple(c // cfg.attention_head_dim for c in cfg.channels))
    if caption_encoder is not None:
        return CaptionedUNet(unet, caption_encoder)
    heads = max(1, width // 32)
    return CaptionedUNet(unet, CaptionEncoder(caption_vocab, caption_length, caption_pad, width, cfg.caption_depth, heads))
