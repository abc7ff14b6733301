"""Generate samples of any modality from a denoiser with any sampler, and write the samples file."""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difftrain import atomic
from difftrain.diffusion import (MASKED_SAMPLERS, SAMPLERS, Denoiser, MaskedDenoiser, guided_denoiser, network_evaluations,
                                 sample_masked, sampling_sigmas)
from difftrain.distributed import map_batches
from difftrain.errors import UserError
from difftrain.conditioning import conditions_of_network

@dataclass
class SamplingSpec:
    """Everything that decides what a sampler produces, recorded with every samples file."""

    sampler: str = "heun"
    steps: int = 18
    schedule: str = "karras"
    guidance: float = 1.0
    seed: int = 0
    temperature: float = 1.0  # masked diffusion only: log-probabilities / temperature

    @classmethod
    def from_config(cls, sample_config, seed: int = 0, **overrides) -> "SamplingSpec":
        """From a config's `sample` section; `overrides` that are None keep the config's value."""
        values = {"sampler": sample_config.sampler, "steps": sample_config.steps, "schedule": sample_config.schedule,
                  "guidance": sample_config.guidance, "seed": seed, "temperature": sample_config.temperature}
        values.update({k: v for k, v in overrides.items() if v is not None})
        spec = cls(**values)
        spec.check()
        return spec

    def check(self) -> None:
        if self.sampler not in (*SAMPLERS, *MASKED_SAMPLERS):
            raise UserError(f"unknown sampler '{self.sampler}'; choose one of: {', '.join(SAMPLERS)} (continuous "
                            f"formulations), {', '.join(MASKED_SAMPLERS)} (masked: text)")
        if self.steps < 1:
            raise UserError(f"--steps must be at least 1 (got {self.steps})")
        if self.guidance < 0:
            raise UserError(f"--guidance must be >= 0 (got {self.guidance})")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be above 0 (got {self.temperature})")
        if self.temperature != 1 and self.sampler not in MASKED_SAMPLERS:
            raise UserError(f"--temperature {self.temperature:g} draws tokens (masked diffusion, text); the {self.sampler} "
                            "sampler integrates continuous noise: leave it at 1")
        if self.schedule not in ("karras", "uniform"):
            raise UserError(f"unknown noise schedule '{self.schedule}'; choose karras or uniform")

    @property
    def network_evaluations(self) -> int:
        """Network evaluations per sample; guidance doubles them (conditional + unconditional)."""
        if self.sampler in MASKED_SAMPLERS:  # (at most: a step that reveals nothing reuses the last call)
            return self.steps * (2 if self.guidance != 1 else 1)
        return network_evaluations(self.sampler, self.steps) * (2 if self.guidance != 1 else 1)


