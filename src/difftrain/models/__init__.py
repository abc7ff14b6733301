"""Networks: each maps (x_in, c_noise, class_labels) to a tensor shaped like x_in."""

from __future__ import annotations

import torch

from difftrain.config import ModelConfig
from difftrain.models.unet import UNet, build_unet

# Registry: architecture name -> builder(model config, (H, W, C), number of classes).
NETWORKS = {"unet": build_unet}


def build_network(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> torch.nn.Module:
    return NETWORKS[cfg.arch](cfg, image_shape, num_classes if cfg.conditional else 0)


__all__ = ["NETWORKS", "UNet", "build_network", "build_unet"]
