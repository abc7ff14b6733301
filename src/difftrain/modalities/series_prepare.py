"""`data prepare --kind timeseries`: a series file or a built-in set becomes windows split by time, with per-channel
scaling fitted on the training split only. The source is never touched; the output is written atomically."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.errors import UserError

SCALINGS = ("minmax", "standard")


def scaling_of(train: np.ndarray, method: str) -> dict[str, list[float]]:
    """Per-channel statistics of the training windows (N, L, C), NaN ignored: the model sees (x - offset) / scale, in
    [-1, 1] for min-max; a constant channel keeps scale 1. min and max also scale the metrics' [0, 1] space."""
    flat = train.reshape(-1, train.shape[-1]).astype(np.float64)
    lo, hi = np.nanmin(flat, 0), np.nanmax(flat, 0)
    if method == "minmax":
        offset, scale = (hi + lo) / 2, (hi - lo) / 2
    else:
        offset, scale = np.nanmean(flat, 0), np.nanstd(flat, 0)
    return {"offset": offset.tolist(), "scale": np.where(scale > 1e-12, scale, 1.0).tolist(), "min": lo.tolist(), "max": hi.tolist()}


def prepare_series(source: str | Path, out: str | Path, *, window: int | None = None, stride: int = 1,
                   columns: list[str] | None = None, time_column: str | None = None, id_column: str | None = None,
                   scaling: str = "minmax", allow_missing: bool = False, n: int | None = None, limit: int | None = None,
                   test_fraction: float = 0.1, seed: int = 0, overwrite: bool = False, progress: bool = True,
                   expect_kind: str | None = None, **unused: Any):
    """float32 train/test_series.npy (N, window, C) and a manifest with the columns, the split and the scaling."""
    import difftrain
    from difftrain.data.dataset import FORMAT_VERSION, load_dataset
    from difftrain.data.prepared_output import check_out_folder, write_prepared
    from difftrain.data.series_sources import BUILTIN_SERIES, generate_series, read_series_table, split_windows
    from difftrain.modalities.series import SeriesModality

    options = {name: value for name, value in unused.items() if value not in (None, False, "crop")}
    if options:
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in options)} do not apply to time series ({source}): "
                        "leave them out")
    if scaling not in SCALINGS:
        raise UserError(f"--scaling {scaling!r}: choose one of {', '.join(SCALINGS)}")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction!r}")
    window = 24 if window is None else window
    builtin = str(source) in BUILTIN_SERIES
    if builtin and (columns or time_column or id_column or allow_missing):
        raise UserError(f"--columns, --time-column, --id-column and --allow-missing read files; the built-in set {source} "
                        "has its own channels")
    table = (generate_series(str(source), seed=seed, n=n, window=window) if builtin else
             read_series_table(source, columns=columns, time_column=time_column, id_column=id_column, allow_missing=allow_missing))
    if n is not None and not builtin:
        raise UserError(f"--n draws windows of a built-in set; {source} is a file, whose rows are all read")
    out = check_out_folder(Path(out), None, overwrite)
    if not builtin and out == Path(source).resolve():
        raise UserError(f"--out {out} is the source file itself; preparing never replaces the source. Choose a folder.")
    train, test, split = split_windows(table, window, stride, test_fraction)
    if limit is not None and limit < len(train):  # evenly spread over time, not the first stretch
        train = train[np.linspace(0, len(train) - 1, limit).round().astype(np.int64)]
    if len(train) < 2:
        raise UserError(f"{source} gives {len(train)} training window(s) of {window} steps; a dataset needs at least 2: "
                        "use a shorter --window or a smaller --stride")
    gaps = bool(np.isnan(train).any() or np.isnan(test).any())
    stats = scaling_of(train, scaling)
    if any(not np.isfinite(v) for v in stats["offset"]):
        empty = [c for c, v in zip(table.columns, stats["offset"], strict=True) if not np.isfinite(v)]
        raise UserError(f"{source}: column(s) {', '.join(empty)} have no value in the training split; drop them with --columns")
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(s).tobytes() for s in table.series)).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION, "kind": SeriesModality.kind, "shape": [window, len(table.columns)], "dtype": "float32",
        "count": {"train": int(len(train)), "test": int(len(test))}, "num_classes": None, "class_names": None,
        "columns": table.columns, "scaling": scaling, **stats, "gaps": gaps, "missing": table.missing,
        "window": window, "stride": stride, "split": split,
        "source": {"path": str(source), "kind": "builtin" if builtin else "file", "sha256": digest, **table.source,
                   "series": len(table.series),
                   **({"start_times": table.start_times[:20]} if any(t is not None for t in table.start_times) else {})},
        "provenance": BUILTIN_SERIES.get(str(source)) if builtin else None,
        "rejected": [],
        "options": {"window": window, "stride": stride, "columns": columns, "time_column": time_column, "id_column": id_column,
                    "scaling": scaling, "allow_missing": allow_missing, "n": n, "limit": limit,
                    "test_fraction": test_fraction, "seed": seed},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "difftrain_version": difftrain.__version__,
    }
    write_prepared(out, {"train_series": train.astype(np.float32), "test_series": test.astype(np.float32)}, manifest, overwrite)
    return load_dataset(out)
