"""Evaluation during training: score the EMA at a checkpoint, log it, keep the best as checkpoints/best."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from rich.console import Console

from difftrain.config import Config
from difftrain.data import PreparedDataset
from difftrain.diffusion import Denoiser
from difftrain.errors import UserError
from difftrain.modalities.deferred import Deferred, deferring
from difftrain.store.checkpoint import best_record, save_best
from difftrain.store.metrics_log import MetricsLog


class DuringTraining:
    """Evaluate the EMA denoiser at a checkpoint, log it, and copy the checkpoint to
    checkpoints/best when it is the best so far by eval.best_metric (kept across resumes)."""

    def __init__(self, config: Config, run_dir: Path, dataset: PreparedDataset, num_classes: int, device: torch.device,
                 console: Console, data_labels: list[int] | None = None):
        self.config, self.run_dir, self.dataset, self.console = config, run_dir, dataset, console
        self.num_classes, self.device, self.data_labels = num_classes, device, data_labels
        self.metric = config.eval.best_metric
        if self.metric == "cas" and not num_classes:
            raise UserError("eval.best_metric=cas needs a class-conditional model on labelled data; choose e.g. eval.best_metric=fid")
        previous = best_record(run_dir) or {}
        self.best = previous.get(self.metric)
        ec = config.eval
        console.print(f"evaluation during training: {', '.join(ec.during_metrics)} of {ec.during_n:,} samples every "
                      f"{ec.every_images:,} images, best kept by {self.metric} (eval.every_images=0 turns it off)",
                      highlight=False)
        # Checked before training starts, so that a feature space that cannot work (an unlabelled dataset for the domain
        # classifier, a missing weights file) stops the run at once; but a feature classifier still to be trained
        # (minutes on a large dataset, once per dataset) is trained at the first evaluation, not before the first step.
        with deferring():
            try:
                self.extractor, self.deferred = self._extractor(), None
            except Deferred as put_off:
                self.extractor, self.deferred = None, put_off.what
                console.print(f"{self.deferred} is trained at the first evaluation (once per dataset): training starts now",
                              highlight=False)

    def _extractor(self):
        from difftrain.evaluation.run_eval import extractor_for

        try:
            return extractor_for(self.dataset, self.config.eval, list(self.config.eval.during_metrics), device=self.device)
        except UserError as e:
            raise UserError(f"evaluation during training (eval.every_images={self.config.eval.every_images}): {e}; "
                            "or turn it off with eval.every_images=0") from None

    def better(self, value: float) -> bool:
        from difftrain.evaluation.suite import LOWER_IS_BETTER

        if self.best is None:
            return math.isfinite(value)
        return value < self.best if self.metric in LOWER_IS_BETTER else value > self.best

    def __call__(self, denoiser: Denoiser, images: int, checkpoint_path: Path, log: MetricsLog) -> dict:
        from difftrain.evaluation.run_eval import evaluate_during_training

        ec = self.config.eval
        if self.deferred:
            self.extractor, self.deferred = self._extractor(), None
        record = evaluate_during_training(denoiser, self.dataset, self.extractor, self.config, images_seen=images,
                                          to_model=self.data_labels, device=self.device)
        record["checkpoint"] = str(checkpoint_path.resolve())
        value = record.get(self.metric)
        if value is None:
            raise UserError(f"eval.best_metric={self.metric} was not computed (eval.during_metrics={ec.during_metrics})")
        is_best = self.better(value)
        record["best"] = is_best
        log.write(record)
        if is_best:
            self.best = value
            save_best(self.run_dir, checkpoint_path, record)
        floor = record.get(f"{self.metric}_floor")
        self.console.print(f"eval at {images:,} images: {self.metric} {value:.4g}" + (f" (floor {floor:.4g})" if floor is not None else "")
                           + (" - new best, saved to checkpoints/best" if is_best else ""))
        return record
