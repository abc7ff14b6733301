"""The points modality: low-dimensional float vectors (two moons, a Gaussian grid, any numeric CSV).

A dataset holds float32 (N, D) in the data's own units; the model sees each column standardised by the
training split's mean and std (kept in the spec), so one noise scale fits every column. Samples come back
in the data's units. Previews are scatter plots; synth writes one CSV; metrics work in data space.
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


def fit_point_classifier(data: np.ndarray, labels: np.ndarray, num_classes: int, mean: np.ndarray, std: np.ndarray, *,
                         epochs: int, seed: int, steps: int | None = None, batch: int = 128) -> Classifier:
    """A small MLP (scikit-learn, Adam) on standardised points; every class gets a probability column even when absent.

    `steps` (optimizer steps of `batch` points) overrides `epochs`, rounded to whole passes, with no early stop, so
    training sets of different sizes get the same compute (the synth utility's arms); else 10 passes per epoch asked.
    """
    from sklearn.neural_network import MLPClassifier

    present = np.unique(labels)
    passes = max(1, round(steps / max(1, -(-len(data) // batch)))) if steps else max(epochs, 1) * 10
    model = MLPClassifier(hidden_layer_sizes=(64, 64), batch_size=min(batch, len(data)), max_iter=passes,
                          n_iter_no_change=passes + 1, tol=0.0, random_state=seed, early_stopping=False)
    x = (np.asarray(data, np.float64) - mean) / std
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at small budgets: the score is what we report
        model.fit(x, labels)

    class _AllClasses(Classifier):
        def probabilities(self, items: np.ndarray) -> np.ndarray:
            p = np.zeros((len(items), num_classes))
            if len(items) and len(present) == 1:  # fitted on one class: it is all it knows
                p[:, present[0]] = 1.0
            elif len(items):
                p[:, present] = model.predict_proba((np.asarray(items, np.float64) - mean) / std)
            return p

    return _AllClasses()


class PointsModality(Modality):
    """float32 vectors (D,); spec: {"kind": "points", "shape": [D], "columns": [names], "mean": [..], "std": [..]}."""

    kind = "points"
    prepare_options = frozenset({"label_column", "columns", "n"})
    default_arch = "mlp"
    samples_key = "points"
    item = "point"
    distance_name = "L2 of the coordinates standardised by the training points"
    spec_keys = ("kind", "shape", "columns", "mean", "std")

    @classmethod
    def builtins(cls) -> dict[str, str]:
        from difftrain.data.point_sources import BUILTIN_POINTS

        return dict(BUILTIN_POINTS)

    @classmethod
    def claims(cls, source: str | Path) -> bool:
        return str(source) in cls.builtins() or Path(str(source)).suffix.lower() in (".csv", ".parquet", ".pq")

    @classmethod
    def prepare(cls, source: str | Path, out: str | Path, **options: Any):
        return prepare_points(source, out, **options)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def model_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def columns(self) -> list[str]:
        return list(self.spec.get("columns") or [f"x{i}" for i in range(self.shape[0])])

    @property
    def _mean(self) -> np.ndarray:
        return np.asarray(self.spec["mean"], np.float64)

    @property
    def _std(self) -> np.ndarray:
        return np.asarray(self.spec["std"], np.float64)

    def load_split(self, folder: Path, split: str, count: int, broken: Callable[[str], UserError]) -> np.ndarray:
        points = load_array(folder, f"{split}_points.npy", broken)
        expected = (count, *self.shape)
        if points.dtype != np.float32 or points.shape != expected:
            raise broken(f"{split}_points.npy holds {points.dtype} {points.shape}; the manifest says float32 {expected}")
        if not np.isfinite(points).all():
            raise broken(f"{split}_points.npy holds NaN or infinite values")
        return points

    def same_data(self, other: Modality) -> bool:
        return super().same_data(other) and self.columns == list(other.spec.get("columns") or [])

    def describe(self) -> dict[str, Any]:
        return {"columns": [{"name": c, "mean": round(m, 6), "std": round(s, 6)}
                            for c, m, s in zip(self.columns, self.spec["mean"], self.spec["std"], strict=True)]}

    def to_model(self, batch: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.spec["mean"], dtype=torch.float32, device=batch.device)
        std = torch.as_tensor(self.spec["std"], dtype=torch.float32, device=batch.device)
        return (batch.float() - mean) / std

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        return (x.detach().double().cpu().numpy() * self._std + self._mean).astype(np.float32)

    def save_preview(self, data: np.ndarray, path: Path, *, labels: np.ndarray | None = None,
                     class_names: list[str] | None = None, reference: np.ndarray | None = None) -> Path:
        from difftrain.modalities.points_plot import save_scatter

        return save_scatter(data, path, labels=labels, class_names=class_names, reference=reference, columns=self.columns)

    def save_pairs(self, left: np.ndarray, right: np.ndarray, path: Path) -> Path:
        from difftrain.modalities.points_plot import save_scatter

        both = np.concatenate([left, right])
        which = np.repeat(np.arange(2, dtype=np.int64), len(left))
        return save_scatter(both, path, labels=which, class_names=["sample", "nearest training point"], columns=self.columns)

    # -- synthetic datasets: each batch's kept rows in one CSV (atomic); points.csv holds them all at the end.
    classifier_name = "MLP classifier (scikit-learn, on standardised points)"
    synth_what = "points"
    synth_globs = ("rows/*.csv",)
    synth_labels_csv = False  # points.csv holds each row's label and class itself

    def synth_manifest_fields(self) -> dict[str, Any]:
        return {"columns": self.columns}

    def synth_loading(self, conditional: bool) -> list[str]:
        return ["`points.csv` holds every kept point (its columns, then `label` and `class` when conditional), in the "
                f"manifest's order; `difftrain data prepare OUT/points.csv --columns {','.join(self.columns)}"
                + (" --label-column class" if conditional else "") + " --out prepared` reads it."]

    def synth_notes(self) -> list[str]:
        return [f"Columns: {', '.join(self.columns)} (in the training data's units)."]

    def synth_write(self, out: Path, batch: int, items: np.ndarray, names: list[tuple[str | None, int]]) -> list[dict[str, Any]]:
        file = f"rows/batch-{batch:06d}.csv"
        if len(items):
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow([*self.columns, "class"])
            writer.writerows([*map(repr, map(float, row)), "" if name is None else name] for row, (name, _) in zip(items, names, strict=True))
            atomic.write_text(out / file, buf.getvalue())
        return [{"file": file, "row": i} for i in range(len(items))]

    def synth_read(self, out: Path, entries: list[dict[str, Any]]) -> np.ndarray:
        tables: dict[str, np.ndarray] = {}
        rows = []
        for entry in entries:
            if entry["file"] not in tables:
                tables[entry["file"]] = self._read_rows(out / entry["file"])
            table = tables[entry["file"]]
            if entry["row"] >= len(table):
                raise UserError(f"{out / entry['file']} lacks row {entry['row']}: pass --overwrite to start {out} again")
            rows.append(table[entry["row"]])
        return np.stack(rows) if rows else np.zeros((0, *self.shape), np.float32)

    def _read_rows(self, path: Path) -> np.ndarray:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader)
                values = [[float(v) for v in row[:len(self.columns)]] for row in reader]
        except (OSError, StopIteration, ValueError) as e:
            raise UserError(f"cannot read {path} ({e}), written by an earlier `difftrain synth`: pass --overwrite to start again") from None
        if header[:len(self.columns)] != self.columns:
            raise UserError(f"{path} has columns {header}, not this run's {self.columns}: pass --overwrite to start again")
        return np.asarray(values, np.float32).reshape(-1, *self.shape)

    def synth_finish(self, out: Path, entries: list[dict[str, Any]], items: np.ndarray) -> list[str]:
        conditional = any(e.get("class") is not None for e in entries)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*self.columns, *(["label", "class"] if conditional else [])])
        writer.writerows([*map(repr, map(float, row)), *([e["label"], e["class"]] if conditional else [])]
                         for row, e in zip(items, entries, strict=True))
        atomic.write_text(out / "points.csv", buf.getvalue())
        return ["points.csv"]

    # -- evaluation: the data space itself (standardised), and a small MLP classifier.
    def feature_extractor(self, dataset, choice: str, *, inception_weights: str | None, classifier_epochs: int,
                          device: str | torch.device) -> FeatureExtractor:
        if choice not in ("auto", "data"):
            raise UserError(f"eval.extractor={choice} is for images; points are compared in their own (standardised) space: "
                            "use eval.extractor=auto")
        mean, std = torch.as_tensor(self._mean), torch.as_tensor(self._std)
        digest = hashlib.sha256(np.asarray([*self._mean, *self._std]).tobytes()).hexdigest()
        return FeatureExtractor("standardised-data", digest, lambda x: (x.double() - mean) / std, batch_size=65_536)

    def dedup_distance(self) -> float:
        # Repeats only: real points of dense sets lie closer than any fixed share of their spread (1% of the 25-Gaussian
        # grid's nearest-neighbour gaps are below 2e-4 standard deviations), so 1e-6 per column catches exact and
        # float-rounding copies and nothing else.
        return 1e-6 * math.sqrt(self.shape[0])

    def neighbour_view(self, data: np.ndarray) -> np.ndarray:
        return ((np.asarray(data, np.float64) - self._mean) / self._std).astype(np.float64)

    def domain_classifier(self, dataset, epochs: int) -> tuple[Classifier, dict[str, Any]]:
        model = self.fit_classifier(dataset.train_data, dataset.train_labels, dataset.num_classes, epochs=epochs, seed=0)
        accuracy = model.accuracy(dataset.test_data, dataset.test_labels)
        return model, {"name": "difftrain-point-mlp", "weights_sha256": None, "test_accuracy": accuracy}

    def fit_classifier(self, data: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int, seed: int,
                       steps: int | None = None, batch: int = 128) -> Classifier:
        return fit_point_classifier(data, labels, num_classes, self._mean, self._std, epochs=epochs, seed=seed, steps=steps,
                                    batch=batch)

    def extra_metrics(self, samples: np.ndarray, reference: np.ndarray, seed: int) -> dict[str, Callable[[np.ndarray], float]]:
        from difftrain.evaluation.sample_distances import energy_distance, sliced_wasserstein

        ref = self.neighbour_view(reference)
        return {"sliced_wasserstein": lambda s: sliced_wasserstein(self.neighbour_view(s), ref, seed=seed),
                "energy_distance": lambda s: energy_distance(self.neighbour_view(s), ref)}

    def dequantize(self, batch: torch.Tensor, generator: torch.Generator) -> Dequantized:
        # Continuous data: no dequantization. The model's density is over standardised points, so the density of
        # the data in its own units is p(x) / prod(std): log2(prod std) / D more bits per dimension.
        return Dequantized(self.to_model(batch), float(np.log2(self._std).mean()), "none (continuous)")


def standardisation(train: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-column mean and std of the training points (a constant column keeps std 1)."""
    mean = train.astype(np.float64).mean(0)
    std = train.astype(np.float64).std(0)
    return mean.tolist(), np.where(std > 1e-12, std, 1.0).tolist()


def prepare_points(source: str | Path, out: str | Path, *, label_column: str | None = None, columns: list[str] | None = None,
                   n: int | None = None, limit: int | None = None, test_fraction: float = 0.1, seed: int = 0,
                   strict: bool = False, overwrite: bool = False, progress: bool = True, expect_kind: str | None = None,
                   **unused: Any):
    """A prepared points dataset from a built-in set (`n` points drawn with `seed`) or a CSV/Parquet table:
    float32 train/test_points.npy, int64 labels when there is a label column, and a manifest with the columns
    and their standardisation. The source is never touched; the output is written atomically."""
    import difftrain
    from datetime import datetime, timezone

    from difftrain.data.dataset import FORMAT_VERSION, load_dataset
    from difftrain.data.point_sources import BUILTIN_POINTS, generate_points, read_point_table
    from difftrain.data.prepared_output import check_out_folder, pick_stratified, write_prepared

    options = {name: value for name, value in unused.items() if value not in (None, False, "crop")}
    if options:
        raise UserError(f"{', '.join(f'--{k.replace(chr(95), chr(45))}' for k in options)} apply to images, not to points "
                        f"({source}): leave them out")
    if not 0 <= test_fraction < 1:
        raise UserError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")
    builtin = str(source) in BUILTIN_POINTS
    if n is not None and (not builtin or n < 2):
        raise UserError(f"--n {n}: " + ("give at least 2 points" if builtin else f"--n draws a built-in point set; {source} is a "
                                        "table, whose rows are all read (use --limit for fewer)"))
    if builtin and (label_column or columns):
        raise UserError(f"--label-column and --columns read tables; the built-in set {source} has its own columns and classes")
    table = generate_points(str(source), n or 10_000, seed) if builtin else read_point_table(source, label_column=label_column,
                                                                                           columns=columns)
    if strict and table.rejected:
        shown = "; ".join(f"row {r['row']}: {r['reason']}" for r in table.rejected[:5])
        raise UserError(f"{len(table.rejected)} row(s) of {source} rejected in strict mode: {shown}. Fix or remove them, "
                        "or prepare without --strict to skip them.")
    out = check_out_folder(Path(out), None, overwrite)
    if not builtin and out == Path(source).resolve():
        raise UserError(f"--out {out} is the source file itself; preparing never replaces the source. Choose a folder.")
    points, labels = table.points, table.labels
    rng = np.random.default_rng(seed)
    strata = labels if labels is not None else np.zeros(len(points), np.int64)
    if limit is not None and limit < len(points):
        keep = pick_stratified(strata, limit, rng)
        points, strata = points[keep], strata[keep]
        labels = None if labels is None else labels[keep]
    if len(points) < 2:
        raise UserError(f"{source} has {len(points)} usable row(s); a points dataset needs at least 2")
    is_test = np.zeros(len(points), bool)
    is_test[pick_stratified(strata, min(round(len(points) * test_fraction), len(points) - 1), rng)] = True
    arrays = {"train_points": points[~is_test], "test_points": points[is_test]}
    if labels is not None:
        arrays |= {"train_labels": labels[~is_test], "test_labels": labels[is_test]}
    mean, std = standardisation(arrays["train_points"])
    num_classes = len(table.class_names) if labels is not None else None
    digest = hashlib.sha256(points.tobytes() + (b"" if labels is None else labels.tobytes())).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION, "kind": PointsModality.kind, "shape": [points.shape[1]], "dtype": "float32",
        "count": {"train": int((~is_test).sum()), "test": int(is_test.sum())},
        "num_classes": num_classes, "class_names": table.class_names if labels is not None else None,
        **({"class_counts": {split: np.bincount(arrays[f"{split}_labels"], minlength=num_classes).tolist()
                             for split in ("train", "test")}} if labels is not None else {}),
        "columns": table.columns, "mean": mean, "std": std,
        "source": {"path": str(source), "kind": "builtin" if builtin else "table", "sha256": digest, **table.source},
        "provenance": BUILTIN_POINTS.get(str(source)) if builtin else None,
        "rejected": table.rejected,
        "options": {"label_column": label_column, "columns": columns, "n": n if builtin else None, "limit": limit,
                    "test_fraction": test_fraction, "seed": seed},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "difftrain_version": difftrain.__version__,
    }
    write_prepared(out, arrays, manifest, overwrite)
    return load_dataset(out)
