"""Point sets: built-in 2-D benchmarks (two moons, Swiss roll, Gaussian mixtures) and numeric CSV/Parquet tables.

Both give a `PointTable`: float32 (N, D) features, optional int64 class labels, and the rows a table
rejected with the reason, so `prepare` can record them in the manifest instead of failing on one bad cell.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from difftrain.errors import UserError


@dataclass
class PointTable:
    """Points with their labels, feature names, rejected input rows and where they came from."""

    points: np.ndarray  # (N, D) float32
    labels: np.ndarray | None  # (N,) int64 indices into class_names, or None when unlabelled
    class_names: list[str]
    columns: list[str]  # feature names, one per column of `points`
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"row": int, "reason": str}
    source: dict[str, Any] = field(default_factory=dict)  # {"builtin": name, "seed": seed} or {"file": path}


BUILTIN_POINTS: dict[str, str] = {
    "moons": "two interleaving half circles (scikit-learn make_moons, noise 0.05); classes 'lower' and 'upper'",
    "swissroll": "2-D Swiss roll (scikit-learn make_swiss_roll, noise 0.5, x and z divided by 7 to about unit std); unlabelled",
    "gaussians25": "5x5 grid of Gaussians at {-4,-2,0,2,4}^2 with std 0.05 (Srivastava et al. 2017; Tanaka & Aranha 2019); "
                   "25 classes 'r{row}c{col}' (row: y, col: x, 0 at -4)",
    "gaussian_mixture": "8 Gaussians on a circle of radius 2 with std 0.02 (Metz et al. 2017, unrolled GANs); "
                        "classes 'g0'..'g7', g{k} at angle k*45 degrees",
    "circles": "two concentric circles (scikit-learn make_circles, factor 0.5, noise 0.05); classes 'inner' and 'outer'",
}

_SWISSROLL_SCALE = 7.0  # std of make_swiss_roll's (x, z) with noise 0.5 is about 6.9


def gaussian_mixture_parameters(name: str) -> tuple[np.ndarray, float]:
    """The true components of a built-in mixture: means (K, 2) in class order, and their common std (equal weights)."""
    if name == "gaussians25":
        grid = np.arange(-4.0, 5.0, 2.0)
        means = np.array([(x, y) for y in grid for x in grid])  # class r{row}c{col} = index 5*row + col
        return means, 0.05
    if name == "gaussian_mixture":
        angles = np.arange(8) * (2 * math.pi / 8)
        return 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.02
    raise ValueError(f"{name!r} is not a built-in Gaussian mixture (gaussians25, gaussian_mixture)")


def _mixture(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    means, std = gaussian_mixture_parameters(name)
    labels = rng.permutation(np.arange(n) % len(means))  # balanced classes in a random order
    return means[labels] + std * rng.standard_normal((n, 2)), labels


def generate_points(name: str, n: int, seed: int = 0) -> PointTable:
    """`n` points of the built-in set `name`, a pure function of (name, n, seed)."""
    from sklearn import datasets

    if name not in BUILTIN_POINTS:
        raise UserError(f"unknown built-in point set {name!r}; choose one of: {', '.join(BUILTIN_POINTS)}, or give a CSV/Parquet file")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"the number of points to draw from {name!r} must be a positive integer, got {n!r}")
    n = int(n)
    rng = np.random.default_rng(seed)
    class_names: list[str] = []
    labels: np.ndarray | None
    if name == "moons":
        # make_moons: 0 is the upper half circle, 1 the lower; class names are kept in sorted order.
        x, y = datasets.make_moons(n, noise=0.05, random_state=seed)
        class_names, labels = ["lower", "upper"], 1 - y
    elif name == "circles":
        x, y = datasets.make_circles(n, noise=0.05, factor=0.5, random_state=seed)  # 0 outer, 1 inner
        class_names, labels = ["inner", "outer"], 1 - y
    elif name == "swissroll":
        x3, _ = datasets.make_swiss_roll(n, noise=0.5, random_state=seed)
        x, labels = x3[:, [0, 2]] / _SWISSROLL_SCALE, None
    elif name == "gaussians25":
        x, labels = _mixture(name, n, rng)
        class_names = [f"r{r}c{c}" for r in range(5) for c in range(5)]
    else:  # gaussian_mixture
        x, labels = _mixture(name, n, rng)
        class_names = [f"g{k}" for k in range(8)]
    return PointTable(
        points=np.ascontiguousarray(x, dtype=np.float32),
        labels=None if labels is None else np.asarray(labels, np.int64),
        class_names=class_names,
        columns=["x", "y"],
        rejected=[],
        source={"builtin": name, "seed": seed},
    )


# -- tables ------------------------------------------------------------------------------------------------

def read_point_table(path: str | Path, *, label_column: str | None = None, columns: list[str] | None = None) -> PointTable:
    """Points from a CSV file (header row required) or a Parquet file.

    Feature columns are `columns` (default: every column but `label_column`), read as float32. A row with an
    empty, non-numeric, NaN or infinite feature cell, an empty label or the wrong number of cells is dropped
    and listed in `rejected` as {"row": line number in the CSV (header = 1) or 1-based Parquet row, "reason"}.
    Labels are the label column's distinct values, sorted (numerically when they are all numbers).
    """
    path = Path(path)
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"{path} {where}: give a CSV or Parquet file of numeric columns, or a built-in point set "
                        f"({', '.join(BUILTIN_POINTS)})")
    if path.suffix.lower() in (".parquet", ".pq"):
        names, cells, rows, rejected = _read_parquet(path)
    else:
        names, cells, rows, rejected = _read_csv(path)
    return _table(path, names, cells, rows, rejected, label_column, columns)


def _read_csv(path: Path) -> tuple[list[str], dict[str, list[Any]], np.ndarray, list[dict[str, Any]]]:
    """Header names, each column's cells (strings) for the well-formed rows, their line numbers, and bad rows."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader, header = csv_header(f)
            if header is None:
                raise UserError(f"{path} is empty: a points CSV needs a header row of column names and one row per point")
            names = [c.strip() for c in header]
            check_header(path, names)
            values: list[list[str]] = []
            lines: list[int] = []
            rejected: list[dict[str, Any]] = []
            line = reader.line_num
            for record in reader:
                start, line = line + 1, reader.line_num  # a quoted cell may span lines: report the first
                if not any(c.strip() for c in record):
                    continue  # blank line
                if len(record) != len(names):
                    rejected.append({"row": start, "reason": f"line {start} has {len(record)} cells; the header has {len(names)}"})
                    continue
                values.append(record)
                lines.append(start)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as a UTF-8 CSV") from None
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV (line {reader.line_num}: {e}): check its quoting") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    cells = {name: [record[i] for record in values] for i, name in enumerate(names)}
    return names, cells, np.asarray(lines, np.int64), rejected


