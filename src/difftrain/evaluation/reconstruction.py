"""How well an autoencoder (model.arch=autoencoder, the latent space of latent diffusion) keeps images.

- PSNR and SSIM of the held-out images' reconstructions, beside the same scores of the images shrunk to the latent's
  height and width and enlarged back (area down, bilinear up): the baseline of keeping as many numbers per channel.
- rFID: the FID of the floor pool's reconstructions against the held-out images, beside its floor, the FID of those same
  real images. A perfect autoencoder scores the floor; what lies above it is what reconstruction loses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from difftrain.data import PreparedDataset
from difftrain.errors import UserError
from difftrain.evaluation.frechet import frechet_between
from difftrain.evaluation.reference import floor_pool, reference_features
from difftrain.modalities import FeatureExtractor

BATCH = 256


@torch.no_grad()
def reconstruct(autoencoder: torch.nn.Module, ds: PreparedDataset, images: np.ndarray, device) -> np.ndarray:
    """The autoencoder's reconstructions of `images`, as the dataset stores images."""
    m = ds.modality
    parts = [m.from_model(autoencoder.reconstruct(m.to_model(torch.from_numpy(images[i:i + BATCH]).to(device))))
             for i in range(0, len(images), BATCH)]
    return np.concatenate(parts) if parts else images[:0]


def resized(ds: PreparedDataset, images: np.ndarray, factor: int) -> np.ndarray:
    """The images shrunk `factor` times (area) and enlarged back (bilinear), in batches."""
    def one(batch: np.ndarray) -> np.ndarray:
        x = ds.modality.to_model(torch.from_numpy(batch))
        small = F.interpolate(x, scale_factor=1 / factor, mode="area")
        return ds.modality.from_model(F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False))

    return np.concatenate([one(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of 10 log10(255^2 / MSE), in dB (an exact copy: the 8-bit limit, 10 log10(255^2 * 12) ~ 58.9)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1 / 12))))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004; torchmetrics) over images, with the standard 11-pixel window or the largest odd one
    that fits smaller images; in batches."""
    side = min(a.shape[1:3])
    window = min(11, side - (1 - side % 2))
    total = 0.0
    for i in range(0, len(a), BATCH):
        x, y = (torch.from_numpy(v[i:i + BATCH]).permute(0, 3, 1, 2).double() / 255 for v in (a, b))
        total += float(structural_similarity_index_measure(x, y, data_range=1.0, kernel_size=window, reduction="sum"))
    return total / len(a)


MIN_RFID = 10  # held-out images below which a Frechet distance means nothing (evaluation/suite.py asks as many)


def reconstruction_scores(autoencoder: torch.nn.Module, ds: PreparedDataset, extractor: FeatureExtractor | None,
                          device) -> dict[str, Any]:
    """PSNR, SSIM (with their resizing baselines) and, with an extractor, rFID beside its floor."""
    test = ds.test_data
    if not len(test):
        raise UserError(f"{ds.path} has no held-out (test) images to score reconstructions on: prepare it with "
                        "--test-fraction above 0")
    rebuilt = reconstruct(autoencoder, ds, test, device)
    shrunk = resized(ds, test, autoencoder.downsampling)
    record = {"n_reconstructed": int(len(test)), "psnr": psnr(rebuilt, test), "psnr_resize": psnr(shrunk, test),
              "ssim": ssim(rebuilt, test), "ssim_resize": ssim(shrunk, test)}
    if extractor is not None and len(test) < MIN_RFID:
        record["warnings"] = [f"rFID skipped: {len(test)} held-out images are too few (at least {MIN_RFID})"]
    elif extractor is not None:
        f_test, f_pool = reference_features(ds, extractor)
        real = ds.train_data[floor_pool(ds)]
        record |= {"rfid": frechet_between(extractor.features(reconstruct(autoencoder, ds, real, device)), f_test),
                   "rfid_floor": frechet_between(f_pool, f_test), **extractor.identity}
    return record
