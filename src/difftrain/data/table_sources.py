"""Tables of mixed columns: built-ins (scikit-learn's wine and breast cancer, a generated adult-like census) and
CSV/Parquet files.

`read_table` gives a `TableSource`: the typed frame plus a JSON-ready schema (type, missing rate, bounds, categories)
inferred once, so that prepare, sampling and evaluation agree on what every column is. `to_codes` / `from_codes` turn
rows into one float64 number per cell and back; `from_codes` also repairs model outputs (rounds integers, clips to the
seen range), so a generated table never holds a 3.7-year-old or a category that does not exist.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.data.point_sources import check_header as _check_header
from difftrain.data.point_sources import check_columns, csv_header
from difftrain.errors import UserError

TYPES = ("numeric", "integer", "categorical", "boolean", "datetime")

BUILTIN_TABLES: dict[str, str] = {
    "wine": "178 wines from three cultivars, 13 numeric chemical measurements (scikit-learn load_wine, UCI Wine); "
            "target 'target' in class_0..class_2",
    "breast_cancer": "569 breast mass samples, 30 numeric features of cell nuclei (scikit-learn load_breast_cancer, "
                     "UCI Wisconsin Diagnostic); target 'target' in malignant/benign",
    "adult_like": "2000 generated census-like rows (seeded): integer, numeric, categorical (workclass with a few "
                  "missing cells) and boolean columns; target 'income' in <=50K/>50K, driven by the other columns",
}
_BUILTIN_TARGETS = {"wine": "target", "breast_cancer": "target", "adult_like": "income"}

_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
# pandas' read_csv missing-value tokens (keep_default_na=True), matched after stripping the cell.
_DEFAULT_NA = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                         "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])
_BOOLEAN_PAIRS = ({"false", "true"}, {"no", "yes"}, {"f", "t"}, {"n", "y"})
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_NUMBER_TEXT = re.compile(r"[+-]?\d*(?:\.(\d*))?(?:[eE]([+-]?\d+))?")
_MONTH = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec", re.IGNORECASE)
_MAX_DECIMALS = 6
_MANY_CATEGORIES = 50  # more distinct values than this: warn (rare categories get few training rows)
_ID_ROWS = 50  # a column unique on more rows than this is id-like
_EXACT_INT = 2.0 ** 53  # float64 codes hold integers exactly up to here
_NS = 10 ** 9
_UNITS = (("D", 86_400 * _NS), ("s", _NS), ("ms", 10 ** 6), ("us", 10 ** 3))
_NAT = np.iinfo(np.int64).min


@dataclass
class TableSource:
    """A typed table, its schema (one dict per column, in order), the target column, warnings and its origin."""

    frame: Any  # pandas.DataFrame: original column order, only the kept columns
    schema: list[dict[str, Any]]
    target: str | None
    warnings: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # {"builtin": name} or {"file": path}


@dataclass
class _Raw:
    """One column before typing: text cells (None = missing), or numbers / datetimes that came typed."""

    name: str
    kind: str  # "text" | "number" | "datetime"
    cells: np.ndarray  # text: object str|None; number: float64 NaN = missing; datetime: int64 ns (UTC), _NAT = missing
    whole: bool = False  # number: stored with an integer type (a Parquet int column), so "integer" not "numeric"
    zone: str | None = None  # datetime: the time zone a typed source stored it in, which outputs are shown in again


# -- built-ins ---------------------------------------------------------------------------------------------

def _builtin_frame(name: str):
    import pandas as pd

    if name in ("wine", "breast_cancer"):
        from sklearn import datasets

        bunch = (datasets.load_wine if name == "wine" else datasets.load_breast_cancer)(as_frame=True)
        frame = bunch.frame.copy()
        names = np.asarray([str(t) for t in bunch.target_names], dtype=object)
        frame["target"] = pd.Series(names[frame["target"].to_numpy()], dtype=object)
        return frame
    return _adult_like()


def _adult_like(n: int = 2000, seed: int = 1994):
    """Census-like rows whose income depends on age, education, hours, marital status, sex, occupation and gains."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = np.clip(np.round(rng.normal(39, 13, n)), 17, 90).astype(np.int64)
    education = np.clip(np.round(rng.normal(10, 2.5, n)), 1, 16).astype(np.int64)
    sex = rng.choice(["Female", "Male"], n, p=[0.33, 0.67])
    marital = rng.choice(["Divorced", "Married", "Never-married", "Widowed"], n, p=[0.14, 0.47, 0.33, 0.06])
    workclass = rng.choice(["Government", "Private", "Self-emp", "Without-pay"], n, p=[0.15, 0.70, 0.12, 0.03])
    occupation = rng.choice(["Clerical", "Craft", "Exec-managerial", "Prof-specialty", "Sales", "Service"], n)
    hours = np.clip(np.round(rng.normal(40, 11, n)), 1, 99).astype(np.int64)
    gain = np.where(rng.random(n) < 0.08, np.round(np.exp(rng.normal(8, 1, n)), 2), 0.0)
    owns_home = rng.choice(["no", "yes"], n, p=[0.4, 0.6])
    senior = np.isin(occupation, ["Exec-managerial", "Prof-specialty"])
    logit = (-10.5 + 0.045 * age + 0.45 * education + 0.035 * hours + 1.3 * (marital == "Married")
             + 0.4 * (sex == "Male") + 1.6 * (gain > 0) + 0.8 * senior + 0.3 * (owns_home == "yes"))
    income = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), ">50K", "<=50K")
    workclass = workclass.astype(object)
    workclass[rng.choice(n, 40, replace=False)] = None  # a few unknown employers, as in the UCI Adult data
    columns = {"age": age, "workclass": workclass, "education_num": education, "marital_status": marital,
               "occupation": occupation, "sex": sex, "capital_gain": gain, "hours_per_week": hours,
               "owns_home": owns_home, "income": income}
    return pd.DataFrame({k: pd.Series(v, dtype=object if v.dtype.kind in "OU" else v.dtype)
                         for k, v in columns.items()})