def check_columns(asked: list[str], names: list[str], where: Any, word: str = "column", listing: str | None = None) -> None:
    """Refuse --columns that name something `names` lacks, or one thing twice (points, series, tables)."""
    unknown = [c for c in asked if c not in names]
    if unknown:
        raise UserError(f"{where} has no {word} {', '.join(map(repr, unknown))} (asked for in --columns); "
                        f"{listing or f'its {word}s are: ' + ', '.join(names)}")
    doubled = sorted({c for c in asked if asked.count(c) > 1})
    if doubled:
        raise UserError(f"--columns names {', '.join(map(repr, doubled))} more than once; name each {word} once")


def csv_header(f) -> tuple[Any, list[str] | None]:
    """A csv reader over an open text file and its header row (the first row with a cell; None: no such row).
    Comma unless the header clearly uses another separator (';' from some spreadsheets, or tabs)."""
    first = next((line for line in f if line.strip()), "")
    f.seek(0)
    reader = csv.reader(f, delimiter=max([",", ";", "\t"], key=lambda d: (first.count(d), d == ",")))
    header = next(reader, None)
    while header is not None and not any(c.strip() for c in header):
        header = next(reader, None)  # blank lines before the header
    return reader, header


def check_header(path: Path, names: list[str]) -> None:
    """Refuse a header row that is data, or that leaves a column unnamed or names one twice (tables of points and series)."""
    if names and all(is_number(n) for n in names):
        raise UserError(f"{path}: the first row ({', '.join(names[:5])}) looks like data, not column names; "
                        "add a header row naming the columns")
    seen: set[str] = set()
    for i, name in enumerate(names, 1):
        if not name:
            raise UserError(f"{path}: column {i} has no name in the header (a saved index?); name it or remove it")
        if name in seen:
            raise UserError(f"{path}: the header names column {name!r} twice; give every column its own name")
        seen.add(name)


