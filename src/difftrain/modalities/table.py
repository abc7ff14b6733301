"""The tabular modality: rows of mixed numeric, integer, categorical, boolean and datetime columns (data/table_sources.py).

A dataset holds float64 codes (N, K) in the table's own units, one column per feature: the value for numbers, seconds
for datetimes, the category's index for categories, NaN for a missing cell. A categorical target (`--target`) is the
dataset's class labels, so the model is class-conditional on it and `sample --where target=value` picks a class (other
columns' conditions keep the draws that match: table_where.py). The
model sees each row through table_encoding.TableEncoding; every output goes back through the schema, so samples have
the input's columns, types, categories and bounds. Metrics are the field's (evaluation/table_metrics.py), in data space.
"""

from __future__ import annotations

import hashlib
import io
import math
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.modalities.base import Classifier, Dequantized, FeatureExtractor, Modality, load_array
from difftrain.modalities.table_encoding import NUMBER_TYPES, TableEncoding


def fit_table_classifier(codes: np.ndarray, labels: np.ndarray, num_classes: int, schema: list[dict[str, Any]], *,
                         seed: int, trees: int = 200) -> Classifier:
    """Gradient-boosted trees (LightGBM) on the codes, categories as categorical features; every class gets a column."""
    import lightgbm

    categorical = [k for k, c in enumerate(schema) if c["type"] in ("categorical", "boolean")]
    present = np.unique(labels)
    model = None
    if len(present) > 1:
        model = lightgbm.LGBMClassifier(n_estimators=trees, num_leaves=31, learning_rate=0.05, random_state=seed, n_jobs=1,
                                        verbose=-1)
        model.fit(codes, labels, categorical_feature=categorical)

    class _Trees(Classifier):
        def probabilities(self, items: np.ndarray) -> np.ndarray:
            p = np.zeros((len(items), num_classes))
            if len(items) and model is None:  # fitted on one class: it is all it knows
                p[:, present[0]] = 1.0
            elif len(items):
                p[:, model.classes_] = model.predict_proba(np.asarray(items, np.float64))
            return p

    return _Trees()


