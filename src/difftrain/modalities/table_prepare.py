"""`data prepare --kind tabular`: a CSV/Parquet table or a built-in one becomes float64 codes split into training and
held-out rows, with its schema (types, categories, bounds, missing rates) and the model's encoding fitted on the training
rows only. A categorical target becomes the class labels. The source is never touched; the output is written atomically."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.errors import UserError


def parse_types(text: str | None) -> dict[str, str] | None:
    """--types "age=integer,zip=categorical", or a schema file (.json/.yaml: {column: type}, or a list of {"name",
    "type"} as a prepared manifest's "schema" holds it) -> {"age": "integer", "zip": "categorical"}."""
    if not text:
        return None
    if Path(text).suffix.lower() in (".json", ".yaml", ".yml"):
        return _types_file(Path(text))
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise UserError(f"--types {text!r}: write column=type pairs separated by commas (e.g. age=integer,zip=categorical)"
                        " or name a .json/.yaml schema file")
    return {name.strip(): kind.strip() for name, kind in (p.split("=", 1) for p in pairs)}


def _types_file(path: Path) -> dict[str, str]:
    import yaml

    if not path.is_file():
        raise UserError(f"--types {path}: no such schema file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"--types {path}: not readable as JSON or YAML ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("schema"), list):
        data = data["schema"]  # a whole manifest.json
    if isinstance(data, list) and all(isinstance(c, dict) and "name" in c and "type" in c for c in data):
        data = {c["name"]: c["type"] for c in data}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise UserError(f"--types {path}: write a mapping of column to type (age: integer), or a list of "
                        "{name, type} entries as a prepared manifest's schema")
    return {str(k): v for k, v in data.items()}


def prepare_table(source: str | Path, out: str | Path, *, target: str | None = None, types: str | dict | None = None,
                  columns: list[str] | None = None, na_values: list[str] | None = None, test_file: str | Path | None = None,
                  max_categories: int = 1000,
                  limit: int | None = None, test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False,
                  progress: bool = True, expect_kind: str | None = None, warn=None, **unused: Any):
    """float64 train/test_rows.npy (N, K), int64 labels for a categorical target, and a manifest with the schema."""
    import pandas as pd

    import difftrain
    from difftrain.data.dataset import FORMAT_VERSION, load_dataset
    from difftrain.data.prepared_output import check_out_folder, pick_stratified, write_prepared
    from difftrain.data.table_sources import BUILTIN_TABLES, infer_schema, read_table, to_codes
    from difftrain.modalities.table import TableModality
    from difftrain.modalities.table_encoding import fit_encoding

    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction!r}")
    types = parse_types(types) if isinstance(types, str) or types is None else types
    builtin = str(source) in BUILTIN_TABLES
    table = read_table(source, target=target, types=types, columns=columns, na_values=na_values,
                       max_categories=max_categories)
    frame = table.frame
    held_out = None
    if test_file is not None:
        # The held-out file is read with the training file's columns and types, its cells checked alone and its columns
        # (one value, like an id...) with the training rows: one schema, inferred on both, covers both.
        other = read_table(test_file, target=target, types={c["name"]: c["type"] for c in table.schema},
                           columns=list(frame.columns), na_values=na_values, max_categories=max_categories,
                           typed_by=f"its type in {source}", table_checks=False)
        both = pd.concat([frame, other.frame[list(frame.columns)]], ignore_index=True)
        schema, notes = infer_schema(both, types={c["name"]: c["type"] for c in table.schema}, where=f"{source} + {test_file}",
                                     max_categories=max_categories)
        held_out = np.arange(len(frame), len(both))
        frame = both
    else:
        schema, notes = table.schema, table.warnings
    out = check_out_folder(Path(out), None, overwrite)
    if not builtin and out == Path(source).resolve():
        raise UserError(f"--out {out} is the source file itself; preparing never replaces the source. Choose a folder.")
    codes = to_codes(frame, schema)
    target_column = next((c for c in schema if c["name"] == table.target), None) if table.target else None
    labelled = target_column is not None and target_column["type"] in ("categorical", "boolean")
    labels = None
    if labelled:
        k = [c["name"] for c in schema].index(target_column["name"])
        if np.isnan(codes[:, k]).any():
            raise UserError(f"{source}: the target column {target_column['name']!r} has {int(np.isnan(codes[:, k]).sum())} "
                            "missing cell(s); drop those rows or choose another --target")
        labels = codes[:, k].astype(np.int64)
        codes = np.delete(codes, k, axis=1)
        features = [c for c in schema if c["name"] != target_column["name"]]
    else:
        features = schema
    if not features:
        raise UserError(f"{source}: no column is left besides the target {table.target!r}; a table needs at least one more")
    rng = np.random.default_rng(seed)
    strata = labels if labels is not None else np.zeros(len(codes), np.int64)
    is_test = np.zeros(len(codes), bool)
    if held_out is not None:
        is_test[held_out] = True
    else:
        is_test[pick_stratified(strata, min(round(len(codes) * test_fraction), len(codes) - 2), rng)] = True
    if limit is not None and limit < int((~is_test).sum()):
        train_idx = np.flatnonzero(~is_test)
        keep = np.zeros(len(codes), bool)
        keep[train_idx[pick_stratified(strata[train_idx], limit, rng)]] = True
        keep |= is_test
        codes, strata, is_test = codes[keep], strata[keep], is_test[keep]
        labels = None if labels is None else labels[keep]
    if int((~is_test).sum()) < 2:
        raise UserError(f"{source} has {int((~is_test).sum())} training row(s); a table dataset needs at least 2")
    arrays = {"train_rows": codes[~is_test], "test_rows": codes[is_test]}
    if labels is not None:
        arrays |= {"train_labels": labels[~is_test], "test_labels": labels[is_test]}
    class_names = list(target_column["categories"]) if labelled else None
    digest = hashlib.sha256(codes.tobytes() + (b"" if labels is None else labels.tobytes())).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION, "kind": TableModality.kind, "shape": [len(features)], "dtype": "float64",
        "count": {"train": int((~is_test).sum()), "test": int(is_test.sum())},
        "num_classes": len(class_names) if labelled else None, "class_names": class_names,
        **({"class_counts": {split: np.bincount(arrays[f"{split}_labels"], minlength=len(class_names)).tolist()
                             for split in ("train", "test")}} if labelled else {}),
        "column_order": [c["name"] for c in schema],  # the source's, which outputs keep (the target is not last)
        "schema": features, "target": ({**target_column, "role": "label" if labelled else "feature"}
                                       if target_column is not None else None),
        "encoding": fit_encoding(arrays["train_rows"], features),
        "warnings": notes,
        "source": {"path": str(source), "kind": "builtin" if builtin else "file", "sha256": digest, **table.source,
                   **({"test_file": str(test_file)} if test_file is not None else {})},
        "provenance": BUILTIN_TABLES.get(str(source)) if builtin else None,
        "rejected": [],
        "options": {"target": target, "types": types, "columns": columns, "na_values": na_values,
                    "test_file": None if test_file is None else str(test_file), "limit": limit,
                    "test_fraction": None if test_file is not None else test_fraction, "seed": seed},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "difftrain_version": difftrain.__version__,
    }
    write_prepared(out, arrays, manifest, overwrite)
    return load_dataset(out)
