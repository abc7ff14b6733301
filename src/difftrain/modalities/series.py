"""The time-series modality: windows of L steps of C channels (float32 (L, C), in the data's units).

The model sees each window as (C, L) with every channel scaled by the training split's statistics (min-max to
[-1, 1] or standardised; kept in the spec), so one noise scale fits every channel. Samples come back in the data's
units. Metrics follow TimeGAN / Diffusion-TS on windows min-max scaled to [0, 1] by the training split: the
contrastive encoder's embedding is the feature space (FID here is their context-FID), and the discriminative,
predictive and correlational scores are the data-space metrics. Series items can be partly known, so one model
conditioned on observed values also imputes and forecasts (conditioning/observed.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.modalities.base import Classifier, Dequantized, FeatureExtractor, Modality, load_array


class SeriesModality(Modality):
    """spec: {"kind": "timeseries", "shape": [L, C], "columns": [..], "scaling": "minmax"|"standard", "offset": [..],
    "scale": [..], "min": [..], "max": [..], "gaps": bool}: model = (x - offset) / scale; metrics see (x - min) / (max - min)."""

    kind = "timeseries"
    prepare_options = frozenset({"window", "stride", "columns", "time_column", "id_column", "scaling", "allow_missing", "n"})
    default_arch = "unet1d"
    samples_key = "series"
    item = "window"
    distance_name = "L2 over the window, min-max scaled to [0, 1] by the training split"
    spec_keys = ("kind", "shape", "columns", "scaling", "offset", "scale", "min", "max", "gaps")
    observable = True
    builtin_test_fraction = 0.1  # the field's split: the last 10% of each series (or of the sines) held out

    @classmethod
    def builtins(cls) -> dict[str, str]:
        from difftrain.data.series_sources import BUILTIN_SERIES

        return dict(BUILTIN_SERIES)

    @classmethod
    def prepare(cls, source: str | Path, out: str | Path, **options: Any):
        from difftrain.modalities.series_prepare import prepare_series

        return prepare_series(source, out, **options)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def model_shape(self) -> tuple[int, ...]:
        length, channels = self.shape
        return (channels, length)

    @property
    def columns(self) -> list[str]:
        return list(self.spec["columns"])

    @property
    def has_gaps(self) -> bool:
        return bool(self.spec.get("gaps"))

    def _vector(self, key: str) -> np.ndarray:
        return np.asarray(self.spec[key], np.float64)

    def load_split(self, folder: Path, split: str, count: int, broken: Callable[[str], UserError]) -> np.ndarray:
        series = load_array(folder, f"{split}_series.npy", broken)
        expected = (count, *self.shape)
        if series.dtype != np.float32 or series.shape != expected:
            raise broken(f"{split}_series.npy holds {series.dtype} {series.shape}; the manifest says float32 {expected}")
        if np.isinf(series).any() or (not self.has_gaps and np.isnan(series).any()):
            raise broken(f"{split}_series.npy holds NaN or infinite values the manifest does not declare")
        return series

    def same_data(self, other: Modality) -> bool:
        return super().same_data(other) and self.columns == list(other.spec.get("columns") or [])

    def describe(self) -> dict[str, Any]:
        return {"window": self.shape[0], "scaling": self.spec["scaling"],
                "columns": [{"name": c, "min": round(lo, 6), "max": round(hi, 6)}
                            for c, lo, hi in zip(self.columns, self.spec["min"], self.spec["max"], strict=True)]}

    # -- model tensors: (B, L, C) in the data's units <-> (B, C, L) scaled
    def to_model(self, batch: torch.Tensor) -> torch.Tensor:
        offset = torch.as_tensor(self.spec["offset"], dtype=torch.float32, device=batch.device)
        scale = torch.as_tensor(self.spec["scale"], dtype=torch.float32, device=batch.device)
        return ((batch.float() - offset) / scale).transpose(-1, -2)

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach().double().cpu().numpy().swapaxes(-1, -2)
        return (x * self._vector("scale") + self._vector("offset")).astype(np.float32)

    def default_sigma_data(self, train: np.ndarray) -> float:
        sample = self.to_model(torch.as_tensor(train[::max(1, len(train) // 10_000)])).double()
        return float(np.nanstd(sample.numpy()))  # gaps are not data

    def scaled(self, data: np.ndarray) -> np.ndarray:
        """Windows (..., L, C) in the model's scaling, kept as (..., L, C): the space of forecasting and imputation scores."""
        return (np.asarray(data, np.float64) - self._vector("offset")) / self._vector("scale")

    def unit(self, data: np.ndarray) -> np.ndarray:
        """Windows min-max scaled by the training split to about [0, 1]: the space of the field's metrics."""
        lo, hi = self._vector("min"), self._vector("max")
        return ((np.asarray(data, np.float64) - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)

    # -- outputs
    def save_preview(self, data: np.ndarray, path: Path, *, labels: np.ndarray | None = None,
                     class_names: list[str] | None = None, reference: np.ndarray | None = None) -> Path:
        from difftrain.modalities.series_plot import save_windows

        return save_windows(data, path, columns=self.columns, reference=reference)

    def save_pairs(self, left: np.ndarray, right: np.ndarray, path: Path) -> Path:
        from difftrain.modalities.series_plot import save_windows

        return save_windows(left, path, columns=self.columns, paired=right, paired_name="nearest training window")

    def save_forecast(self, context: np.ndarray, bands: np.ndarray, path: Path) -> Path:
        """A PNG of a forecast: the context, then the median and the 50% and 90% bands of the paths, per channel."""
        from difftrain.modalities.series_plot import save_forecast

        return save_forecast(context, bands, path, columns=self.columns)

    # -- synthetic datasets: each batch's windows in one long CSV (window, step, columns); series.csv and
    # series.parquet hold them all at the end, one row per step.
    synth_task = "generation"
    classifier_name = "none (time series have no classes)"
    synth_what = "windows"
    synth_globs = ("rows/*.csv",)
    synth_labels_csv = False

    def synth_manifest_fields(self) -> dict[str, Any]:
        return {"columns": self.columns, "window": self.shape[0]}

    def synth_loading(self, conditional: bool) -> list[str]:
        return ["`series.csv` (and the same table in `series.parquet`) holds one row per time step: `window` (the window's "
                f"number), `step` (0..{self.shape[0] - 1}), then {', '.join(self.columns)} in the training data's units. "
                f"`difftrain data prepare OUT/series.csv --kind timeseries --id-column window --columns {','.join(self.columns)} "
                f"--window {self.shape[0]} --out prepared` reads it back; in Python, "
                "`pandas.read_parquet('series.parquet')`."]

    def synth_notes(self) -> list[str]:
        return [f"Windows of {self.shape[0]} steps; channels {', '.join(self.columns)} (in the training data's units)."]

    def _table(self, items: np.ndarray, first: int) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["window", "step", *self.columns])
        for i, window in enumerate(items):
            writer.writerows([first + i, t, *map(repr, map(float, row))] for t, row in enumerate(window))
        return buf.getvalue()

    def synth_write(self, out: Path, batch: int, items: np.ndarray, names: list[tuple[str | None, int]]) -> list[dict[str, Any]]:
        file = f"rows/batch-{batch:06d}.csv"
        if len(items):
            atomic.write_text(out / file, self._table(items, 0))
        return [{"file": file, "row": i} for i in range(len(items))]

    def synth_read(self, out: Path, entries: list[dict[str, Any]]) -> np.ndarray:
        tables: dict[str, np.ndarray] = {}
        windows = []
        for entry in entries:
            if entry["file"] not in tables:
                tables[entry["file"]] = self._read_windows(out / entry["file"])
            table = tables[entry["file"]]
            if entry["row"] >= len(table):
                raise UserError(f"{out / entry['file']} lacks window {entry['row']}: pass --overwrite to start {out} again")
            windows.append(table[entry["row"]])
        return np.stack(windows) if windows else np.zeros((0, *self.shape), np.float32)

    def _read_windows(self, path: Path) -> np.ndarray:
        length = self.shape[0]
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader)
                values = [[float(v) for v in row[2:2 + len(self.columns)]] for row in reader]
        except (OSError, StopIteration, ValueError) as e:
            raise UserError(f"cannot read {path} ({e}), written by an earlier `difftrain synth`: pass --overwrite to start again") from None
        if header[2:] != self.columns or len(values) % length:
            raise UserError(f"{path} does not hold windows of this run's {length} steps of {self.columns}: pass --overwrite to start again")
        return np.asarray(values, np.float32).reshape(-1, *self.shape)

    def synth_finish(self, out: Path, entries: list[dict[str, Any]], items: np.ndarray) -> list[str]:
        import pandas as pd

        atomic.write_text(out / "series.csv", self._table(items, 0))
        length = self.shape[0]
        frame = pd.DataFrame(items.reshape(-1, len(self.columns)).astype(np.float64), columns=self.columns)
        frame.insert(0, "step", np.tile(np.arange(length), len(items)))
        frame.insert(0, "window", np.repeat(np.arange(len(items)), length))
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic.write_bytes(out / "series.parquet", buf.getvalue())
        return ["series.csv", "series.parquet"]

    def synth_utility(self, real, synth: np.ndarray, synth_labels: np.ndarray | None, *, seeds: tuple[int, ...],
                      steps: int | None, progress) -> tuple[dict | None, str | None]:
        from difftrain.evaluation.series_utility import forecasting_utility

        if not len(real.test_data):
            return None, f"{real.path} has no held-out (test) windows to score on"
        return forecasting_utility(self.unit(real.train_data), self.unit(real.test_data), self.unit(synth), seeds=seeds,
                                   steps=steps, progress=progress), None

    # -- evaluation
    def feature_extractor(self, dataset, choice: str, *, inception_weights: str | None, classifier_epochs: int,
                          device: str | torch.device) -> FeatureExtractor:
        from difftrain.evaluation.series_metrics import fit_series_encoder

        if choice not in ("auto", "context"):
            raise UserError(f"eval.extractor={choice} is for images; time series are embedded by a contrastive encoder trained "
                            "on the real training windows (context-FID, as Diffusion-TS): use eval.extractor=auto")
        encoder = fit_series_encoder(self.unit(dataset.train_data), seed=0)
        return FeatureExtractor("ts2vec-style-encoder (context-FID)", encoder.sha256,
                                lambda x: torch.from_numpy(encoder.embed(self.unit(x.numpy()))), batch_size=4096)

    def dedup_distance(self) -> float:
        return 1e-6 * math.sqrt(self.shape[0] * self.shape[1])

    def neighbour_view(self, data: np.ndarray) -> np.ndarray:
        return np.nan_to_num(self.unit(data)).reshape(len(data), -1)

    def domain_classifier(self, dataset, epochs: int) -> tuple[Classifier, dict[str, Any]]:
        raise UserError("time-series datasets have no classes: label agreement and CAS do not apply (drop cas from the metrics)")

    def fit_classifier(self, data: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int, seed: int,
                       steps: int | None = None, batch: int = 128) -> Classifier:
        raise UserError("time-series datasets have no classes: a classifier does not apply (drop cas from the metrics)")

    def extra_metrics(self, samples: np.ndarray, reference: np.ndarray, seed: int) -> dict[str, Callable[[np.ndarray], float]]:
        from difftrain.evaluation.series_metrics import correlational_score, discriminative_score, predictive_score
        from difftrain.evaluation.series_tasks import interpolate

        def unit(windows: np.ndarray) -> np.ndarray:
            # The scores take complete windows: real data's gaps are interpolated in time, as eval's impute baseline.
            return self.unit(interpolate(windows) if np.isnan(windows).any() else windows)

        ref = unit(reference)
        return {"discriminative": lambda s: discriminative_score(ref, unit(s), seed=seed),
                "predictive": lambda s: predictive_score(unit(s), ref, seed=seed),
                "correlational": lambda s: correlational_score(ref, unit(s))}

    def dequantize(self, batch: torch.Tensor, generator: torch.Generator) -> Dequantized:
        # Continuous data: the model's density is over scaled values, so the data's own units add log2(scale) bits.
        return Dequantized(self.to_model(batch), float(np.log2(self._vector("scale")).mean()), "none (continuous)")
