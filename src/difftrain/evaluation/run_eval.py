"""Evaluate a run: sample its checkpoints with one or more samplers and step counts, score
the samples (and the likelihood), append every record to metrics.jsonl and plot them.

    RUN/eval/samples-<checkpoint>-<sampler>-<steps>-g<guidance>-n<count>-s<seed>.npz   the samples scored (+ a PNG grid)
    RUN/eval/memorization-<same tag>.png                 closest sample / training-image pairs
    RUN/eval/metrics-vs-images.png, metrics-vs-steps.png
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difftrain import atomic
from difftrain.conditioning import takes_captions
from difftrain.config import EvalConfig
from difftrain.data import PreparedDataset, load_dataset
from difftrain.diffusion import Denoiser
from difftrain.distributed import from_main_process, is_main_process, on_main_process
from difftrain.errors import UserError
from difftrain.evaluation.suite import MODEL_METRICS, check_samples, evaluate_samples, parse_metrics
from difftrain.folder_lock import folder_lock
from difftrain.modalities import FeatureExtractor, modality_for
from difftrain.store.run import Run, label_map, open_run
from difftrain.sampling import (SamplingSpec, check_fits_in_memory, class_labels, generate, read_samples, spec_meta,
                                write_samples)
from difftrain.store.checkpoint import Checkpoint, CheckpointError, list_checkpoints, open_checkpoint, resolve_checkpoint
from difftrain.store.metrics_log import EVALUATION, MetricsLog
from difftrain.store.posthoc_ema import reconstructed_checkpoint, record_best


def _quiet(message: str) -> None:
    """The `warn` of processes other than the main one: one process says it."""


def sample_run(run_dir: str | Path, n: int, spec: SamplingSpec, out: str | Path, *, checkpoint: str = "latest",
               class_label: int | None = None, class_names: list[str] | None = None, ema: bool = True, device: str = "cpu",
               progress=None, warn=print, keep: Callable[[np.ndarray], np.ndarray] | None = None, keep_what: str = "",
               prompts: list[str] | None = None) -> dict:
    """Write `out` (.npz samples file) and a PNG grid beside it; return the samples' meta.

    Labels are balanced over `class_names` (default: the model's classes) and written as indices into
    them, so samples drawn for a dataset carry that dataset's labels. Under a multi-process launch every
    process calls it: each draws its share of the batches, the main process writes the files, and all
    return the same images once they are written.

    `keep(items) -> bool mask`: only samples that pass (tables: `--where` on a column the model is not conditioned on),
    drawn in rounds until there are n: exact samples of the model's conditional, at the cost of the rejected draws.
    `prompts`: a captioned model's captions, sample i drawn for prompts[i % len(prompts)].
    """
    warn = warn if is_main_process() else _quiet
    run = open_run(run_dir)
    check_fits_in_memory(n, run.modality)
    ckpt = run.checkpoint(checkpoint, warn)
    denoiser = run.denoiser(ckpt, ema=ema, device=device)
    names = run.class_names if class_names is None else class_names
    to_model = np.asarray(label_map(names, run.class_names, "the dataset"), dtype=np.int64) if names else None
    batch = run.config.sample.batch_size
    captions = caption_rows(run, prompts, spec)

    def draw(count: int, first_batch: int) -> tuple[np.ndarray, np.ndarray | None]:
        drawn = run.sampling_labels(count, names)
        if class_label is not None and drawn is not None:
            drawn[:] = class_label
        condition = captions[np.arange(count) % len(captions)] if captions is not None else None if drawn is None else to_model[drawn]
        return generate(denoiser, run.modality, count, condition, spec, batch_size=batch,
                        device=device, progress=progress, across_processes=True, first_batch=first_batch), drawn

    where = {}
    if keep is None:
        images, labels = draw(n, 0)
    else:
        images, labels, drawn, found = kept_draws(draw, n, keep, batch, keep_what)
        where = {"where": {"conditions": keep_what, "drawn": drawn, "rate": found / drawn}}
    meta = {"run": str(Path(run_dir).resolve()), "checkpoint": str(ckpt.path.resolve()), "images_seen": ckpt.images,
            "weights": "ema" if ema else "model", **spec_meta(spec), **where, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if labels is not None:
        meta["class_names"] = names
    by_class = labels if class_label is None else None  # one class: a plain grid
    row_names = names if labels is not None else None
    if captions is not None:
        meta["prompts"] = list(prompts)
        if 1 < len(prompts) <= 10:  # one row per prompt; more prompts, or one, make a plain grid
            by_class, row_names = np.arange(n) % len(prompts), list(prompts)

    def write() -> None:
        write_samples(out, run.modality, images, labels, meta)
        run.modality.save_preview(images, Path(out).with_suffix(".png"), labels=by_class, class_names=row_names)

    on_main_process(write)  # and the others wait for it: no process returns before the files are there
    return {"images": images, "labels": labels, "meta": meta}


def caption_rows(run: Run, prompts: list[str] | None, spec: SamplingSpec) -> np.ndarray | None:
    """The prompts as a captioned run's caption rows (P, T); None without prompts, which draws from the empty caption,
    unguided."""
    if prompts is None:
        if run.captioned and spec.guidance != 1:
            raise UserError(f"guidance {spec.guidance:g} steers towards a caption: give one with --prompt, or draw "
                            "without a caption with --guidance 1")
        return None
    if not run.captioned:
        raise UserError(f"--prompt gives a caption; {run.path} was not trained on captioned images" +
                        (" (model.conditional=false)" if run.modality.captions is not None else ""))
    if not prompts:
        raise UserError("no prompts given: one caption at least")
    return run.modality.captions.encode(prompts)


KEEP_LIMIT = 100  # draws per requested sample (at least one batch) before a rare --where condition is given up


def kept_draws(draw, n: int, keep, batch: int, what: str) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """n samples that pass `keep` (and their labels), from rounds of `draw(count, first_batch)` sized by the pass rate
    so far, with how many were drawn and passed; the rounds continue one sequence of batches, so the result depends on
    the seed alone."""
    items, labels, drawn, found = [], [], 0, 0
    while found < n:
        left = max(KEEP_LIMIT * n, batch) - drawn
        if left <= 0:
            raise UserError(f"only {found} of {drawn} samples had {what} ({found / drawn:.2%}); the model makes such rows "
                            f"too rarely to fill --n {n}. Ask for fewer, or prepare the table with that column as --target "
                            "and train a model conditioned on it")
        rate = found / drawn if found else 1 / KEEP_LIMIT if drawn else 1.0
        count = min(left, max(batch, math.ceil((n - found) / rate * 1.2 / batch) * batch))
        x, y = draw(count, drawn // batch)
        passed = np.asarray(keep(x), bool)
        items.append(x[passed])
        labels.append(None if y is None else y[passed])
        drawn, found = drawn + count, found + int(passed.sum())
    return np.concatenate(items)[:n], None if labels[0] is None else np.concatenate(labels)[:n], drawn, found


def select_checkpoints(run: Run, which: str, warn=print) -> list[Checkpoint]:
    """'latest', 'best', 'all' (every valid one, oldest first) or a checkpoint folder."""
    if which != "all":
        return [resolve_checkpoint(run.path, which, warn)]
    found = []
    for path in list_checkpoints(run.path):
        try:
            found.append(open_checkpoint(path))
        except CheckpointError as e:
            warn(f"skipping damaged checkpoint: {e}")
    if not found:
        raise UserError(f"{run.path} has no valid checkpoint to evaluate")
    return found


def likelihood(denoiser: Denoiser, ds: PreparedDataset, to_model: list[int] | None, ec: EvalConfig,
               device: str | torch.device = "cpu", seed: int = 0, across_processes: bool = False) -> dict[str, Any]:
    """Bits per dimension of the first eval.nll_images held-out images (labels mapped `to_model`; None: unconditional).

    `across_processes`: split over the processes of a launch (see `bits_per_dim`); every process must call it.
    """
    from difftrain.evaluation.likelihood import bits_per_dim

    data = ds.test_data[:ec.nll_images]
    labels = np.asarray(to_model, dtype=np.int64)[ds.test_labels[:ec.nll_images]] if to_model and ds.test_labels is not None else None
    return bits_per_dim(denoiser, ds.modality, data, labels, steps=ec.nll_steps, seed=seed, device=device,
                        across_processes=across_processes)


def observed_tasks(denoiser: Denoiser, ds: PreparedDataset, config, metrics: list[str], spec: SamplingSpec, device,
                   seed: int = 0, warn=print) -> dict[str, Any]:
    """forecast and impute scores (evaluation/series_tasks.py) of a model conditioned on observed values."""
    wanted = [m for m in ("forecast", "impute") if m in metrics]
    if not wanted:
        return {}
    if not ds.modality.observable or not config.model.observe:
        warn(f"{', '.join(wanted)} skipped: " + (f"{ds.modality.kind} data has no partly known items" if not ds.modality.observable
                                                else "the model was trained without observed values (model.observe={})"))
        return {}
    from difftrain.evaluation.series_tasks import forecast_scores, impute_scores

    ec = config.eval
    common = dict(windows=ec.task_windows, paths=ec.task_paths, spec=spec, batch_size=config.sample.batch_size, device=device,
                  seed=seed)
    record: dict[str, Any] = {}
    with torch.inference_mode():
        if "forecast" in wanted:
            record |= forecast_scores(denoiser, ds.modality, ds.train_data, ds.test_data, horizon=ec.horizon, season=ec.season,
                                      **common)
        if "impute" in wanted:
            record |= impute_scores(denoiser, ds.modality, ds.test_data, fraction=ec.impute_fraction, **common)
    return record


def score(images: np.ndarray, labels: np.ndarray | None, ds: PreparedDataset, extractor: FeatureExtractor | None,
          metrics: list[str], ec: EvalConfig, seed: int = 0, memorization_png: Path | None = None, network=None,
          say: Callable[[str], None] | None = print) -> dict[str, Any]:
    """`evaluate_samples` with the run's eval settings (`network`: the run's model config, the judge's size);
    nothing to do when only nll is asked."""
    sample_metrics = [m for m in metrics if m not in MODEL_METRICS]
    if not sample_metrics:
        return {}
    return evaluate_samples(images, labels, ds, extractor, metrics=sample_metrics, seed=seed, k=ec.k,
                            classifier_epochs=ec.classifier_epochs, memorization_png=memorization_png,
                            judge={"network": network, "steps": ec.judge_steps, "say": say})


def extractor_for(ds: PreparedDataset, ec: EvalConfig, metrics: list[str], choice: str | None = None,
                  inception_weights: str | None = None, device: str | torch.device = "cpu") -> FeatureExtractor | None:
    if not {"fid", "kid", "pr"} & set(metrics):
        return None
    return ds.modality.feature_extractor(ds, choice or ec.extractor, inception_weights=inception_weights or ec.inception_weights,
                                         classifier_epochs=ec.classifier_epochs, device=device)


def evaluate_run(run_dir: str | Path, *, checkpoints: str = "latest", steps: list[int] | None = None, sampler: str | None = None,
                 guidance: float | list[float] | None = None, temperature: float | None = None, n: int | None = None, metrics: list[str] | str | None = None, seed: int = 0,
                 extractor: str | None = None, inception_weights: str | None = None, data: str | Path | None = None,
                 nll_images: int | None = None, device: str = "cpu", progress=None, warn=print,
                 say: Callable[[str], None] = print, prompts: list[str] | None = None,
                 ema_lengths: list[float] | None = None) -> list[dict[str, Any]]:
    """Score every chosen checkpoint at every step count; append the records to metrics.jsonl. `say` hears what a long
    step (the text judge's training) is doing.

    `data` scores against another prepared dataset than the run's own (RUN/dataset.json), e.g. after moving it.
    A captioned run samples for the held-out captions, or for `prompts`; their images' classes, where the dataset knows
    them, score prompt following (`label_agreement`, the dataset's classifier, beside its floor on the real images).
    `ema_lengths` (post-hoc EMA, store/posthoc_ema.py): each checkpoint is scored at each of these EMA lengths instead,
    reconstructed from the run's snapshots; the best by FID (else KID) is kept in RUN/posthoc/best.json.
    Under a multi-process launch every process calls it: each samples its share (and scores its share of the
    likelihood's images), the main process scores, writes the files and the log, and all return its records.
    """
    main = is_main_process()
    warn = warn if main else _quiet
    run_dir = Path(run_dir)
    run = open_run(run_dir)
    # One `difftrain eval` of a run at a time (training may go on beside it): what a killed one left in eval/ is removed.
    with folder_lock(run_dir / "eval", "run"):
        if main:
            atomic.remove_leftovers(run_dir / "eval")
        ec = run.config.eval
        if nll_images:
            ec = ec.model_copy(update={"nll_images": nll_images})
        metrics = parse_metrics(metrics or ec.metrics)
        n = n or ec.n_samples
        # Every step count at every guidance weight (a sweep: quality against prompt following).
        guidances = guidance if isinstance(guidance, list) else [guidance]
        specs = [run.sampling_spec(seed, sampler=sampler, steps=s, guidance=g, temperature=temperature)
                 for s in (steps or [None]) for g in guidances]
        # Each checkpoint to score, with its post-hoc EMA length (None: the run's own EMA).
        chosen = [(ckpt, None) for ckpt in select_checkpoints(run, checkpoints, warn)]
        if ema_lengths:
            made = on_main_process(lambda: [(str(reconstructed_checkpoint(run_dir, length, ckpt.images)), length)
                                            for ckpt, _ in chosen for length in ema_lengths])
            chosen = [(open_checkpoint(Path(folder)), length) for folder, length in from_main_process(made)]
        if data is None and not Path(run.dataset["path"]).is_dir():
            raise UserError(f"the run's dataset {run.dataset['path']} (named in {run_dir / 'dataset.json'}) is gone: "
                            "pass its new place with --data DIR")
        ds = load_dataset(data or run.dataset["path"])
        if not ds.modality.same_data(run.modality):
            raise UserError(f"{ds.path} holds {ds.modality.kind} data {ds.modality.spec_summary()}, the run {run_dir} makes "
                            f"{run.modality.kind} data {run.modality.spec_summary()}: pass the dataset it was trained on with --data")
        if run.is_autoencoder:
            return evaluate_autoencoder(run, ds, [ckpt for ckpt, _ in chosen], metrics, ec, extractor, inception_weights, device, warn)
        if run.config.model.latent:  # latent diffusion: the data's images through the run's autoencoder
            ds = ds.seen_as(modality_for({**ds.modality.spec, "latent": run.modality.spec["latent"]}))
        to_model = label_map(ds.class_names, run.class_names, str(ds.path)) if run.num_classes else None
        captions = eval_captions(run, ds, prompts, warn) if run.captioned else None
        if prompts is not None and captions is None:
            raise UserError(f"--prompts gives captions; {run_dir} was not trained on captioned images")
        # Only the main process scores, so only it builds the features (and trains the domain classifier, once).
        ext = on_main_process(lambda: extractor_for(ds, ec, metrics, extractor, inception_weights, device))
        out_dir = run_dir / "eval"
        log = MetricsLog(run_dir, enabled=main)
        records = []
        try:
            for ckpt, length in chosen:
                base = {"event": "eval", "images": ckpt.images, "checkpoint": str(ckpt.path.resolve()),
                        "data": str(ds.path.resolve()), "eval_seed": seed,
                        **({"ema_length": length} if length is not None else {})}
                nll = likelihood(run.denoiser(ckpt, device=device), ds, to_model, ec, device, seed,
                                 across_processes=True) if "nll" in metrics else {}
                tasks = on_main_process(lambda: observed_tasks(run.denoiser(ckpt, device=device), ds, run.config, metrics,
                                                               specs[0], device, seed, warn))
                nll = {**nll, **(tasks or {})}
                if set(metrics) <= set(MODEL_METRICS):
                    records.append({**base, **(spec_meta(specs[0]) if tasks else {}), **nll})
                    log.write(records[-1], same=EVALUATION)
                    continue
                for spec in specs:
                    tag = (f"{ckpt.path.name}-{spec.sampler}-{spec.steps}-g{spec.guidance:g}-n{n}-s{seed}"
                           + (f"-t{spec.temperature:g}" if spec.temperature != 1 else ""))
                    samples_file = out_dir / f"samples-{tag}.npz"
                    with torch.inference_mode():
                        sampled = sample_run(run_dir, n, spec, samples_file, checkpoint=str(ckpt.path), device=device,
                                             class_names=ds.class_names if run.num_classes else None, progress=progress, warn=warn,
                                             prompts=None if captions is None else captions[0])
                    labels = sampled["labels"] if captions is None else captions[1](n)
                    scores = on_main_process(lambda: score(sampled["images"], labels, ds, ext, metrics, ec, seed,
                                                           memorization_png=out_dir / f"memorization-{tag}.png",
                                                           network=run.config.model, say=say)) or {}
                    records.append({**base, **spec_meta(spec), **scores, **nll, "samples_file": str(samples_file)})
                    log.write(records[-1], same=EVALUATION)
        finally:
            log.close()
        if main:
            from difftrain.evaluation.plots import plot_run

            plot_run(run_dir)
            headline = next((m for m in ("fid", "kid") if m in metrics), None)  # (lower is better)
            if ema_lengths and headline:
                record_best(run_dir, records, headline)
        return from_main_process(records)


def evaluate_autoencoder(run: Run, ds: PreparedDataset, chosen: list, metrics: list[str], ec: EvalConfig,
                         extractor: str | None, inception_weights: str | None, device, warn=print) -> list[dict[str, Any]]:
    """An autoencoder's checkpoints scored by their reconstructions (evaluation/reconstruction.py): PSNR and SSIM beside
    resizing's, and rFID beside its floor when `fid` is asked for and the data has a feature space. One process does it
    all."""
    from difftrain.evaluation.reconstruction import reconstruction_scores

    records = []
    if is_main_process():
        try:
            ext = extractor_for(ds, ec, [m for m in metrics if m == "fid"], extractor, inception_weights, device)
        except UserError as e:  # (unlabelled images have no classifier features): the pixel scores still stand
            warn(f"rFID skipped: {e}")
            ext = None
        log = MetricsLog(run.path)
        try:
            for ckpt in chosen:
                records.append({"event": "eval", "images": ckpt.images, "checkpoint": str(ckpt.path.resolve()),
                                **reconstruction_scores(run.network(ckpt, device=device), ds, ext, device)})
                log.write(records[-1])
        finally:
            log.close()
    return from_main_process(records)


def eval_captions(run: Run, ds: PreparedDataset, prompts: list[str] | None, warn=print):
    """The captions a captioned run is evaluated with (the held-out ones, or `prompts`), and `labels(n)`: the dataset's
    class of the image each of n samples' caption describes (sample i: caption i % count), or None when unknown."""
    if prompts is None:
        prompts = ds.modality.captions.decode(ds.test_captions)
        classes = ds.test_labels
    else:  # a prompt's class is that of the training images captioned so, when they agree on one
        known: dict[str, set[int]] = {}
        if ds.train_labels is not None:
            for text, label in zip(ds.modality.captions.decode(ds.train_captions), ds.train_labels.tolist()):
                known.setdefault(text, set()).add(label)
        found = [known.get(p, set()) for p in prompts]
        classes = np.array([next(iter(c)) for c in found], np.int64) if all(len(c) == 1 for c in found) else None
        if ds.num_classes and classes is None:
            warn("prompt following is not scored: not every prompt is the caption of training images of one class")
    if not prompts:
        raise UserError(f"{ds.path} has no held-out captions to evaluate with: pass --prompts FILE")

    def labels(n: int) -> np.ndarray | None:
        return None if classes is None or not ds.num_classes else classes[np.arange(n) % len(classes)]

    return prompts, labels


def evaluate_samples_file(samples: str | Path, data: str | Path, *, metrics: list[str] | str | None = None, seed: int = 0,
                          eval_config: EvalConfig | None = None, extractor: str | None = None,
                          inception_weights: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Score any samples file (ours, another tool's, real images packed so) against a prepared dataset."""
    ec = eval_config or EvalConfig()
    metrics = parse_metrics(metrics or ec.metrics)
    asked = [m for m in metrics if m in MODEL_METRICS]
    if asked:
        raise UserError(f"{', '.join(asked)} score a model, not samples: evaluate a run directory for them, or drop them from --metrics")
    ds = load_dataset(data)
    images, labels, meta = read_samples(samples, ds.modality)
    if labels is not None and meta.get("class_names"):
        # The file names its classes (`difftrain sample` of a model that knows more classes than `ds`): match by name.
        names = meta["class_names"]
        if labels.min() >= 0 and labels.max() < len(names):
            drawn = [names[i] for i in np.unique(labels)]
            to_ds = dict(zip(drawn, label_map(drawn, ds.class_names, str(samples), f"the dataset {ds.path}"), strict=True))
            labels = np.asarray([to_ds[names[i]] for i in labels], dtype=np.int64)
    check_samples(images, labels, ds)  # before any feature classifier is trained for nothing
    ext = extractor_for(ds, ec, metrics, extractor, inception_weights, device)
    scores = score(images, labels, ds, ext, metrics, ec, seed, memorization_png=Path(samples).with_name(Path(samples).stem + "-memorization.png"))
    # What produced the samples, as their file says (checkpoint, sampler, steps, guidance, seed).
    produced = {k: meta[k] for k in ("checkpoint", "images_seen", "sampler", "steps", "schedule", "guidance", "seed",
                                     "network_evaluations", "name") if k in meta}
    return {"event": "eval", **produced, **scores, "samples_file": str(Path(samples).resolve()), "data": str(Path(data).resolve())}


def evaluate_denoiser(denoiser: Denoiser, ds: PreparedDataset, extractor: FeatureExtractor | None, config, *, n: int,
                      metrics: list[str], to_model: list[int] | None, device, modality=None) -> dict[str, Any]:
    """Score a denoiser against `ds` with the config's sampler; `to_model` gives the model's label of each
    of the data's classes (None: unconditional); `modality`, the model's when it is not the data's (another run's
    data: the model's latent space and caption characters)."""
    modality = modality or ds.modality
    ec = config.eval
    spec = SamplingSpec.from_config(config.sample, seed=config.train.seed)
    counts = (ds.manifest.get("class_counts") or {}).get("train") if ds.modality.proportional_classes else None
    labels = class_labels(n, len(to_model), counts) if to_model else None
    condition = None if labels is None else np.asarray(to_model)[labels]
    if takes_captions(denoiser.net):  # a captioned model: the held-out captions, in turn
        order = np.arange(n) % len(ds.test_captions)
        rows = ds.test_captions if modality is ds.modality else \
            modality.captions.encode(ds.modality.captions.decode(ds.test_captions))
        condition, labels = rows[order], None if ds.test_labels is None else ds.test_labels[order]
    with torch.inference_mode():
        samples = generate(denoiser, modality, n, condition, spec, batch_size=config.sample.batch_size, device=device)
    record = {**spec_meta(spec), **score(samples, labels, ds, extractor, metrics, ec, config.train.seed, network=config.model)}
    if "nll" in metrics:
        record.update(likelihood(denoiser, ds, to_model, ec, device, config.train.seed))
    return record


def evaluate_during_training(denoiser: Denoiser, ds: PreparedDataset, extractor: FeatureExtractor | None, config, *,
                             images_seen: int, to_model: list[int] | None, device) -> dict[str, Any]:
    """A small-budget evaluation of the EMA denoiser, logged by the trainer; picks checkpoints/best."""
    ec = config.eval
    return {"event": "eval", "during_training": True, "images": images_seen,
            **evaluate_denoiser(denoiser, ds, extractor, config, n=ec.during_n, metrics=list(ec.during_metrics),
                                to_model=to_model, device=device)}
