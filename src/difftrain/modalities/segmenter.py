"""A small segmenter, IoU from a confusion matrix, and the utility of synthetic image + mask pairs.

The segmentation counterpart of classifier.py: the same recipe trained on real, synthetic and
real+synthetic pairs and tested on real pairs says whether generated pairs are worth having.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from difftrain.errors import UserError
from difftrain.evaluation.arms import seed_summary, verdict
from difftrain.evaluation.convergence import Converged, check_schedule, train_to_convergence
from difftrain.modalities import image
from difftrain.modalities.image_judge import random_grid, resample

Pairs = tuple[np.ndarray, np.ndarray]  # uint8 images (N, H, W, C), uint8 masks (N, H, W) of class indices


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class SmallSegmenter(nn.Module):
    """Encoder-decoder (two stride-2 stages, skips back up) whose bottleneck sees the whole image.

    A digit's pixels take the digit's class, which depends on the whole digit: the bottleneck adds a
    globally pooled context vector to every position, so the receptive field covers any image size.
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.enc1 = nn.Sequential(_block(channels, w1), _block(w1, w1))
        self.enc2 = _block(w1, w2, stride=2)
        self.enc3 = _block(w2, w3, stride=2)
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w3, w3, 1), nn.SiLU())
        self.bottleneck = _block(w3, w3)
        self.dec2 = _block(w3 + w2, w2)
        self.dec1 = _block(w2 + w1, w1)
        self.head = nn.Conv2d(w1, num_classes, 1)

    @staticmethod
    def _up(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # To the skip's size, not x2: odd sizes (28 -> 14 -> 7 -> 4) round up on the way down.
        return torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> per-pixel class logits (N, K, H, W)."""
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        h = self.enc3(s2)
        h = self.bottleneck(h + self.context(h))
        h = self.dec2(self._up(h, s2))
        return self.head(self.dec1(self._up(h, s1)))


def _check_pairs(pairs: Pairs, num_mask_classes: int, what: str) -> Pairs:
    images, masks = (np.asarray(a) for a in pairs)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise UserError(f"{what}: images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if masks.shape != images.shape[:3]:
        raise UserError(f"{what}: masks must be (N, H, W) = {images.shape[:3]} to match the images, got {masks.shape}; "
                        "every image needs a mask of its own size")
    if masks.size and not 0 <= int(masks.min()) <= int(masks.max()) < num_mask_classes:
        bad = int(masks.max()) if int(masks.max()) >= num_mask_classes else int(masks.min())
        raise UserError(f"{what}: mask value {bad} is not a class index 0..{num_mask_classes - 1}; "
                        "masks hold class indices 0..K-1 (check the dataset's mask classes)")
    return images, masks.astype(np.uint8)


def augment_pairs(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's augmentation (image_judge.random_grid) applied alike to images (N, C, H, W) and their class-index
    masks (N, H, W); a mask is resampled by nearest neighbour (classes stay classes), background coming in from outside."""
    grid = random_grid(x, generator)
    # Masks shift up by one so that the zero padding becomes class 0, the background.
    masks = F.grid_sample((y + 1).unsqueeze(1).float(), grid, mode="nearest", align_corners=False, padding_mode="zeros")
    return resample(x, grid), (masks.squeeze(1).long() - 1).clamp(min=0)


def fit_segmenter(images: np.ndarray, masks: np.ndarray, num_mask_classes: int, *, validation: Pairs,
                  max_steps: int | None = None, seed: int = 0, batch: int = 64, device: torch.device | str = "cpu"
                  ) -> tuple[SmallSegmenter, Converged]:
    """Train a SmallSegmenter on uint8 (N, H, W, C) images and (N, H, W) class-index masks, with augmentation, until
    its mIoU on the `validation` pairs stops improving (evaluation/convergence.py); the seed fixes everything.

    Checked and capped as `check_schedule` says (`max_steps` None: the recipe's cap).
    """
    images, masks = _check_pairs((images, masks), num_mask_classes, "segmenter training pairs")
    validation = _check_pairs(validation, num_mask_classes, "segmenter validation pairs")
    if not len(images) or not len(validation[0]):
        raise UserError("segmenter: it needs training and validation pairs; give at least two image + mask pairs")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"segmenter steps must be at least 1 (got {max_steps})")
    device = torch.device(device)
    max_steps, every, min_steps = check_schedule(len(images), batch, max_steps)
    # A private RNG stream, as in fit_classifier: training a segmenter must not move anyone else's random numbers.
    # Only the CPU generator draws here (weights are made on the CPU), so only it is seeded and restored.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = SmallSegmenter(images.shape[3], num_mask_classes).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        x_all = image.to_model(torch.from_numpy(images)).to(device)
        y_all = torch.from_numpy(masks).long().to(device)
        gen = torch.Generator().manual_seed(seed)

        def step() -> None:
            idx = torch.randint(len(x_all), (batch,), generator=gen).to(device)
            x, y = augment_pairs(x_all[idx], y_all[idx], gen)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def validate() -> float:
            return iou(predict_masks(model, validation[0]), validation[1], num_mask_classes)["miou"]

        converged = train_to_convergence(model, optimizer, step, validate, max_steps=max_steps, every=every,
                                         min_steps=min_steps)
    return model, converged