# -- reading -----------------------------------------------------------------------------------------------

def read_table(source: str | Path, *, target: str | None = None, types: dict[str, str] | None = None,
               columns: list[str] | None = None, na_values: list[str] | None = None,
               max_categories: int = 1000, typed_by: str = "--types", table_checks: bool = True) -> TableSource:
    """A built-in name or a CSV/Parquet file -> TableSource, types inferred unless given in `types` (column -> type).

    A built-in's class column is the target unless `target` names another. CSV cells and column names are stripped;
    pandas' missing-value tokens and `na_values` mark missing cells. Only the kept columns (`columns` plus the target)
    are typed and checked, so --columns is how a user drops a column this refuses. `typed_by` names where `types`
    came from in messages; `table_checks=False` skips the checks of a whole column (one value, like an id, too many
    categories), for a part of a table (a held-out file) that is checked with the rest.
    """
    _check_max_categories(max_categories)
    if isinstance(columns, str):
        columns = [columns]
    if isinstance(na_values, str):
        na_values = [na_values]
    tokens = _DEFAULT_NA | {str(t).strip() for t in (na_values or [])}
    extra = {str(t).strip() for t in (na_values or [])}
    if isinstance(source, str) and source in BUILTIN_TABLES:
        where, word, origin = f"built-in table {source!r}", "row", {"builtin": source}
        frame = _builtin_frame(source)
        names = [str(c) for c in frame.columns]
        raws = {name: _apply_na(_raw(name, frame[col], where), extra) for name, col in zip(names, frame.columns)}
        rows = np.arange(1, len(frame) + 1, dtype=np.int64)
        target = _BUILTIN_TARGETS[source] if target is None else target
    else:
        path = Path(source)
        where, origin = str(path), {"file": str(path)}
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise UserError(f"{path} {what}: give a CSV or Parquet table, or a built-in table "
                            f"({', '.join(BUILTIN_TABLES)})")
        suffix = path.suffix.lower()
        if suffix in _CSV_SUFFIXES:
            names, raws, rows = _read_csv(path, tokens)
            word = "line"
        elif suffix in _PARQUET_SUFFIXES:
            names, raws, rows = _read_parquet(path)
            raws = {name: _apply_na(raw, extra) for name, raw in raws.items()}
            word = "row"
        else:
            raise UserError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; give a table as "
                            f"{', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)}")
        if not len(rows):
            raise UserError(f"{path} has a header but no data rows: add one row per record")
    kept = _kept(where, names, target, columns)
    types = _check_types(where, names, kept, types)
    schema, notes, series = [], [], {}
    for name in kept:
        column, s, column_notes = _column(raws[name], types.get(name), rows, word, where, max_categories, typed_by,
                                          table_checks)
        schema.append(column)
        series[name] = s
        notes.extend(column_notes)
    return TableSource(frame=_frame(series), schema=schema, target=target, warnings=notes, source=origin)


def infer_schema(frame, *, types: dict[str, str] | None = None, where: str = "the table",
                 max_categories: int = 1000) -> tuple[list[dict[str, Any]], list[str]]:
    """(schema, warnings) for a frame; `where` names the file in messages (rows are counted from 1)."""
    _check_max_categories(max_categories)
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        doubled = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"{where}: column {doubled[0]!r} appears twice; give every column its own name")
    if not len(frame):
        raise UserError(f"{where} has no rows: a table needs at least one row per record")
    types = _check_types(where, names, names, types)
    rows = np.arange(1, len(frame) + 1, dtype=np.int64)
    schema, notes = [], []
    for name, col in zip(names, frame.columns):
        column, _, column_notes = _column(_raw(name, frame[col], where), types.get(name), rows, "row", where,
                                        max_categories)
        schema.append(column)
        notes.extend(column_notes)
    return schema, notes