def _read_parquet(path: Path) -> tuple[list[str], dict[str, Any], np.ndarray, list[dict[str, Any]]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow, which is not installed: pip install pyarrow "
                        "(or save the table as CSV)") from None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path} is not a readable Parquet file ({e})") from None
    names = [str(n) for n in table.column_names]
    check_header(path, names)
    cells: dict[str, Any] = {}
    for name, column in zip(names, table.columns):
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
            missing = column.is_null().to_numpy(zero_copy_only=False)
            cells[name] = [None if m else v for v, m in zip(values.tolist(), missing.tolist())] if missing.any() else values
        else:
            cells[name] = [None if v is None else str(v) for v in column.to_pylist()]
    return names, cells, np.arange(1, table.num_rows + 1, dtype=np.int64), []


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse(cells: Sequence[Any]) -> tuple[np.ndarray, list[str | None]]:
    """float64 values of a column's cells, and per cell None or why it is not a usable number."""
    if isinstance(cells, np.ndarray):
        values = cells.astype(np.float64)
        problems: list[str | None] = [None] * len(values)
    else:
        try:  # fast path: every cell a number (numpy would read a None as NaN: that is an empty cell)
            if any(c is None for c in cells):
                raise ValueError
            values = np.asarray([c.strip() if isinstance(c, str) else c for c in cells], dtype=np.float64)
            problems = [None] * len(values)
        except (ValueError, TypeError):
            values = np.full(len(cells), np.nan)
            problems = []
            for i, cell in enumerate(cells):
                text = "" if cell is None else str(cell).strip()
                if not text:
                    problems.append("is empty")
                    continue
                try:
                    values[i] = float(text)
                    problems.append(None)
                except ValueError:
                    problems.append(f"has {_show(text)}, not a number")
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(values.astype(np.float32))  # inf also when a finite float64 overflows float32
    for i in np.flatnonzero(bad):
        if problems[i] is None:
            v = values[i]
            problems[i] = ("is NaN" if np.isnan(v) else "is infinite" if np.isinf(v)
                           else f"has {v!r}, beyond the float32 range")
    return values, problems


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _table(path: Path, names: list[str], cells: dict[str, Any], rows: np.ndarray, rejected: list[dict[str, Any]],
           label_column: str | None, columns: list[str] | None) -> PointTable:
    """Features and labels from parsed columns; bad rows join `rejected` and are dropped."""
    available = ", ".join(names)
    if label_column is not None and label_column not in names:
        raise UserError(f"{path} has no column {label_column!r} for --label-column; its columns are: {available}")
    if columns is None:
        features = [n for n in names if n != label_column]
    else:
        features = list(columns)
        check_columns(features, names, path)
        if label_column in features:
            raise UserError(f"column {label_column!r} of {path} is both the label (--label-column) and a feature (--columns); "
                            "leave it out of --columns")
    if not features:
        raise UserError(f"{path}: no feature columns are left (columns: {available}; label: {label_column}); "
                        "a points dataset needs at least one numeric column")
    n = len(rows)
    if n == 0 and not rejected:
        raise UserError(f"{path} has a header but no data rows: add one row per point")
    word = "line" if path.suffix.lower() not in (".parquet", ".pq") else "row"

    reasons: list[list[str]] = [[] for _ in range(n)]
    parsed = []
    for name in features:
        values, problems = _parse(cells[name])
        if n and all(p is not None for p in problems):
            example = next((i for i, p in enumerate(problems) if "not a number" in p), None)
            others = [f for f in features if f != name]
            leave_out = "leave it out" + (f" with --columns {','.join(others)}" if others else "")
            if example is not None:
                what = f"holds no numbers (e.g. {_show(str(cells[name][example]).strip())} on {word} {rows[example]})"
                fix = f"if it holds class labels pass --label-column {name}, otherwise {leave_out}"
            else:
                what, fix = "has no usable numbers (every cell is empty, NaN or infinite)", leave_out
            raise UserError(f"{path}: column {name!r} {what}; {fix}")
        for i, problem in enumerate(problems):
            if problem is not None:
                reasons[i].append(f"column {name!r} {problem}")
        parsed.append(values)

    labels_text: list[str | None] = []
    if label_column is not None:
        raw = cells[label_column]
        raw = raw.tolist() if isinstance(raw, np.ndarray) else raw
        for i, value in enumerate(raw):
            text = None if value is None or (isinstance(value, float) and math.isnan(value)) else _label_text(value)
            labels_text.append(text or None)
            if not text:
                reasons[i].append(f"label column {label_column!r} is empty")

    keep = np.array([not r for r in reasons], dtype=bool) if n else np.zeros(0, bool)
    for i in np.flatnonzero(~keep):
        rejected.append({"row": int(rows[i]), "reason": f"{word} {rows[i]}: " + "; ".join(reasons[i])})
    rejected.sort(key=lambda r: r["row"])
    if not keep.any():
        shown = "; ".join(r["reason"] for r in rejected[:3]) + ("; ..." if len(rejected) > 3 else "")
        raise UserError(f"{path}: no usable rows; all {len(rejected)} were rejected ({shown}). "
                        "Fix those cells, or choose the numeric feature columns with --columns")

    points = np.stack(parsed, axis=1)[keep].astype(np.float32)
    labels, class_names = None, []
    if label_column is not None:
        kept = [t for t, k in zip(labels_text, keep) if k]
        class_names = sorted(set(kept), key=_label_order(kept))
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.asarray([index[t] for t in kept], np.int64)
    return PointTable(points=np.ascontiguousarray(points), labels=labels, class_names=class_names, columns=features,
                      rejected=rejected, source={"file": str(path)})


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a numeric Parquet label 3.0 is class "3", as in a CSV
    return str(value).strip()


def _label_order(labels: list[str]):
    """Sort key: numerically when every label is a number (so '10' follows '9'), else as text."""
    if all(is_number(t) for t in set(labels)):
        return lambda t: (float(t), t)
    return lambda t: t