@torch.no_grad()
def predict_masks(model: SmallSegmenter, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 (N, H, W, C) images -> uint8 (N, H, W) predicted class indices."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(image.to_model(torch.from_numpy(images[i:i + batch])).to(device)).argmax(1).to(torch.uint8).cpu().numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros(images.shape[:3], np.uint8)


def confusion_matrix(pred: np.ndarray, true: np.ndarray, num_mask_classes: int) -> np.ndarray:
    """(K, K) pixel counts: row = true class, column = predicted class."""
    k = num_mask_classes
    pred, true = np.asarray(pred).astype(np.int64).ravel(), np.asarray(true).astype(np.int64).ravel()
    if pred.shape != true.shape:
        raise UserError(f"predicted and true masks differ in size ({pred.size} vs {true.size} pixels)")
    for name, m in (("predicted", pred), ("true", true)):
        if m.size and (m.min() < 0 or m.max() >= k):
            raise UserError(f"{name} masks hold class index {int(m.max() if m.max() >= k else m.min())}, outside 0..{k - 1}")
    return np.bincount(k * true + pred, minlength=k * k).reshape(k, k)


def iou(pred: np.ndarray, true: np.ndarray, num_mask_classes: int) -> dict:
    """Per-class IoU = TP / (TP + FP + FN), its mean over the classes present, and pixel accuracy.

    A class absent from both prediction and truth has no IoU (None) and is left out of the mean.
    """
    cm = confusion_matrix(pred, true, num_mask_classes)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    per_class = [float(t / u) if u else None for t, u in zip(tp, union)]
    present = [v for v in per_class if v is not None]
    return {"per_class": per_class, "miou": float(np.mean(present)) if present else float("nan"),
            "pixel_accuracy": float(tp.sum() / cm.sum()) if cm.sum() else float("nan"), "confusion": cm.tolist()}


def _arm_summary(scores: list[dict], class_names: list[str]) -> dict:
    mious = [s["miou"] for s in scores]
    # A class's IoU averaged over the seeds that score it (None where no seed does).
    per_class = {}
    for c, name in enumerate(class_names):
        values = [s["per_class"][c] for s in scores if s["per_class"][c] is not None]
        per_class[name] = float(np.mean(values)) if values else None
    return {**seed_summary("miou", mious), "pixel_accuracy_mean": float(np.mean([s["pixel_accuracy"] for s in scores])), "per_class_iou": per_class}


def segmentation_utility(real_train: Pairs, real_test: Pairs, synth: Pairs, num_mask_classes: int, *,
                         seeds: tuple[int, ...] = (0, 1, 2), steps: int | None = None, batch: int = 64,
                         class_names: list[str] | None = None, device: torch.device | str = "cpu",
                         progress: Callable[[str, int], None] | None = None) -> dict:
    """mIoU on the real test pairs of one segmenter recipe trained on real, synthetic and real+synthetic pairs.

    Fairness: every arm trains the same recipe to convergence with the same seeds, stopping early on the same real
    validation pairs (10% of the real training pairs, drawn anew for each seed, held back from every arm), so the arms
    differ only in the pairs they learn from. `steps`: the most optimizer steps of any training (None: the recipe's cap).
    "synthetic_helps": real+synthetic beats real in a paired t-test over the seeds (arms.verdict).
    `progress(arm, seed)` is called before each training.
    """
    real_train = _check_pairs(real_train, num_mask_classes, "real training pairs")
    real_test = _check_pairs(real_test, num_mask_classes, "real test pairs")
    synth = _check_pairs(synth, num_mask_classes, "synthetic pairs")
    for what, pairs in (("real training pairs", real_train), ("real test pairs", real_test), ("synthetic pairs", synth)):
        if not len(pairs[0]):
            raise UserError(f"segmentation utility: there are no {what}; it needs some of each")
        if pairs[0].shape[1:] != real_test[0].shape[1:]:
            raise UserError(f"segmentation utility: {what} are (H, W, C) = {pairs[0].shape[1:]} but the real test pairs are "
                            f"{real_test[0].shape[1:]}; synthesize pairs from a model trained on this dataset")
    if len(real_train[0]) < 2:
        raise UserError("segmentation utility: one real training pair cannot be split into training and validation; give more")
    if not seeds:
        raise UserError("segmentation utility: give at least one seed")
    class_names = list(class_names) if class_names else [str(c) for c in range(num_mask_classes)]
    if len(class_names) != num_mask_classes:
        raise UserError(f"segmentation utility: {len(class_names)} class names for {num_mask_classes} mask classes")
    if steps is not None and steps < 1:
        raise UserError(f"segmentation utility: steps must be at least 1 (got {steps})")
    held = max(1, round(0.1 * len(real_train[0])))
    results = {}
    for arm in ("real", "synthetic", "real+synthetic"):
        scores, trainings = [], []
        for seed in seeds:
            order = np.random.default_rng(seed).permutation(len(real_train[0]))
            train, validation = order[held:], order[:held]
            real = (real_train[0][train], real_train[1][train])
            images, masks = {"real": real, "synthetic": synth,
                             "real+synthetic": tuple(np.concatenate(p) for p in zip(real, synth))}[arm]
            if progress is not None:
                progress(arm, seed)
            model, converged = fit_segmenter(images, masks, num_mask_classes, validation=(real_train[0][validation],
                                             real_train[1][validation]), max_steps=steps, seed=seed, batch=batch, device=device)
            scores.append(iou(predict_masks(model, real_test[0]), real_test[1], num_mask_classes))
            trainings.append(converged.as_dict())
        results[arm] = {**_arm_summary(scores, class_names), "training": trainings}
    return {
        "task": "segmentation", "model": "segmenter (modalities/segmenter.py): a small U-Net, augmentation, early stopping",
        "items": "pairs", "metric": "miou", "metric_name": "mIoU", "num_mask_classes": num_mask_classes,
        "class_names": class_names, "seeds": list(seeds), "steps": steps, "batch": batch,
        "counts": {"real_train": len(real_train[0]) - held, "real_validation": held, "synthetic": len(synth[0]),
                   "real_test": len(real_test[0])},
        "judge_real_score": results["real"]["miou_mean"],
        "fairness": (f"every arm trains the same segmenter recipe with the same seeds, stopping early on the same {held} real "
                     "validation pairs held back from the real training pairs (drawn anew per seed); only the training "
                     "pairs differ; all are tested on the same real test pairs"),
        "arms": results,
        **verdict(results, "miou", "mIoU", len(seeds)),
    }
