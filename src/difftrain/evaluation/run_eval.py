"""Evaluate a run's checkpoint: sample, score against held-out data, log the result."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from difftrain.data import load_dataset
from difftrain.evaluation.classifier import load_or_train_classifier
from difftrain.evaluation.first_eval import evaluate_samples
from difftrain.modalities import image
from difftrain.run import open_run
from difftrain.sampling import SamplingSpec, balanced_labels, generate, spec_meta, write_samples
from difftrain.training.metrics_log import MetricsLog


def sample_run(run_dir: str | Path, n: int, spec: SamplingSpec, out: str | Path, *, checkpoint: str = "latest",
               class_label: int | None = None, ema: bool = True, device: str = "cpu", progress=None, warn=print) -> dict:
    """Write `out` (.npz samples file) and a PNG grid beside it; return the samples' meta."""
    run = open_run(run_dir)
    ckpt = run.checkpoint(checkpoint, warn)
    denoiser = run.denoiser(ckpt, ema=ema, device=device)
    labels = balanced_labels(n, run.num_classes)
    if class_label is not None and labels is not None:
        labels[:] = class_label
    images = generate(denoiser, n, run.image_shape, labels, spec, batch_size=run.config.sample.batch_size,
                      null_label=denoiser.net.null_label, device=device, progress=progress)
    meta = {"run": str(Path(run_dir).resolve()), "checkpoint": str(ckpt.path.resolve()), "images_seen": ckpt.images,
            "weights": "ema" if ema else "model", **spec_meta(spec), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_samples(out, images, labels, meta)
    # Grid beside the file: up to 100 images; when conditional, one class per row, in class order.
    if labels is None or class_label is not None:
        image.save_grid(images[:100], Path(out).with_suffix(".png"))
    else:
        per_class = max(1, min(10, n // run.num_classes))
        rows = [images[labels == c][:per_class] for c in range(run.num_classes)]
        image.save_grid(np.concatenate(rows), Path(out).with_suffix(".png"), columns=per_class)
    return {"images": images, "labels": labels, "meta": meta}


def evaluate_run(run_dir: str | Path, *, n: int | None = None, spec: SamplingSpec | None = None, checkpoint: str = "latest",
                 progress=None, warn=print) -> dict:
    """Sample n images, compute the first evaluation, append it to metrics.jsonl."""
    run = open_run(run_dir)
    spec = spec or run.sampling_spec(seed=run.config.train.seed)
    n = n or run.config.eval.n_samples
    out = Path(run_dir) / "samples" / "eval-samples.npz"
    with torch.inference_mode():
        sampled = sample_run(run_dir, n, spec, out, checkpoint=checkpoint, progress=progress, warn=warn)
    ds = load_dataset(run.dataset["path"])
    model, clf_meta = load_or_train_classifier(ds, epochs=run.config.eval.classifier_epochs)
    scores = evaluate_samples(sampled["images"], sampled["labels"], ds, model)
    record = {"event": "eval", "images": sampled["meta"]["images_seen"], **scores,
              "classifier_test_accuracy": clf_meta.get("test_accuracy"), "extractor": clf_meta.get("name"),
              "extractor_sha256": clf_meta.get("weights_sha256"), "samples_file": str(out), **spec_meta(spec),
              "checkpoint": sampled["meta"]["checkpoint"]}
    log = MetricsLog(Path(run_dir))
    log.write(record)
    log.close()
    return record