def balanced_labels(n: int, num_classes: int) -> np.ndarray | None:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (up to one)."""
    return np.arange(n, dtype=np.int64) % num_classes if num_classes else None


def class_quotas(n: int, counts: list[int]) -> list[int]:
    """n split over classes in proportion to `counts`, whole numbers summing to n (largest remainders first)."""
    share = n * np.asarray(counts, np.float64) / max(1, sum(counts))
    quotas = np.floor(share).astype(np.int64)
    quotas[np.argsort(-(share - quotas), kind="stable")[:n - int(quotas.sum())]] += 1
    return quotas.tolist()


def class_labels(n: int, num_classes: int, counts: list[int] | None = None) -> np.ndarray | None:
    """Labels of n samples: balanced (`counts` None), or in proportion to `counts` and interleaved, so every prefix of
    the labels keeps the proportions (a sampling batch is a fair share of each class)."""
    if counts is None:
        return balanced_labels(n, num_classes)
    quotas = class_quotas(n, counts)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), quotas)
    position = np.concatenate([(np.arange(q) + 0.5) / q for q in quotas if q])
    return labels[np.argsort(position, kind="stable")]


@torch.no_grad()
def check_fits_in_memory(n: int, modality, what: str = "--n") -> None:
    """Refuse a request whose samples alone would take more than half this machine's memory (an absurd count would
    otherwise allocate until the machine swaps): one clear line instead of a hang."""
    need = n * int(np.prod(modality.shape)) * np.dtype(modality.dtype).itemsize
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have // 2:
        raise UserError(f"{what} {n:,}: the samples alone take {need / 2**30:,.1f} GiB, more than half this machine's "
                        f"memory ({have / 2**30:,.1f} GiB); draw fewer at a time (several commands with other --seed values)")


def generate(denoiser: Denoiser, modality, n: int, labels: np.ndarray | None, spec: SamplingSpec, *, batch_size: int = 500,
             device: torch.device | str = "cpu", progress=None, across_processes: bool = False, first_batch: int = 0,
             known: np.ndarray | None = None) -> np.ndarray:
    """n samples of the modality's data; the same spec, seed and batch_size give the same samples.

    Each batch draws from its own generator (`batch_generator`), so no batch depends on who drew the others.
    `labels` are the model's class indices (None: unconditional); the network's null label is the guidance's
    unconditional branch. `across_processes`: under a multi-process launch this process draws its share of the
    batches and every process gets all n samples, the ones a single process would draw; every process must then
    call it. `progress(count)` counts the samples this process draws. `first_batch`: the index of the first batch,
    so that a caller drawing a long sequence of batches in several calls gets the random numbers of one call.
    `known`: data (N, *modality.shape) with NaN where to generate, for a network conditioned on observed values
    (forecasting, imputation): the known values are its condition and are kept as they are in the samples.
    """
    spec.check()
    check_fits_in_memory(n, modality)
    if labels is None and known is None and spec.guidance != 1:
        raise UserError(f"guidance {spec.guidance:g} needs a class-conditional model; this one is unconditional (use guidance 1)")
    device = torch.device(device)
    if isinstance(denoiser, MaskedDenoiser):
        return _generate_masked(denoiser, modality, n, labels, spec, batch_size=batch_size, device=device, progress=progress,
                                across_processes=across_processes, first_batch=first_batch, known=known)
    if spec.sampler in MASKED_SAMPLERS:
        raise UserError(f"sampler {spec.sampler} draws tokens (masked diffusion); this run's model is continuous: choose "
                        f"one of {', '.join(SAMPLERS)}")
    try:
        sigmas = sampling_sigmas(denoiser.formulation, spec.steps, spec.schedule, device=device)
    except ValueError as e:
        raise UserError(f"sampling: {e}") from None
    sample = SAMPLERS[spec.sampler]
    conditioner = conditions_of_network(denoiser.net)
    start_std = denoiser.formulation.prior_std(float(sigmas[0]))

    def draw(start: int, count: int, generator: torch.Generator) -> np.ndarray:
        given = None if known is None else modality.to_model(torch.from_numpy(known[start:start + count]).to(device))
        cond = conditioner.sampling(None if labels is None else torch.as_tensor(labels[start:start + count], device=device), given)
        noise = torch.randn(count, *modality.model_shape, generator=generator, device=device)
        denoise = guided_denoiser(denoiser, cond, spec.guidance, conditioner.null_like)
        x = sample(denoise, noise * start_std, sigmas, generator=generator)
        return modality.from_model(x if given is None else torch.where(torch.isfinite(given), given, x))

    return _in_batches(draw, n, spec.seed, batch_size=batch_size, device=device, progress=progress,
                       across_processes=across_processes, first_batch=first_batch)


def _generate_masked(denoiser: MaskedDenoiser, modality, n: int, labels: np.ndarray | None, spec: SamplingSpec, *,
                     batch_size: int, device: torch.device, progress, across_processes: bool, first_batch: int,
                     known: np.ndarray | None) -> np.ndarray:
    """`generate` for masked (token) diffusion: `known` holds token ids, with -1 where to generate (prompts, infilling)."""
    if spec.sampler not in MASKED_SAMPLERS:
        raise UserError(f"this run's model draws tokens (masked diffusion): use --sampler {MASKED_SAMPLERS[0]} "
                        f"(got {spec.sampler})")
    conditioner = conditions_of_network(denoiser.net)
    mask_id = denoiser.formulation.mask_id

    def draw(start: int, count: int, generator: torch.Generator) -> np.ndarray:
        if known is None:
            given = torch.full((count, *modality.model_shape), mask_id, dtype=torch.long, device=device)
        else:
            part = torch.from_numpy(np.asarray(known[start:start + count], np.int64)).to(device)
            given = torch.where(part < 0, torch.full_like(part, mask_id), part)
        cond = conditioner.sampling(None if labels is None else torch.as_tensor(labels[start:start + count], device=device))
        return modality.from_model(sample_masked(denoiser, given, spec.steps, cond=cond, generator=generator,
                                                 guidance=spec.guidance, null=None if cond is None else conditioner.null_like(cond),
                                                 temperature=spec.temperature))

    return _in_batches(draw, n, spec.seed, batch_size=batch_size, device=device, progress=progress,
                       across_processes=across_processes, first_batch=first_batch)


def _in_batches(draw, n: int, seed: int, *, batch_size: int, device: torch.device, progress, across_processes: bool,
                first_batch: int) -> np.ndarray:
    """n samples as batches `draw(start, count, generator)`, each batch with its own generator (`batch_generator`)."""
    def one(index: int) -> np.ndarray:
        start = index * batch_size
        count = min(batch_size, n - start)
        x = draw(start, count, batch_generator(seed, first_batch + index, device))
        if progress is not None:
            progress(count)
        return x

    return np.concatenate(map_batches(math.ceil(n / batch_size), one, across_processes))


def batch_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random numbers of batch `index` of a run seeded `seed`, independent of every other batch.

    Batch 0 uses the seed itself, so a run of one batch draws what it always has; batch i > 0 a seed
    derived from (seed, i) by numpy's SeedSequence, which keeps the streams of different pairs apart.
    """
    if index == 0:
        return torch.Generator(device).manual_seed(seed)
    derived = np.random.SeedSequence(seed % 2**64, spawn_key=(index,)).generate_state(1, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(derived))


