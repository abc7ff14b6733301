"""The segmentation modality: an image and its class-index mask as ONE (C + K)-channel image.

The model sees the image's C channels followed by the mask one-hot in K channels (0 or 255), so
training, sampling and evaluation treat a pair as a plain image; `split` takes a generated pair
apart again (the mask is the argmax of its K channels, so noisy samples still give one class).
"""

from __future__ import annotations

import colorsys

import numpy as np

# Background (index 0) is black; then Trubetskoy's 20 distinct colours, most distinct first.
_DISTINCT = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]


def join(images: np.ndarray, masks: np.ndarray, num_mask_classes: int) -> np.ndarray:
    """uint8 images (N, H, W, C) and masks (N, H, W) -> uint8 (N, H, W, C + K), the mask one-hot as 0/255."""
    if images.shape[:3] != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} differ in count or size")
    if masks.size and int(masks.max()) >= num_mask_classes:
        raise ValueError(f"mask index {int(masks.max())} is not below num_mask_classes={num_mask_classes}")
    one_hot = np.eye(num_mask_classes, dtype=np.uint8)[masks] * np.uint8(255)
    return np.concatenate([images.astype(np.uint8, copy=False), one_hot], axis=-1)


def split(joint: np.ndarray, image_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C + K) -> images (N, H, W, C) and masks (N, H, W): each pixel's class is its largest mask channel."""
    if joint.shape[-1] <= image_channels:
        raise ValueError(f"{joint.shape[-1]} channels hold no mask after {image_channels} image channels")
    masks = np.argmax(joint[..., image_channels:], axis=-1).astype(np.uint8)
    return np.ascontiguousarray(joint[..., :image_channels]), masks


def palette(num_mask_classes: int) -> np.ndarray:
    """uint8 (K, 3) colours: background black, then distinct colours (golden-ratio hues past the fixed list)."""
    colours = list(_DISTINCT[:num_mask_classes])
    for i in range(len(colours), num_mask_classes):
        # Hues a golden ratio apart never repeat; three brightness levels separate neighbours further.
        r, g, b = colorsys.hsv_to_rgb((i * 0.6180339887) % 1.0, 0.85, (0.95, 0.7, 0.5)[i % 3])
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.array(colours, dtype=np.uint8).reshape(num_mask_classes, 3)


def colorize(masks: np.ndarray, num_mask_classes: int) -> np.ndarray:
    """uint8 masks (N, H, W) -> uint8 (N, H, W, 3), each class in its palette colour."""
    return palette(num_mask_classes)[masks]


def preview(joint: np.ndarray, image_channels: int) -> np.ndarray:
    """uint8 (N, H, W, C + K) -> uint8 (N, H, 2W, 3): each image beside its coloured mask, for PNG grids."""
    images, masks = split(joint, image_channels)
    rgb = images if image_channels == 3 else np.repeat(images[..., :1], 3, axis=-1)
    return np.concatenate([rgb, colorize(masks, joint.shape[-1] - image_channels)], axis=2)