def _check_max_categories(max_categories: Any) -> None:
    if isinstance(max_categories, bool) or not isinstance(max_categories, (int, np.integer)) or max_categories < 2:
        raise UserError(f"--max-categories must be an integer of at least 2, got {max_categories!r}")


def _kept(where: str, names: list[str], target: str | None, columns: list[str] | None) -> list[str]:
    """The columns to type, in the file's order: `columns` (default all) plus the target."""
    available = ", ".join(names)
    if target is not None and target not in names:
        raise UserError(f"{where} has no column {target!r} for --target; its columns are: {available}")
    if columns is None:
        return list(names)
    chosen = [str(c).strip() for c in columns]
    check_columns(chosen, names, where)
    if not chosen:
        raise UserError(f"--columns picks no column of {where}; name at least one of: {available}")
    keep = set(chosen) | ({target} if target is not None else set())
    return [n for n in names if n in keep]


def _check_types(where: str, names: list[str], kept: list[str], types: dict[str, str] | None) -> dict[str, str]:
    if not types:
        return {}
    checked = {}
    for name, kind in types.items():
        name, kind = str(name).strip(), str(kind).strip().lower()
        if name not in names:
            raise UserError(f"{where}: --types names column {name!r}, which is not in the table; its columns are: "
                            f"{', '.join(names)}")
        if name not in kept:
            raise UserError(f"{where}: --types names column {name!r}, which --columns leaves out; add it to --columns "
                            "or drop it from --types")
        if kind not in TYPES:
            raise UserError(f"{where}: --types {name}={kind}: unknown type {kind!r}; choose one of: "
                            f"{', '.join(TYPES)}")
        checked[name] = kind
    return checked


def _read_csv(path: Path, tokens: frozenset[str] | set[str]) -> tuple[list[str], dict[str, _Raw], np.ndarray]:
    """Header names, each column's stripped text cells (None where missing), and each data row's line number.

    Read with the csv module rather than pandas so that a row with too few cells is refused (pandas pads it) and
    every message can name the line as an editor shows it.
    """
    empty = (f"{path} is empty: a table CSV needs a header row of column names and one row per record")
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader, header = csv_header(f)
            if header is None:
                raise UserError(empty)
            names = [c.strip() for c in header]
            _check_header(path, names)
            records: list[list[str]] = []
            lines: list[int] = []
            line = reader.line_num
            for record in reader:
                start, line = line + 1, reader.line_num  # a quoted cell may span lines: name the first
                if not record or (len(names) > 1 and len(record) == 1 and not record[0].strip()):
                    continue  # a blank line
                if len(record) != len(names):
                    raise UserError(f"{path}: line {start} has {len(record)} cells but the header has {len(names)}: "
                                    f"fix that line (a stray {reader.dialect.delimiter!r} or a missing quote?)")
                records.append(record)
                lines.append(start)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as a UTF-8 CSV") from None
    except csv.Error as e:
        where = f"line {reader.line_num}: " if reader is not None else ""
        raise UserError(f"{path} is not a readable CSV ({where}{e}): check its quoting") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    raws = {}
    for i, name in enumerate(names):
        cells = np.empty(len(records), dtype=object)
        cells[:] = [None if (t := r[i].strip()) in tokens else t for r in records]
        if reader.dialect.delimiter == ";":
            cells = _decimal_commas(cells)
        raws[name] = _Raw(name, "text", cells)
    return names, raws, np.asarray(lines, np.int64)


_LEADING_ZERO = re.compile(r"[+-]?0\d+")
_COMMA_NUMBER = re.compile(r"[+-]?\d+,\d+")
_WHOLE_NUMBER = re.compile(r"[+-]?\d+")


def _decimal_commas(cells: np.ndarray) -> np.ndarray:
    """A column of a ';' CSV written with decimal commas ('1,5', as spreadsheets in many locales save) as '1.5'; left
    as it is unless every present cell is such a number or a whole one, and one at least has a comma."""
    present = [c for c in cells.tolist() if c is not None]
    if not any(_COMMA_NUMBER.fullmatch(c) for c in present):
        return cells
    if not all(_COMMA_NUMBER.fullmatch(c) or _WHOLE_NUMBER.fullmatch(c) for c in present):
        return cells
    out = np.empty(len(cells), dtype=object)
    out[:] = [None if c is None else c.replace(",", ".") for c in cells.tolist()]
    return out


