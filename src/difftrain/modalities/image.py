"""The image modality: uint8 (N, H, W, C) arrays <-> model tensors in [-1, 1], PNG grids and files,
and the image feature spaces and classifier that evaluate it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.modalities.base import Classifier, Dequantized, FeatureExtractor, Modality, load_array


def to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded and clipped."""
    x = ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images row by row into one (rows*H, columns*W, C) image."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | Path, columns: int | None = None, min_size: int = 256) -> Path:
    """Write a PNG grid, enlarged with nearest-neighbour so small images stay readable."""
    grid = make_grid(images, columns)
    scale = max(1, math.ceil(min_size / max(grid.shape[:2])))
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic.atomic_file(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def save_class_grid(images: np.ndarray, path: Path, labels: np.ndarray | None, num_classes: int) -> Path:
    """Up to 100 images; with `labels`, one class per row (up to 10 each), in class order."""
    if labels is None:
        return save_grid(images[:100], path)
    per_class = max(1, min(10, len(images) // max(num_classes, 1)))
    rows = [images[labels == c][:per_class] for c in range(num_classes)]
    return save_grid(np.concatenate(rows), path, columns=per_class)


def write_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 (H, W, 1) or (H, W, 3) as a grayscale or RGB PNG, (H, W) as mode L, atomically."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or pixels.shape[2] == 3):
        raise UserError(f"a PNG holds 1 or 3 channels; these samples have {pixels.shape[2]}")
    with atomic.atomic_file(path) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(tmp, format="PNG")


def read_png(path: Path) -> np.ndarray:
    """The pixels of a PNG written by `write_png`, exactly: (H, W) or (H, W, 3)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e}), written by an earlier `difftrain synth`: "
                        "pass --overwrite to start again") from None



MAP_ABOVE_BYTES = 512 * 2**20  # image splits larger than this are memory-mapped, not read into memory


class _TorchClassifier(Classifier):
    """The small image classifier (modalities/image_classifier.py) behind the Classifier protocol."""

    def __init__(self, model):
        self.model = model

    def probabilities(self, data: np.ndarray) -> np.ndarray:
        from difftrain.modalities.image_classifier import probabilities

        return probabilities(self.model, data)


class ImageModality(Modality):
    """uint8 images (H, W, C); spec: {"kind": "image", "shape": [H, W, C]}."""

    kind = "image"
    hub_pipeline_tag = "unconditional-image-generation"
    prepare_options = frozenset({"resolution", "channels", "fit", "classes", "class_names", "captions"})
    spec_keys = ("kind", "shape", "captions")
    default_arch = "unet"
    samples_key = "images"
    item = "image"
    distance_name = "pixel L2, images scaled to [0, 1]"
    distance_unit = 255.0  # neighbour distances in pixel values in [0, 1]

    @classmethod
    def builtins(cls) -> dict[str, str]:
        from difftrain.data.builtin import BUILTIN_DATASETS

        return {name: "built-in images" for name in BUILTIN_DATASETS}

    @classmethod
    def stand_ins(cls) -> dict[str, tuple[dict[str, Any], int]]:
        # Random bytes of these shapes cost the network what real images do.
        return {"digits": ({"kind": cls.kind, "shape": [8, 8, 1]}, 10), "mnist": ({"kind": cls.kind, "shape": [28, 28, 1]}, 10)}

    @classmethod
    def claims(cls, source: str | Path) -> bool:
        return True  # folders of images (or image + mask pairs), IDX files, built-in digits: data/sources.py tells them apart

    @classmethod
    def prepare(cls, source: str | Path, out: str | Path, **options: Any):
        from difftrain.modalities.image_prepare import prepare_dataset

        return prepare_dataset(source, out, **options)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def model_shape(self) -> tuple[int, ...]:
        h, w, c = self.shape
        return c, h, w

    def load_split(self, folder: Path, split: str, count: int, broken: Callable[[str], UserError]) -> np.ndarray:
        # A large split stays on disk, memory-mapped: training batches then read their own rows (data/loader.py).
        file = folder / f"{split}_images.npy"
        images = load_array(folder, file.name, broken, mmap=file.is_file() and file.stat().st_size > MAP_ABOVE_BYTES)
        expected = (count, *self.spec["shape"])
        if images.dtype != np.uint8 or images.shape != expected:
            raise broken(f"{split}_images.npy holds {images.dtype} {images.shape}; the manifest says uint8 {expected}")
        return images

    def describe(self) -> dict[str, Any]:
        captions = self.captions
        return {} if captions is None else {"captions": f"{captions.vocab_size - 1} distinct characters, at most "
                                                        f"{captions.length} per caption"}

    def to_model(self, batch: torch.Tensor) -> torch.Tensor:
        return to_model(batch)

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        return to_uint8(x)

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)

    def default_sigma_data(self, train: np.ndarray) -> float:
        # EDM's value for pixels in [-1, 1] (Karras et al. 2022), which every image result here was measured with.
        return 0.5

    def dedup_distance(self) -> float:
        # An RMS difference of 0.02 per pixel value, 0.02 * sqrt(H * W * C): about half the smallest gap between two
        # distinct real images (RMS 0.041 among the 1,797 sklearn digits; 0.038 from 2,000 MNIST training images to
        # 10,000 others), so a near duplicate is closer than any two real images are, yet far above rounding noise.
        return 0.02 * math.sqrt(math.prod(self.shape))

    def neighbour_view(self, data: np.ndarray) -> np.ndarray:
        # The 0..255 integers: every sum of squares is exact in float64, so a copy is at distance exactly 0.
        return data.reshape(len(data), -1)

    def _displayable(self, images: np.ndarray) -> np.ndarray:
        return images

    def save_preview(self, data: np.ndarray, path: Path, *, labels: np.ndarray | None = None,
                     class_names: list[str] | None = None, reference: np.ndarray | None = None) -> Path:
        return save_class_grid(self._displayable(data), Path(path), labels, len(class_names or []))

    def save_pairs(self, left: np.ndarray, right: np.ndarray, path: Path) -> Path:
        return save_grid(np.concatenate([self._displayable(left), self._displayable(right)], axis=2), path)

    def synth_write(self, out: Path, batch: int, items: np.ndarray, names: list[tuple[str | None, int]]) -> list[dict[str, Any]]:
        entries = []
        for item, (class_name, number) in zip(items, names, strict=True):
            files = self.synth_files(class_name, number)
            self.write_item(out, files, item)
            entries.append(files)
        return entries

    def synth_read(self, out: Path, entries: list[dict[str, Any]]) -> np.ndarray:
        return np.stack([self.read_item(out, entry) for entry in entries])

    classifier_name = "small CNN (modalities/image_classifier.py)"
    downstream_name = "ResNet judge (modalities/image_judge.py): 3 residual stages, augmentation, early stopping"
    synth_what = "images"
    synth_globs = ("*.png",)

    def synth_manifest_fields(self) -> dict[str, Any]:
        return {"image_shape": list(self.spec["shape"]), "mask_classes": []}

    def synth_loading(self, conditional: bool) -> list[str]:
        if not conditional:
            return ["`difftrain data prepare OUT/images --out prepared` reads it as an unlabelled image folder."]
        return ["`difftrain data prepare OUT --out prepared` reads it as an ImageFolder (one subfolder per class; the other files "
                "at the top are skipped, with a note). Any ImageFolder reader works too, or `labels.csv` (file,label,class; "
                "`label` is the index in `class_names` of manifest.json, the run's own label of that class)."]

    def synth_files(self, class_name: str | None, number: int) -> dict[str, str]:
        stem = f"{number:06d}" if class_name is None else f"{class_name}-{number:06d}"
        return {"file": f"images/{stem}.png" if class_name is None else f"{class_name}/{stem}.png"}

    def write_item(self, out: Path, files: dict[str, str], item: np.ndarray) -> None:
        write_png(out / files["file"], item)

    def read_item(self, out: Path, files: dict[str, str]) -> np.ndarray:
        pixels = read_png(out / files["file"])
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        if pixels.shape != self.shape:
            raise UserError(f"{out / files['file']} is not a sample of this run (it holds {pixels.shape}, the run makes "
                            f"{self.shape}): pass --overwrite to start again")
        return pixels

    def feature_extractor(self, dataset, choice: str, *, inception_weights: str | None, classifier_epochs: int,
                          device: str | torch.device) -> FeatureExtractor:
        from difftrain.modalities.image_features import build_extractor

        return build_extractor(choice, dataset, inception_weights=inception_weights, classifier_epochs=classifier_epochs,
                               device=device)

    def domain_classifier(self, dataset, epochs: int) -> tuple[Classifier, dict[str, Any]]:
        from difftrain.modalities.image_classifier import load_or_train_classifier

        model, meta = load_or_train_classifier(dataset, epochs=epochs)
        return _TorchClassifier(model), meta

    def confidence_classifier(self, dataset, epochs: int) -> tuple[Classifier, dict[str, Any]]:
        from difftrain.modalities.image_confidence import load_or_train_confidence_judge

        model, meta = load_or_train_confidence_judge(dataset)
        return _TorchClassifier(model), meta

    def fit_classifier(self, data: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int, seed: int,
                       steps: int | None = None, batch: int = 128) -> Classifier:
        from difftrain.modalities.image_classifier import fit_classifier

        return _TorchClassifier(fit_classifier(data, labels, num_classes, epochs=epochs, seed=seed, steps=steps, batch=batch))

    def fit_downstream(self, data: np.ndarray, labels: np.ndarray, num_classes: int, *,
                       validation: tuple[np.ndarray, np.ndarray], seed: int, max_steps: int | None = None,
                       weights: np.ndarray | None = None) -> tuple[Classifier, dict[str, Any]]:
        from difftrain.modalities.image_judge import fit_judge

        model, converged = fit_judge(data, labels, num_classes, validation=validation, seed=seed, max_steps=max_steps,
                                     weights=weights)
        return _TorchClassifier(model), converged.as_dict()

    def dequantize(self, batch: torch.Tensor, generator: torch.Generator) -> Dequantized:
        # Uniform dequantization (Theis et al. 2016): pixel k becomes (k + u) / 127.5 - 1, u ~ U[0, 1); the
        # density of k + u is p(x) / 127.5^D, hence log2(127.5) bits per dimension on top of -log2 p(x) / D.
        k = to_model(batch)
        return Dequantized(k + torch.rand(k.shape, generator=generator, device=k.device) / 127.5, math.log2(127.5), "uniform")