class TableModality(Modality):
    """float64 codes (K,); spec: {"kind": "tabular", "shape": [K], "schema": [column dicts], "target": the target column's
    dict when it is the labels (else None), "encoding": table_encoding.fit_encoding's maps, "column_order": the source's
    column names in order}."""

    kind = "tabular"
    prepare_options = frozenset({"target", "types", "columns", "na_values", "test_file", "max_categories"})
    default_arch = "mlp"
    samples_key = "rows"
    item = "row"
    distance_name = "L2 of the model's encoding: quantile-normal numbers, categories one-hot in {-1, 1}"
    spec_keys = ("kind", "shape", "schema", "target", "encoding", "column_order")
    builtin_test_fraction = 0.2
    proportional_classes = True  # the target is a column: its mix is part of the data

    @classmethod
    def builtins(cls) -> dict[str, str]:
        from difftrain.data.table_sources import BUILTIN_TABLES

        return dict(BUILTIN_TABLES)

    @classmethod
    def prepare(cls, source: str | Path, out: str | Path, **options: Any):
        from difftrain.modalities.table_prepare import prepare_table

        return prepare_table(source, out, **options)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    @property
    def schema(self) -> list[dict[str, Any]]:
        return list(self.spec["schema"])

    @property
    def frame_schema(self) -> list[dict[str, Any]]:
        """The schema of the tables `frame` makes: the features, then the target when it is the labels."""
        target = self.spec.get("target")
        return self.schema + ([target] if target is not None and target["role"] == "label" else [])

    @property
    def columns(self) -> list[str]:
        return [c["name"] for c in self.schema]

    @cached_property
    def encoding(self) -> TableEncoding:
        return TableEncoding(self.schema, self.spec["encoding"])

    @property
    def model_shape(self) -> tuple[int, ...]:
        return (self.encoding.dim,)

    @property
    def category_slices(self) -> list[slice]:
        return [where for column, where in zip(self.schema, self.encoding.slices) if column["type"] not in NUMBER_TYPES]

    @property
    def has_gaps(self) -> bool:
        return False  # a missing cell is a value the model learns (a category, or an indicator), not a gap

    def load_split(self, folder: Path, split: str, count: int, broken: Callable[[str], UserError]) -> np.ndarray:
        rows = load_array(folder, f"{split}_rows.npy", broken)
        expected = (count, *self.shape)
        if rows.dtype != np.float64 or rows.shape != expected:
            raise broken(f"{split}_rows.npy holds {rows.dtype} {rows.shape}; the manifest says float64 {expected}")
        if np.isinf(rows).any():
            raise broken(f"{split}_rows.npy holds infinite values")
        return rows

    def same_data(self, other: Modality) -> bool:
        types = [(c["name"], c["type"], c.get("categories")) for c in self.schema]
        return super().same_data(other) and types == [(c["name"], c["type"], c.get("categories"))
                                                      for c in other.spec.get("schema") or []]

    def spec_summary(self) -> str:
        return f"of {self.shape[0]} columns ({', '.join(self.columns)})"

    def describe(self) -> dict[str, Any]:
        def line(c: dict[str, Any]) -> str:
            kind = (f"{len(c['categories'])} categories" if c.get("categories") else
                    f"{c['type']} {c['min']:.10g}..{c['max']:.10g}" if c.get("min") is not None else c["type"])
            missing = f", {c['missing']:.1%} missing" if c.get("missing") else ""
            return f"{c['name']} ({kind}{missing})"

        target = self.spec.get("target")
        return {"columns": "; ".join(line(c) for c in self.schema), **({"target": target["name"]} if target else {})}

    # -- model tensors
    def to_model(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.encoding.encode(batch.detach().double().cpu().numpy())).to(batch.device)

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        return self.encoding.decode(x.detach().double().cpu().numpy())

    # -- the table a user reads
    def frame(self, codes: np.ndarray, labels: np.ndarray | None = None):
        """A pandas DataFrame of rows: the schema's columns and types, and the target column when there are labels."""
        from difftrain.data.table_sources import from_codes

        frame = from_codes(np.asarray(codes, np.float64), self.schema)
        target = self.spec.get("target")
        if target is not None and target["role"] == "label" and labels is not None:
            categories = np.asarray(target["categories"], dtype=object)
            frame[target["name"]] = categories[np.asarray(labels, np.int64)]
        order = self.spec.get("column_order")  # (datasets prepared before it was kept: the target comes last)
        return frame[order] if order and set(order) == set(frame.columns) else frame

    def where(self, conditions: list[str], class_names: list[str] | None) -> tuple[int | None, Callable | None]:
        from difftrain.modalities.table_where import parse_where

        return parse_where(conditions, self.schema, self.spec.get("target"), class_names)

    def write_table(self, path: Path, codes: np.ndarray, labels: np.ndarray | None) -> Path:
        """Rows as a CSV or Parquet file, by `path`'s suffix, atomically."""
        from difftrain.data.table_sources import write_table

        write_table(self.frame(codes, labels), path, self.frame_schema)
        return Path(path)

    table_suffixes = (".csv", ".parquet")

    # -- outputs
    def save_preview(self, data: np.ndarray, path: Path, *, labels: np.ndarray | None = None,
                     class_names: list[str] | None = None, reference: np.ndarray | None = None) -> Path:
        from difftrain.modalities.table_plot import save_marginals

        return save_marginals(self.frame(data), path, self.schema,
                              reference=None if reference is None else self.frame(reference))

    def save_pairs(self, left: np.ndarray, right: np.ndarray, path: Path) -> Path:
        from difftrain.modalities.table_plot import save_row_pairs

        return save_row_pairs(self.frame(left), self.frame(right), path, right_name="nearest training row")

    # -- synthetic datasets: each batch's codes in one .npy (exact); rows.csv and rows.parquet hold them all at the end.
    classifier_name = "gradient-boosted trees (LightGBM, on the table's columns)"
    synth_what = "rows"
    synth_globs = ("rows/*.npy",)
    synth_labels_csv = False  # rows.csv holds each row's target itself

    def synth_manifest_fields(self) -> dict[str, Any]:
        target = self.spec.get("target")
        return {"columns": self.columns, **({"target": target["name"]} if target else {})}

    def synth_loading(self, conditional: bool) -> list[str]:
        target = self.spec.get("target")
        flag = f" --target {target['name']}" if target else ""
        return ["`rows.csv` (and the same table in `rows.parquet`, with its types) holds every kept row with the training "
                f"table's columns, types and categories; `difftrain data prepare OUT/rows.csv --kind tabular{flag} --out "
                "prepared` reads it back; in Python, `pandas.read_parquet('rows.parquet')`."]

    def synth_notes(self) -> list[str]:
        columns = ", ".join(f"{c['name']} ({c['type']})" for c in self.schema)
        return [f"Columns: {columns}."]

    def synth_write(self, out: Path, batch: int, items: np.ndarray, names: list[tuple[str | None, int]]) -> list[dict[str, Any]]:
        file = f"rows/batch-{batch:06d}.npy"
        if len(items):
            buf = io.BytesIO()
            np.save(buf, np.asarray(items, np.float64), allow_pickle=False)
            atomic.write_bytes(out / file, buf.getvalue())
        return [{"file": file, "row": i} for i in range(len(items))]

    def synth_read(self, out: Path, entries: list[dict[str, Any]]) -> np.ndarray:
        tables: dict[str, np.ndarray] = {}
        rows = []
        for entry in entries:
            if entry["file"] not in tables:
                try:
                    tables[entry["file"]] = np.load(out / entry["file"], allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise UserError(f"cannot read {out / entry['file']} ({e}), written by an earlier `difftrain synth`: "
                                    "pass --overwrite to start again") from None
            table = tables[entry["file"]]
            if table.ndim != 2 or table.shape[1:] != self.shape or entry["row"] >= len(table):
                raise UserError(f"{out / entry['file']} does not hold row {entry['row']} of this run's {self.shape[0]} columns: "
                                f"pass --overwrite to start {out} again")
            rows.append(table[entry["row"]])
        return np.stack(rows) if rows else np.zeros((0, *self.shape), np.float64)

    def synth_finish(self, out: Path, entries: list[dict[str, Any]], items: np.ndarray) -> list[str]:
        target = self.spec.get("target")
        labels = None
        if target is not None and target["role"] == "label" and entries and all(e.get("class") is not None for e in entries):
            labels = np.asarray([target["categories"].index(e["class"]) for e in entries], np.int64)
        self.write_table(out / "rows.csv", items, labels)
        self.write_table(out / "rows.parquet", items, labels)
        return ["rows.csv", "rows.parquet"]

    def synth_utility(self, real, synth: np.ndarray, synth_labels: np.ndarray | None, *, seeds: tuple[int, ...],
                      steps: int | None, progress) -> tuple[dict | None, str | None]:
        from difftrain.evaluation.table_utility import table_utility

        if not len(real.test_data):
            return None, f"{real.path} has no held-out (test) rows to score on"
        if self.spec.get("target") is None:
            return None, f"{real.path} has no target column (prepare with --target): there is nothing to predict"
        if self.spec["target"]["role"] == "label" and synth_labels is None:
            return None, "the synthetic rows have no target values (an unconditional model)"
        return table_utility(self, (real.train_data, real.train_labels), (real.test_data, real.test_labels),
                             (synth, synth_labels), seeds=seeds, progress=progress), None

    # -- evaluation: the model's own view (quantile-normal numbers, one-hot categories) as features and distances.
    def feature_extractor(self, dataset, choice: str, *, inception_weights: str | None, classifier_epochs: int,
                          device: str | torch.device) -> FeatureExtractor:
        if choice not in ("auto", "data"):
            raise UserError(f"eval.extractor={choice} is for images; table rows are compared in their encoded space "
                            "(quantile-normal numbers, one-hot categories): use eval.extractor=auto")
        digest = hashlib.sha256(repr(self.spec["encoding"]).encode()).hexdigest()
        return FeatureExtractor("encoded-rows (quantile-normal, one-hot)", digest,
                                lambda x: torch.from_numpy(self.encoding.encode(x.numpy())), batch_size=65_536)

    def dedup_distance(self) -> float:
        return 1e-6 * math.sqrt(self.encoding.dim)

    def neighbour_view(self, data: np.ndarray) -> np.ndarray:
        return self.encoding.encode(np.asarray(data, np.float64)).astype(np.float64)

    def domain_classifier(self, dataset, epochs: int) -> tuple[Classifier, dict[str, Any]]:
        model = self.fit_classifier(dataset.train_data, dataset.train_labels, dataset.num_classes, epochs=epochs, seed=0)
        accuracy = model.accuracy(dataset.test_data, dataset.test_labels)
        return model, {"name": "difftrain-table-lightgbm", "weights_sha256": None, "test_accuracy": accuracy}

    def fit_classifier(self, data: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int, seed: int,
                       steps: int | None = None, batch: int = 128) -> Classifier:
        return fit_table_classifier(np.asarray(data, np.float64), labels, num_classes, self.schema, seed=seed,
                                    trees=steps or 200)

    def extra_metrics(self, samples: np.ndarray, reference: np.ndarray, seed: int) -> dict[str, Callable[[np.ndarray], float]]:
        from difftrain.evaluation import table_metrics as tm

        real = self.frame(reference)
        schema = self.schema  # the references have no labels here: the features are compared
        return {"column_shape_error": lambda s: 1.0 - tm.column_shapes(real, self.frame(s), schema)["score"],
                "pair_trend_error": lambda s: 1.0 - tm.pair_trends(real, self.frame(s), schema)["score"],
                "c2st_auc": lambda s: tm.c2st_auc(real, self.frame(s), schema, seed=seed),
                "alpha_precision": lambda s: tm.alpha_precision_beta_recall(real, self.frame(s), schema)["precision"],
                "beta_recall": lambda s: tm.alpha_precision_beta_recall(real, self.frame(s), schema)["recall"]}

    def dequantize(self, batch: torch.Tensor, generator: torch.Generator) -> Dequantized:
        raise UserError("nll is not defined for tables: categories are decoded by argmax, so the model has no density over "
                        "rows; drop nll from the metrics")