def _read_parquet(path: Path) -> tuple[list[str], dict[str, _Raw], np.ndarray]:
    import pandas as pd

    try:
        import pyarrow.parquet as pq

        names = [str(n) for n in pq.read_schema(path).names]
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow, which is not installed: pip install pyarrow "
                        "(or save the table as CSV)") from None
    except Exception as e:  # pyarrow raises its own types (ArrowInvalid, ...) for a damaged file
        raise UserError(f"{path} is not a readable Parquet file ({str(e).strip()})") from None
    names = [n.strip() for n in names]
    if not names:
        raise UserError(f"{path} has no columns: save a table with at least one column")
    _check_header(path, names)
    try:
        frame = pd.read_parquet(path, dtype_backend="numpy_nullable")  # integer columns with gaps stay integers
    except Exception as e:
        raise UserError(f"{path} is not a readable Parquet file ({str(e).strip()})") from None
    raws = {name: _raw(name, frame.iloc[:, i], where=str(path)) for i, name in enumerate(names)}
    return names, raws, np.arange(1, len(frame) + 1, dtype=np.int64)


def _raw(name: str, series, where: str = "the table") -> _Raw:
    """A pandas column as text cells, or as numbers / datetimes when its dtype says so."""
    import pandas as pd
    from pandas.api import types as pdt

    dtype = series.dtype
    if pdt.is_bool_dtype(dtype):
        return _Raw(name, "text", _texts(series))
    if pdt.is_integer_dtype(dtype) or pdt.is_float_dtype(dtype):
        return _Raw(name, "number", series.to_numpy(dtype=np.float64, na_value=np.nan, copy=True),
                    whole=pdt.is_integer_dtype(dtype))
    if pdt.is_datetime64_any_dtype(dtype):
        zone = getattr(series.dt, "tz", None)
        return _Raw(name, "datetime", _datetime_ns(series, name, where), zone=None if zone is None else str(zone))
    if isinstance(dtype, (pd.CategoricalDtype, pd.StringDtype)) or dtype == object:
        return _Raw(name, "text", _texts(series))
    raise UserError(f"{where}: column {name!r} holds {dtype} values, which a table cannot model; convert it to "
                    "numbers, text or dates, or drop it with --columns")


def _texts(series) -> np.ndarray:
    """Cells as stripped text, None where missing (a whole float 3.0 is "3", as a CSV would hold it)."""
    import pandas as pd

    values = series.astype(object).tolist() if isinstance(series.dtype, pd.CategoricalDtype) else series.tolist()
    out = np.empty(len(values), dtype=object)
    out[:] = [_cell_text(v) for v in values]
    return out