def write_samples(path: str | Path, modality, samples: np.ndarray, labels: np.ndarray | None, meta: dict[str, Any]) -> Path:
    """The samples file: the samples under the modality's key (`images` uint8 (N,H,W,C) for images, `points` float32
    (N,D) for points), `labels` int64 (N,) when conditional, and JSON `meta` (with the data's `kind`)."""
    path = Path(path)
    if path.suffix.lower() in modality.table_suffixes:
        return modality.write_table(path, samples, labels)
    if path.suffix != ".npz":
        raise UserError(f"samples file {path} must end in {' or '.join(('.npz', *modality.table_suffixes))}")
    arrays = {modality.samples_key: samples.astype(modality.dtype), "meta": np.array(json.dumps({"kind": modality.kind, **meta}))}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic.write_bytes(path, buf.getvalue())
    return path


def read_samples(path: str | Path, modality) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The samples, labels and meta of a samples file of the modality's data (another tool's included)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{path} holds one bare array, not a samples file: save it with np.savez(path, "
                            f"{modality.samples_key}=..., labels=...)")
        with loaded as f:
            if modality.samples_key not in f.files:
                raise UserError(f"{path} holds no `{modality.samples_key}` array (it has {', '.join(f.files) or 'nothing'}): "
                                f"a samples file of {modality.kind} data keeps its samples under that name")
            samples = f[modality.samples_key]
            labels = f["labels"] if "labels" in f.files else None
            meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # (a truncated or foreign file)
        raise UserError(f"cannot read samples file {path}: {' '.join(str(e).split()) or type(e).__name__}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: its `meta` must be a JSON object (difftrain writes one), not {type(meta).__name__}")
    modality.check_samples(samples, str(path))
    if labels is not None and (not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(samples),)):
        raise UserError(f"{path}: `labels` must be {len(samples)} integers (int64 (N,)), got {labels.dtype} {labels.shape}")
    return samples, labels, meta


def spec_meta(spec: SamplingSpec) -> dict[str, Any]:
    return {**asdict(spec), "network_evaluations": spec.network_evaluations}
