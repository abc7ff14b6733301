"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", section 3).

During training, power-function EMAs of the weights (train.posthoc_ema: their relative lengths sigma_rel; training/ema.py) are kept
and snapshotted every train.posthoc_every_images into RUN/posthoc/. A power-function EMA at time t averages the
weights of time tau with density p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1); its relative length sigma_rel is the
std of that density over t. Any other sigma_rel at any snapshot time is then a linear combination of the snapshots:
the one whose averaging profile is closest, in L2 over time, to the wanted one (a small linear system with closed-form
inner products). So the EMA length is chosen after training, by evaluation, at no training cost.

Time is counted in training images; the update after a step that brings the count to t uses
beta = (1 - batch / t)^(gamma + 1), EDM2's power_function_beta.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from difftrain import atomic
from difftrain.config import POSTHOC_MAX_SIGMA_REL
from difftrain.errors import UserError
from difftrain.hashing import sha256_file

FOLDER = "posthoc"
SNAPSHOT = re.compile(r"ema-(?P<sigma>\d\.\d{4})-(?P<images>\d{9})\.safetensors")


def exponent(sigma_rel: float) -> float:
    """gamma of a power-function EMA of relative length sigma_rel: the root of sigma_rel^2 = (gamma + 1) /
    ((gamma + 2)^2 (gamma + 3)), i.e. of gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) with s = sigma_rel^-2."""
    if not 0 < sigma_rel < POSTHOC_MAX_SIGMA_REL:
        raise UserError(f"an EMA length (sigma_rel) of {sigma_rel:g} is outside (0, {POSTHOC_MAX_SIGMA_REL:.4f}): EDM2 uses "
                        "0.05 to 0.15")
    s = sigma_rel ** -2
    return float(np.roots([1, 7, 16 - s, 12 - s]).real.max())


def power_beta(sigma_rel: float, images: int, batch: int) -> float:
    """The decay of the update after a step of `batch` images that brings the count to `images`."""
    return (1 - batch / images) ** (exponent(sigma_rel) + 1)


def profile_dot(t_a, gamma_a, t_b, gamma_b):
    """The L2 inner product over time of the averaging densities of two power-function EMAs (time t, exponent gamma):
    (g_a + 1)(g_b + 1) min(t_a, t_b)^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1))."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    ratio_exponent = np.where(t_a < t_b, gamma_b, -gamma_a)
    return ((gamma_a + 1) * (gamma_b + 1) * (t_a / t_b) ** ratio_exponent) / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def coefficients(times: list[int], sigmas: list[float], time: int, sigma_rel: float) -> np.ndarray:
    """Weights of the snapshots (taken at `times` of EMAs of lengths `sigmas`) whose combination best matches an EMA of
    `sigma_rel` at `time`; they sum to one."""
    gammas = np.array([exponent(s) for s in sigmas])
    t = np.asarray(times, np.float64)
    a = profile_dot(t[:, None], gammas[:, None], t[None, :], gammas[None, :])
    b = profile_dot(t, gammas, float(time), exponent(sigma_rel))
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    return x / x.sum()


def profile_key(sigma: float, name: str) -> str:
    """A profile's tensor in a checkpoint's posthoc-ema.safetensors."""
    return f"{sigma:.4f}/{name}"


def snapshot_path(run_dir: Path, sigma: float, images: int) -> Path:
    return Path(run_dir) / FOLDER / f"ema-{sigma:.4f}-{images:09d}.safetensors"


def write_snapshot(run_dir: Path, sigma: float, images: int, weights: dict[str, torch.Tensor]) -> None:
    with atomic.atomic_file(snapshot_path(run_dir, sigma, images)) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp)


def snapshots(run_dir: Path, up_to: int | None = None) -> list[tuple[float, int, Path]]:
    """(sigma_rel, images, file) of the run's snapshots, oldest first; only those up to `up_to` images when given."""
    folder = Path(run_dir) / FOLDER
    found = [(float(m["sigma"]), int(m["images"]), p) for p in folder.glob("ema-*.safetensors")
             if (m := SNAPSHOT.fullmatch(p.name))] if folder.is_dir() else []
    return sorted((s for s in found if up_to is None or s[1] <= up_to), key=lambda s: (s[1], s[0]))


def drop_snapshots_after(run_dir: Path, images: int) -> None:
    """A resumed run continues from its checkpoint: snapshots of a continuation after it (a crash's) are removed."""
    for _, at, path in snapshots(run_dir):
        if at > images:
            path.unlink(missing_ok=True)


def reconstruct(run_dir: Path, sigma_rel: float, images: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights of an EMA of `sigma_rel` at `images` from the run's snapshots up to then, and how they were made."""
    found = snapshots(run_dir, up_to=images)
    if len(found) < 2:
        raise UserError(f"{Path(run_dir) / FOLDER} holds {len(found)} EMA snapshot(s) up to {images:,} images: post-hoc "
                        "EMA needs the run trained with train.posthoc_ema (e.g. [0.05, 0.10]) and at least two snapshots")
    x = coefficients([at for _, at, _ in found], [s for s, _, _ in found], images, sigma_rel)
    weights: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for coefficient, (_, _, path) in zip(x, found):
        for name, tensor in load_file(path).items():
            dtypes[name] = tensor.dtype
            if not tensor.is_floating_point():  # (counters and the like: the latest snapshot's)
                weights[name] = tensor
                continue
            weights[name] = weights.get(name, torch.zeros_like(tensor, dtype=torch.float64)) + coefficient * tensor.double()
    weights = {k: v.to(dtypes[k]) for k, v in weights.items()}
    return weights, {"sigma_rel": sigma_rel, "images": images, "snapshots": len(found),
                     "coefficients": [float(c) for c in x], "largest_coefficient": float(np.abs(x).max())}


def reconstructed_checkpoint(run_dir: Path, sigma_rel: float, images: int) -> Path:
    """RUN/posthoc/ckpt-IMAGES-ema-SIGMA/: the reconstructed EMA as a checkpoint folder (its ema.safetensors and
    info.json) that sample, eval and export read like any other; written once, reused after."""
    folder = Path(run_dir) / FOLDER / f"ckpt-{images:09d}-ema-{sigma_rel:.4f}"
    if (folder / "info.json").is_file():
        return folder
    weights, made = reconstruct(run_dir, sigma_rel, images)
    with atomic.atomic_directory(folder, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "ema.safetensors")
        atomic.write_json(tmp / "info.json", {"images_seen": images, "posthoc_ema": made,
                                              "sha256": {"ema.safetensors": sha256_file(tmp / "ema.safetensors")}})
    return folder


def record_best(run_dir: Path, records: list[dict], metric: str) -> dict | None:
    """RUN/posthoc/best.json: the EMA length whose evaluation scored best by `metric` (lower is better)."""
    scored = [r for r in records if r.get("ema_length") is not None and isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    best = min(scored, key=lambda r: r[metric])
    summary = {"metric": metric, "best_ema_length": best["ema_length"], "best": best[metric], "images": best["images"],
               "checkpoint": best["checkpoint"],
               "sweep": [{"ema_length": r["ema_length"], metric: r[metric], "images": r["images"]} for r in scored]}
    atomic.write_json(Path(run_dir) / FOLDER / "best.json", summary)
    return summary


def read_best(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / FOLDER / "best.json").read_text())
    except (OSError, ValueError):
        return None