def _cell_text(value: Any) -> str | None:
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)):
        return _number_text(float(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp):
        value = value.isoformat()
    text = str(value).strip()
    return text or None


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < _EXACT_INT else repr(float(value))


def _apply_na(raw: _Raw, tokens: set[str]) -> _Raw:
    """--na-values for typed input: text cells equal to a token, numbers equal to a numeric token, become missing."""
    if not tokens:
        return raw
    if raw.kind == "text":
        cells = raw.cells.copy()
        cells[np.isin(cells, list(tokens))] = None
        return _Raw(raw.name, raw.kind, cells, raw.whole)
    if raw.kind == "number":
        numbers = [v for v in (_to_float(t) for t in tokens) if v is not None]
        cells = raw.cells.copy()
        cells[np.isin(cells, numbers)] = np.nan
        return _Raw(raw.name, raw.kind, cells, raw.whole)
    return raw


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _datetime_ns(series, name: str, where: str) -> np.ndarray:
    """int64 nanoseconds since 1970 (UTC; a time zone is converted, naive times are taken as UTC), _NAT = missing."""
    import pandas as pd

    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    present = series.dropna()
    if len(present) and (present.min() < pd.Timestamp.min or present.max() > pd.Timestamp.max):
        raise UserError(f"{where}: column {name!r} has dates outside 1677-2262, which a table cannot hold; "
                        "fix those cells or drop the column with --columns")
    values = series.astype("datetime64[ns]").to_numpy().view(np.int64)
    return np.where(series.isna().to_numpy(), _NAT, values)


# -- typing one column -------------------------------------------------------------------------------------

def _column(raw: _Raw, forced: str | None, rows: np.ndarray, word: str, where: str, max_categories: int,
            typed_by: str = "--types", table_checks: bool = True) -> tuple[dict[str, Any], Any, list[str]]:
    """The schema dict, the typed pandas Series and the warnings for one column (refusals are UserErrors)."""
    name = raw.name
    missing = _missing(raw)
    n = len(missing)
    if missing.all() and forced is not None and not table_checks:  # a held-out file's empty column: checked with the rest
        gaps = {"integer": lambda: _number_series(np.full(n, np.nan), missing, "integer"),
                "numeric": lambda: _number_series(np.full(n, np.nan), missing, "numeric"),
                "datetime": lambda: _datetime_series(np.full(n, _NAT, np.int64))}
        series = gaps.get(forced, lambda: _category_series(np.full(n, None, dtype=object), missing))()
        return {"name": name, "type": forced, "missing": 1.0}, series, []
    if missing.all():
        raise UserError(f"{where}: column {name!r} has no values (every cell is missing); drop it with --columns")
    if raw.kind == "number" and forced in (None, "numeric", "integer"):
        kind = forced or ("integer" if raw.whole else "numeric")
        values, decimals = raw.cells, None if kind == "integer" else _value_decimals(raw.cells[~missing])
        if kind == "integer":
            _check_whole(raw, values, missing, rows, word, where, typed_by)
    elif raw.kind == "datetime" and forced in (None, "datetime"):
        kind, values, decimals = "datetime", raw.cells, None
    else:
        texts = raw.cells if raw.kind == "text" else _as_text(raw)
        kind, values, decimals = _type_text(name, texts, missing, forced, rows, word, where, typed_by)
    column: dict[str, Any] = {"name": name, "type": kind, "missing": float(missing.mean()), "min": None, "max": None,
                              "decimals": None, "categories": None, "counts": None, "unit": None}
    notes: list[str] = []
    if kind in ("numeric", "integer"):
        present = values[~missing]
        _check_finite(name, values, missing, raw, rows, word, where)
        if kind == "integer":
            big = np.abs(present) > _EXACT_INT
            if big.any():
                i = int(np.flatnonzero(~missing)[np.flatnonzero(big)[0]])
                raise UserError(f"{where}: column {name!r} has an integer beyond 2^53 ({_show(_text_of(raw, i))} on "
                                f"{word} {rows[i]}), which cannot be modelled exactly; drop it with --columns (an id?) "
                                f"or pass --types {name}=categorical")
        distinct = len(np.unique(present))
        column.update(min=float(present.min()), max=float(present.max()),
                      decimals=None if kind == "integer" or decimals is None else int(decimals))
        series = _number_series(values, missing, kind)
    elif kind == "datetime":
        present = values[~missing]
        distinct = len(np.unique(present))
        unit = next((u for u, q in _UNITS if not (present % q).any()), "ns")
        column.update(min=_seconds(present.min()), max=_seconds(present.max()), unit=unit)
        if raw.zone is not None:
            column["timezone"] = raw.zone
        series = _datetime_series(values)
    else:
        categories, counts = np.unique(values[~missing].astype(str), return_counts=True)
        distinct = len(categories)
        column.update(categories=[str(c) for c in categories], counts=[int(c) for c in counts])
        series = _category_series(values, missing)
    if not table_checks:
        return column, series, notes
    if distinct == 1:
        only = _show(column["categories"][0] if column["categories"] else _text_of(raw, int(np.argmin(missing))))
        raise UserError(f"{where}: column {name!r} holds one value only ({only}), which carries nothing to learn; "
                        "drop it with --columns")
    if kind in ("categorical", "integer") and n > _ID_ROWS and distinct == n:
        notes.append(f"column {name!r} has a different value on every one of its {n} rows, like an id: a model can "
                     "only memorise it; drop it with --columns")
    if kind == "categorical":
        if distinct > max_categories:
            raise UserError(f"{where}: column {name!r} has {distinct} distinct values, more than --max-categories "
                            f"{max_categories}; drop it with --columns (an id or free text?), group rare values, or "
                            "raise --max-categories")
        if distinct > _MANY_CATEGORIES and distinct < n:
            notes.append(f"column {name!r} has {distinct} distinct values: rare ones get few training rows; consider "
                         "grouping them, or drop it with --columns")
    return column, series, notes


def _missing(raw: _Raw) -> np.ndarray:
    if raw.kind == "text":
        return np.fromiter((c is None for c in raw.cells), dtype=bool, count=len(raw.cells))
    if raw.kind == "number":
        return np.isnan(raw.cells)
    return raw.cells == _NAT


def _as_text(raw: _Raw) -> np.ndarray:
    """Typed cells as text, for a --types override to another kind (3.0 -> "3", a time -> ISO text)."""
    out = np.empty(len(raw.cells), dtype=object)
    if raw.kind == "number":
        out[:] = [None if math.isnan(v) else _number_text(v) for v in raw.cells.tolist()]
    else:
        stamps = raw.cells.view("M8[ns]")
        out[:] = [None if v == _NAT else str(s).replace("T00:00:00.000000000", "").replace(".000000000", "")
                  for v, s in zip(raw.cells.tolist(), stamps)]
    return out


def _text_of(raw: _Raw, i: int) -> str:
    if raw.kind == "text":
        return str(raw.cells[i])
    return str(_as_text(_Raw(raw.name, raw.kind, raw.cells[i:i + 1]))[0])


def _type_text(name: str, texts: np.ndarray, missing: np.ndarray, forced: str | None, rows: np.ndarray, word: str,
               where: str, typed_by: str = "--types") -> tuple[str, np.ndarray, int | None]:
    """Infer (or check the forced) type of a text column: (type, values, decimals); values are float64 numbers,
    int64 nanoseconds or the text cells. Digits with a leading zero ('02138') are codes, not numbers: as numbers they
    would come back without it."""
    import pandas as pd

    present = np.flatnonzero(~missing)
    codes, uniques = pd.factorize(texts[present])
    uniques = np.asarray(uniques, dtype=object)
    numbers_u = pd.to_numeric(pd.Series(uniques, dtype=object), errors="coerce").to_numpy(dtype=np.float64,
                                                                                          na_value=np.nan)
    is_number = ~np.isnan(numbers_u)

    def examples(bad_u: np.ndarray) -> str:
        bad = present[np.flatnonzero(bad_u[codes])[:3]]
        return ", ".join(f"{_show(texts[i])} on {word} {rows[i]}" for i in bad)

    def misfit(bad_u: np.ndarray, what: str) -> UserError:
        return UserError(f"{where}: column {name!r} is given as {forced} ({typed_by}) but {examples(bad_u)} "
                         f"{'is' if bad_u.sum() == 1 else 'are'} not {what}; fix those cells, mark them missing with "
                         "--na-values, or give another type")

    kind = forced
    if kind is None:
        share = float(is_number[codes].mean())
        lower = {str(u).lower() for u in uniques}
        numbers = not any(_LEADING_ZERO.fullmatch(str(u)) for u in uniques)
        if numbers and is_number.all():
            whole = all(_INTEGER_TEXT.fullmatch(str(u)) for u in uniques)
            kind = "integer" if whole else "numeric"
        elif numbers and share >= 0.9:
            count = int((~is_number[codes]).sum())
            raise UserError(f"{where}: column {name!r} holds numbers but {count} cell{'s' if count > 1 else ''} "
                            f"{'are' if count > 1 else 'is'} not ({examples(~is_number)}); fix those cells, mark them "
                            f"missing with --na-values, or pass --types {name}=categorical")
        elif len(uniques) == 2 and lower in _BOOLEAN_PAIRS:
            kind = "boolean"
        elif not is_number.any() and all(_looks_dated(str(u)) for u in uniques) \
                and (_parse_dates(uniques) != _NAT).all():
            kind = "datetime"
        else:
            kind = "categorical"
    if kind in ("numeric", "integer"):
        if not is_number.all():
            raise misfit(~is_number, "numbers")
        if kind == "integer":
            fractional = numbers_u != np.round(numbers_u)
            if fractional.any():
                raise misfit(fractional, "whole numbers")
        values = np.full(len(texts), np.nan)
        values[present] = numbers_u[codes]
        decimals = None if kind == "integer" else _text_decimals(uniques, numbers_u)
        return kind, values, decimals
    if kind == "datetime":
        stamps_u = _parse_dates(uniques)
        if (stamps_u == _NAT).any():
            raise misfit(stamps_u == _NAT, "dates or times")
        values = np.full(len(texts), _NAT, dtype=np.int64)
        values[present] = stamps_u[codes]
        return kind, values, None
    if kind == "boolean" and len(uniques) > 2:
        shown = ", ".join(_show(u) for u in sorted(map(str, uniques))[:4]) + (", ..." if len(uniques) > 4 else "")
        raise UserError(f"{where}: column {name!r} is given as boolean ({typed_by}) but has {len(uniques)} distinct "
                        f"values ({shown}); a boolean has two: pass --types {name}=categorical")
    return kind, texts, None


def _looks_dated(text: str) -> bool:
    """Guard before parsing text as dates: besides any time of day, a year, three number groups (1/2/20) or a month
    name, so that codes like '3-4' stay categories and a bare time ('10:30:00') is not dated to the day it is read."""
    day = re.sub(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?", " ", text)
    if not any(c.isdigit() for c in day):
        return False
    return bool(re.search(r"\d{4}", day)) or len(re.findall(r"\d+", day)) >= 3 or bool(_MONTH.search(day))


def _parse_dates(texts: np.ndarray) -> np.ndarray:
    """int64 nanoseconds (UTC) of each text, _NAT where it is not a date/time; ISO 8601 first, then mixed formats."""
    import pandas as pd

    series = pd.Series(texts, dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            stamps = pd.to_datetime(series, utc=True, errors="coerce", format="ISO8601")
            if stamps.isna().any():
                rest = stamps.isna()
                stamps[rest] = pd.to_datetime(series[rest], utc=True, errors="coerce", format="mixed")
        except (ValueError, TypeError, OverflowError):
            return np.full(len(texts), _NAT, dtype=np.int64)
    stamps = stamps.dt.tz_localize(None)
    bad = (stamps.isna() | (stamps < pd.Timestamp.min) | (stamps > pd.Timestamp.max)).to_numpy()
    if bad.any():
        stamps = stamps.where(~bad, pd.Timestamp(0))  # out of range for nanoseconds: not a date we can hold
    return np.where(bad, _NAT, stamps.astype("datetime64[ns]").to_numpy().view(np.int64))


def _text_decimals(texts: np.ndarray, numbers: np.ndarray) -> int | None:
    """The most decimals written ('1.50' has 2, '1e-3' has 3); None beyond 6: such a column is not rounded (rounding
    1.5e-7 to 6 decimals would make it 0)."""
    most = 0
    for text, value in zip(texts.tolist(), numbers.tolist()):
        found = _NUMBER_TEXT.fullmatch(str(text))
        if found:
            most = max(most, len(found.group(1) or "") - int(found.group(2) or 0))
        else:
            most = max(most, _MAX_DECIMALS + 1 if (d := _value_decimals(np.asarray([value]))) is None else d)
        if most > _MAX_DECIMALS:
            return None
    return most


def _value_decimals(values: np.ndarray) -> int | None:
    """The fewest decimals (up to 6) that every value is written with, for numbers that came typed; None if more."""
    values = np.unique(values[np.isfinite(values)])
    for d in range(_MAX_DECIMALS + 1):
        if (np.round(values, d) == values).all():
            return d
    return None


def _check_whole(raw: _Raw, values: np.ndarray, missing: np.ndarray, rows: np.ndarray, word: str, where: str,
                 typed_by: str) -> None:
    with np.errstate(invalid="ignore"):
        fractional = ~missing & np.isfinite(values) & (values != np.round(values))
    if fractional.any():
        bad = np.flatnonzero(fractional)[:3]
        shown = ", ".join(f"{_show(_text_of(raw, i))} on {word} {rows[i]}" for i in bad)
        raise UserError(f"{where}: column {raw.name!r} is given as integer ({typed_by}) but {shown} "
                        f"{'is' if len(bad) == 1 else 'are'} not whole numbers; fix those cells, or pass "
                        f"--types {raw.name}=numeric")


def _check_finite(name: str, values: np.ndarray, missing: np.ndarray, raw: _Raw, rows: np.ndarray, word: str,
                  where: str) -> None:
    infinite = ~missing & np.isinf(values)
    if infinite.any():
        i = int(np.flatnonzero(infinite)[0])
        raise UserError(f"{where}: column {name!r} has an infinite value ({_show(_text_of(raw, i))} on {word} "
                        f"{rows[i]}); replace it with a number, or mark it missing with --na-values")


def _seconds(ns: int | np.integer) -> float:
    """Nanoseconds since 1970 as float64 seconds, rounded once (whole seconds and the fraction are both exact)."""
    ns = int(ns)
    return float(ns // _NS) + (ns % _NS) / _NS


def _number_series(values: np.ndarray, missing: np.ndarray, kind: str):
    import pandas as pd

    if kind == "integer":
        whole = np.where(missing, 0, values).astype(np.int64)
        return pd.Series(pd.arrays.IntegerArray(whole, np.asarray(missing, bool).copy()), dtype="Int64")
    return pd.Series(np.where(missing, np.nan, values).astype(np.float64), dtype=np.float64)


def _datetime_series(ns: np.ndarray):
    import pandas as pd

    return pd.Series(np.asarray(ns, np.int64).view("M8[ns]"), dtype="datetime64[ns]")


def _category_series(texts: np.ndarray, missing: np.ndarray):
    import pandas as pd

    out = np.empty(len(texts), dtype=object)
    out[:] = [pd.NA if m else str(t) for t, m in zip(texts.tolist(), missing.tolist())]
    return pd.Series(out, dtype=object)


def _frame(series: dict[str, Any]):
    import pandas as pd

    return pd.DataFrame(series)


def _show(value: Any, limit: int = 40) -> str:
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


# -- codes -------------------------------------------------------------------------------------------------

def to_codes(frame, schema: list[dict[str, Any]]) -> np.ndarray:
    """float64 (N, K): numeric/integer columns their value, boolean/categorical the index into "categories",
    datetime the seconds since 1970-01-01 (UTC, as float64); NaN for a missing cell. A category not in the
    schema is a UserError naming the column, the value and the row."""
    import pandas as pd
    from pandas.api import types as pdt

    absent = [c["name"] for c in schema if c["name"] not in frame.columns]
    if absent:
        raise UserError(f"the table has no column {', '.join(map(repr, absent))} of the schema; its columns are: "
                        f"{', '.join(map(str, frame.columns))}")
    codes = np.full((len(frame), len(schema)), np.nan)
    for k, column in enumerate(schema):
        name, kind = column["name"], column["type"]
        series = frame[name]
        if kind in ("numeric", "integer"):
            if pdt.is_numeric_dtype(series.dtype) and not pdt.is_bool_dtype(series.dtype):
                codes[:, k] = series.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                texts = _texts(series)
                values = pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan)
                bad = np.flatnonzero(np.isnan(values) & (texts != None))  # noqa: E711 (elementwise)
                if len(bad):
                    raise UserError(f"column {name!r} is {kind} but row {bad[0] + 1} has {_show(texts[bad[0]])}, "
                                    "not a number; fix that cell or leave it empty")
                codes[:, k] = values
        elif kind == "datetime":
            if pdt.is_datetime64_any_dtype(series.dtype):
                ns = _datetime_ns(series, name, "the table")
            else:
                texts = _texts(series)
                ns = np.full(len(texts), _NAT, dtype=np.int64)
                present = np.flatnonzero(texts != None)  # noqa: E711 (elementwise)
                if len(present):
                    ns[present] = _parse_dates(texts[present])
                    bad = present[ns[present] == _NAT]
                    if len(bad):
                        raise UserError(f"column {name!r} is datetime but row {bad[0] + 1} has "
                                        f"{_show(texts[bad[0]])}, not a date or time; fix that cell or leave it empty")
            present = ns != _NAT
            codes[present, k] = (ns[present] // _NS).astype(np.float64) + (ns[present] % _NS) / _NS
        else:
            texts = _texts(series)
            categories = [str(c) for c in column.get("categories") or []]
            index = pd.Index(categories).get_indexer(texts).astype(np.int64)  # -1: missing or not a category
            unknown = np.flatnonzero((index < 0) & (texts != None))  # noqa: E711 (elementwise)
            if len(unknown):
                i = int(unknown[0])
                shown = ", ".join(map(repr, categories[:8])) + (", ..." if len(categories) > 8 else "")
                raise UserError(f"column {name!r} has {_show(texts[i])} on row {i + 1}, which is not one of its "
                                f"categories ({shown}); fix that cell or leave it empty")
            codes[:, k] = np.where(index < 0, np.nan, index)
    return codes


def from_codes(codes: np.ndarray, schema: list[dict[str, Any]]):
    """The inverse of `to_codes`, which also makes model outputs valid: integers rounded, every number clipped to
    [min, max], category indices rounded and clipped, numbers rounded to the column's decimals and datetimes to its
    unit. NaN -> missing (pd.NA / NaT / NaN). Types: Int64, float64, object (category text), datetime64[ns] (in the
    column's source time zone when it had one)."""
    import pandas as pd

    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] != len(schema):
        raise ValueError(f"codes of shape {codes.shape} do not match a schema of {len(schema)} columns")
    series = {}
    for k, column in enumerate(schema):
        kind, values = column["type"], codes[:, k]
        missing = np.isnan(values)
        if kind == "integer":
            values = np.rint(values)
        elif kind == "numeric" and column.get("decimals") is not None:
            values = np.round(values, int(column["decimals"]))
        if kind in ("numeric", "integer", "datetime"):  # after rounding, which could step past a bound
            low, high = column.get("min"), column.get("max")
            values = np.clip(values, -np.inf if low is None else low, np.inf if high is None else high)
        if kind in ("integer", "numeric"):
            series[column["name"]] = _number_series(values, missing, kind)
        elif kind == "datetime":
            ns = np.full(len(values), _NAT, dtype=np.int64)
            ok = ~missing & np.isfinite(values)
            whole = np.floor(values[ok])
            ns[ok] = whole.astype(np.int64) * _NS + np.rint((values[ok] - whole) * _NS).astype(np.int64)
            step = dict(_UNITS).get(column.get("unit") or "ns", 1)
            if step > 1:
                ns[ok] = (ns[ok] + step // 2) // step * step
            stamps = _datetime_series(ns)
            if column.get("timezone"):
                stamps = stamps.dt.tz_localize("UTC").dt.tz_convert(column["timezone"])
            series[column["name"]] = stamps
        else:
            categories = np.asarray([str(c) for c in column.get("categories") or []], dtype=object)
            if not len(categories):
                raise ValueError(f"schema column {column['name']!r} ({kind}) has no categories")
            index = np.clip(np.rint(np.where(missing, 0, values)), 0, len(categories) - 1).astype(np.int64)
            series[column["name"]] = _category_series(categories[index], missing)
    if not schema:
        return pd.DataFrame(index=pd.RangeIndex(len(codes)))
    return _frame(series)


# -- output -------------------------------------------------------------------------------------

def write_table(frame, path: str | Path, schema: list[dict[str, Any]] = ()) -> None:
    """Atomically write a frame as .csv (no index) or .parquet by the path's suffix, so a reader never sees half.
    Parquet keeps types that text cannot: a boolean column of `schema` read from True/False is written as booleans."""
    from difftrain.atomic import write_bytes

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        data = frame.to_csv(index=False).encode("utf-8")
    elif suffix in _PARQUET_SUFFIXES:
        frame = frame.copy()
        for column in schema:
            if column["type"] == "boolean" and sorted(map(str, column.get("categories") or [])) == ["False", "True"]:
                frame[column["name"]] = frame[column["name"]].map({"True": True, "False": False}).astype("boolean")
        buffer = io.BytesIO()
        try:
            frame.to_parquet(buffer, index=False)
        except ImportError:
            raise UserError(f"writing {path} needs pyarrow, which is not installed: pip install pyarrow "
                            "(or write a .csv)") from None
        data = buffer.getvalue()
    else:
        raise UserError(f"{path}: cannot write a table as {path.suffix or '(no suffix)'!r}; use .csv or .parquet")
    write_bytes(path, data)
