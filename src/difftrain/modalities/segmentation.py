"""The segmentation modality: an image and its class-index mask as ONE (C + K)-channel image.

The model sees the image's C channels followed by the mask one-hot in K channels (0 or 255), so
training, sampling and evaluation treat a pair as a plain image; `split` takes a generated pair
apart again (the mask is the argmax of its K channels, so noisy samples still give one class).
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.modalities.base import Modality, load_array
from difftrain.modalities.image import ImageModality, read_png, write_png

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


class SegmentationModality(ImageModality):
    """Image + mask pairs; spec: {"kind": "segmentation", "shape": [H, W, C] (the image), "mask_classes": [names]}.

    In memory and in samples files a pair is one uint8 (H, W, C + K) image, the mask one-hot as 0/255; on disk
    the masks stay class-index arrays (train_masks.npy, PNGs of synth).
    """

    kind = "segmentation"
    spec_keys = ("kind", "shape", "mask_classes", "mask_pixel_fractions")
    synth_task = "segmentation"

    @property
    def image_channels(self) -> int:
        return int(self.spec["shape"][2])

    @property
    def mask_classes(self) -> list[str]:
        return list(self.spec["mask_classes"])

    @property
    def shape(self) -> tuple[int, ...]:
        h, w, c = self.spec["shape"]
        return h, w, c + len(self.mask_classes)

    def load_split(self, folder: Path, split: str, count: int, broken: Callable[[str], UserError]) -> np.ndarray:
        names = self.spec.get("mask_classes")
        if not (isinstance(names, list) and 0 < len(names) <= 256 and all(isinstance(n, str) for n in names)):
            raise broken("manifest.json of a segmentation dataset needs mask_classes, a list of 1 to 256 class names")
        images = super().load_split(folder, split, count, broken)
        masks = load_array(folder, f"{split}_masks.npy", broken)
        if masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
            raise broken(f"{split}_masks.npy holds {masks.dtype} {masks.shape}; the manifest says uint8 {images.shape[:3]}")
        if masks.size and masks.max() >= len(names):
            raise broken(f"{split}_masks.npy has class index {masks.max()}, but the manifest names only "
                         f"{len(names)} mask classes")
        return join(images, masks, len(names))

    def same_data(self, other: Modality) -> bool:
        return super().same_data(other) and self.mask_classes == list(other.spec.get("mask_classes") or [])

    def describe(self) -> dict[str, Any]:
        # Pixel shares show at a glance how rare each class is (a class in 0.1% of pixels is hard to learn).
        fractions = self.spec.get("mask_pixel_fractions") or {}
        return {"image_channels": self.image_channels, "mask_classes": [
            {"name": name, **{f"{split}_pixels": fractions[split][i] for split in ("train", "test") if split in fractions}}
            for i, name in enumerate(self.mask_classes)]}

    def _displayable(self, images: np.ndarray) -> np.ndarray:
        return preview(images, self.image_channels)

    def split(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Joint pairs -> images (N, H, W, C) and class-index masks (N, H, W)."""
        return split(data, self.image_channels)

    def privacy_view(self, data: np.ndarray) -> tuple[np.ndarray, ImageModality]:
        # Privacy is about the images: a mask alone identifies no one.
        return self.split(data)[0], ImageModality({"kind": ImageModality.kind, "shape": self.spec["shape"]})

    def synth_utility(self, real, synth: np.ndarray, synth_labels: np.ndarray | None, *, seeds: tuple[int, ...],
                      steps: int | None, progress) -> tuple[dict | None, str | None]:
        from difftrain.modalities.segmenter import segmentation_utility

        if not len(real.test_data):
            return None, f"{real.path} has no held-out (test) images to score on"
        stage = None if progress is None else lambda arm, seed: progress(f"{arm}, seed {seed}")
        return segmentation_utility(self.split(real.train_data), self.split(real.test_data), self.split(synth),
                                    len(self.mask_classes), seeds=seeds, steps=steps, class_names=self.mask_classes,
                                    progress=stage), None

    def canonical(self, data: np.ndarray) -> np.ndarray:
        # A sample's mask channels become its mask's one-hot: what reading its files gives back.
        return join(*self.split(data), len(self.mask_classes))

    synth_what = "image + mask pairs"

    def synth_manifest_fields(self) -> dict[str, Any]:
        return {"image_shape": list(self.spec["shape"]), "mask_classes": self.mask_classes}

    def synth_loading(self, conditional: bool) -> list[str]:
        labels = " and the image-level labels of `labels.csv`." if conditional else "."
        return ["`difftrain data prepare OUT --out prepared` reads `images/` and `masks/` (matched by name; a mask's pixel is "
                f"its class index, named in `mask_classes.txt`){labels}"]

    def synth_notes(self) -> list[str]:
        named = ", ".join(f"{i} {name}" for i, name in enumerate(self.mask_classes))
        return [f"Mask classes (pixel value = index): {named}."]

    def synth_finish(self, out: Path, entries: list[dict[str, Any]], items: np.ndarray) -> list[str]:
        # `data prepare OUT` names the mask classes from it (data/segmentation_folder.py).
        atomic.write_text(out / "mask_classes.txt", "".join(f"{c}\n" for c in self.mask_classes))
        return ["mask_classes.txt"]

    def synth_files(self, class_name: str | None, number: int) -> dict[str, str]:
        stem = f"{number:06d}" if class_name is None else f"{class_name}-{number:06d}"
        return {"file": f"images/{stem}.png", "mask": f"masks/{stem}.png"}

    def write_item(self, out: Path, files: dict[str, str], item: np.ndarray) -> None:
        image, mask = self.split(item[None])
        write_png(out / files["file"], image[0])
        write_png(out / files["mask"], mask[0])

    def read_item(self, out: Path, files: dict[str, str]) -> np.ndarray:
        image = read_png(out / files["file"])
        image = image[..., None] if image.ndim == 2 else image
        mask = read_png(out / files["mask"])
        h, w, _ = self.shape
        if image.shape != (h, w, self.image_channels) or mask.shape != (h, w) or mask.max() >= len(self.mask_classes):
            raise UserError(f"{out / files['file']} or its mask is not a sample of this run: pass --overwrite to start again")
        return join(image[None], mask[None], len(self.mask_classes))[0]
