"""Multivariate time series: built-ins (TimeGAN sines, statsmodels co2/sunspots/macrodata) and CSV/Parquet/.npy files.

Both give a `SeriesTable` of float64 (T, C) arrays with NaN for gaps. `split_windows` cuts them into fixed-length
windows with a held-out part that no window crosses: a random split of overlapping windows puts neighbouring steps in
both train and test, which is one reason published forecasting and generation numbers disagree.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from difftrain.data.point_sources import check_columns, is_number as _is_number
from difftrain.data.point_sources import check_header as _check_header
from difftrain.errors import UserError


@dataclass
class SeriesTable:
    """Series of C channels each, their names, first timestamps, where they came from and how many cells are gaps."""

    series: list[np.ndarray]  # one float64 (T_i, C) array per series, NaN where a value is missing
    columns: list[str]  # channel names, len C
    ids: list[str]  # one name per series ("" when one series per file)
    start_times: list[str | None]  # ISO text (or the number, for a numeric time column) of each first timestamp
    source: dict[str, Any]  # {"builtin", "seed", ...} or {"file", "format", "time_column", "id_column"}
    missing: dict[str, int]  # NaN/empty cells per column, as left in `series`


BUILTIN_SERIES: dict[str, str] = {
    "sines": "TimeGAN sine data (Yoon et al. 2019): independent series of --window steps, 5 channels s0..s4, each "
             "(sin(f*t + p) + 1) / 2 with f, p ~ U(0, 0.1) per series and channel; one series per window",
    "co2": "weekly atmospheric CO2 at Mauna Loa 1958-2001, ppmv (statsmodels co2; Keeling & Whorf, Scripps); "
           "its missing weeks are filled by linear interpolation",
    "sunspots": "yearly mean sunspot number 1700-2008, channel SUNACTIVITY (statsmodels sunspots; SIDC)",
    "macrodata": "US quarterly macroeconomic data 1959Q1-2009Q3, 12 channels realgdp..realint "
                 "(statsmodels macrodata; FRED and BLS)",
}

_SINE_CHANNELS = 5
_MACRO_COLUMNS = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
                  "infl", "realint"]
_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_MISSING_TOKENS = ["", "nan", "na", "n/a", "null", "none"]  # lower-case cell text read as a gap
_F32_MAX = float(np.finfo(np.float32).max)
_EPS = 1e-9  # float slack in floor/ceil of fractions of a length
_EMPTY_CSV = "{path} is empty: a series CSV needs a header row of column names and one row per time step"


# -- built-ins ---------------------------------------------------------------------------------------------

def generate_series(name: str, *, seed: int = 0, n: int | None = None, window: int = 24) -> SeriesTable:
    """The built-in series `name`; 'sines' is a pure function of (seed, n, window), the others are fixed recordings."""
    if name not in BUILTIN_SERIES:
        raise UserError(f"unknown built-in series {name!r}; choose one of: {', '.join(BUILTIN_SERIES)}, "
                        "or give a CSV, Parquet or .npy file")
    if name == "sines":
        n = 10_000 if n is None else n
        _check_int(n, 1, "the number of 'sines' series (n)")
        _check_int(window, 2, "--window")
        return _sines(int(n), int(window), seed)
    if n is not None:
        raise UserError(f"built-in series {name!r} is one fixed recording; the number of series (n) applies only to "
                        "'sines': leave it out")
    return _statsmodels(name, seed)


def _sines(n: int, window: int, seed: int) -> SeriesTable:
    rng = np.random.default_rng(seed)
    draws = rng.uniform(0.0, 0.1, size=(n, _SINE_CHANNELS, 2))  # TimeGAN's order: per series and channel, f then p
    freq, phase = draws[..., 0], draws[..., 1]
    t = np.arange(window, dtype=np.float64)
    x = (np.sin(freq[:, None, :] * t[None, :, None] + phase[:, None, :]) + 1.0) * 0.5  # (n, window, C)
    columns = [f"s{k}" for k in range(_SINE_CHANNELS)]
    return SeriesTable(series=list(x), columns=columns, ids=[str(i) for i in range(n)], start_times=[None] * n,
                       source={"builtin": "sines", "seed": seed, "n": n, "window": window},
                       missing={c: 0 for c in columns})


def _statsmodels(name: str, seed: int) -> SeriesTable:
    import pandas as pd
    from statsmodels import datasets

    extra: dict[str, Any] = {}
    if name == "co2":
        frame = datasets.co2.load_pandas().data
        gaps = int(frame["co2"].isna().sum())
        values = frame[["co2"]].interpolate(method="linear", limit_direction="both")
        start, extra = frame.index[0].isoformat(), {"frequency": "weekly", "interpolated": gaps}
    elif name == "sunspots":
        frame = datasets.sunspots.load_pandas().data
        values = frame[["SUNACTIVITY"]]
        start, extra = pd.Timestamp(int(frame["YEAR"].iloc[0]), 1, 1).isoformat(), {"frequency": "yearly"}
    else:  # macrodata
        frame = datasets.macrodata.load_pandas().data
        values = frame[_MACRO_COLUMNS]
        year, quarter = int(frame["year"].iloc[0]), int(frame["quarter"].iloc[0])
        start, extra = pd.Timestamp(year, 3 * quarter - 2, 1).isoformat(), {"frequency": "quarterly"}
    array = values.to_numpy(dtype=np.float64, copy=True)
    columns = [str(c) for c in values.columns]
    return SeriesTable(series=[array], columns=columns, ids=[""], start_times=[start],
                       source={"builtin": name, "seed": seed, **extra},
                       missing={c: int(np.isnan(array[:, k]).sum()) for k, c in enumerate(columns)})


# -- files -------------------------------------------------------------------------------------------------

def read_series_table(path: str | Path, *, columns: list[str] | None = None, time_column: str | None = None,
                      id_column: str | None = None, allow_missing: bool = False) -> SeriesTable:
    """Series from a CSV (',', ';' or tab), Parquet or .npy file; every problem is a UserError naming the fix.

    CSV/Parquet: value `columns` (default: all but the time and id columns) must be numeric. Rows are grouped into
    series by `id_column` (in order of first appearance) and kept in file order, which must be strictly increasing
    in `time_column` when one is given. Empty/NaN cells are an error unless `allow_missing`, then they stay NaN.
    Infinite values are always an error. Lines holding only empty cells are skipped. A .npy file holds a float
    array (T, C) (one series) or (N, T, C) (N series); its channels are named c0..c{C-1}.
    """
    path = Path(path)
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"{path} {where}: give a CSV, Parquet or .npy file of time series, or a built-in series "
                        f"({', '.join(BUILTIN_SERIES)})")
    if isinstance(columns, str):
        columns = [columns]
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, columns, time_column, id_column, allow_missing)
    if suffix in _PARQUET_SUFFIXES:
        names, cells, rows, word, fmt = *_read_parquet(path), "row", "parquet"
    elif suffix in _CSV_SUFFIXES:
        names, cells, rows, word, fmt = *_read_csv(path), "line", "csv"
    else:
        raise UserError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; save the series as "
                        ".csv, .parquet or .npy")
    return _table(path, fmt, names, cells, rows, word, columns, time_column, id_column, allow_missing)


def _read_csv(path: Path) -> tuple[list[str], dict[str, Any], np.ndarray]:
    """Header names, each column's stripped cell text, and each data row's line number (header line = 1 + blanks)."""
    import pandas as pd

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            skip, first = 0, ""
            for first in f:
                if first.strip():
                    break
                skip += 1
            if not first.strip():
                raise UserError(_EMPTY_CSV.format(path=path))
        # Comma unless the header clearly uses another separator (';' from some spreadsheets, or tabs).
        delimiter = max([",", ";", "\t"], key=lambda d: (first.count(d), d == ","))
        frame = pd.read_csv(path, sep=delimiter, header=None, dtype=str, na_filter=False, skip_blank_lines=False,
                            skiprows=skip, encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as a UTF-8 CSV") from None
    except pd.errors.ParserError as e:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if found:
            expected, line, saw = found.groups()
            raise UserError(f"{path}: line {line} has {saw} cells but the header has {expected}: fix that line "
                            f"(a stray {delimiter!r} or a missing quote?)") from None
        raise UserError(f"{path} is not a readable CSV ({str(e).strip()}): check its quoting") from None
    except pd.errors.EmptyDataError:
        raise UserError(_EMPTY_CSV.format(path=path)) from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    text = frame.to_numpy(dtype=object)  # cells keep their spaces: stripped only where read as text
    names = [str(c).strip() for c in text[0]]
    _check_header(path, names)
    data = text[1:]
    rows = np.arange(len(data), dtype=np.int64) + skip + 2
    keep = (data != "").any(axis=1) if len(data) else np.zeros(0, bool)  # lines of only empty cells carry nothing
    data, rows = data[keep], rows[keep]
    return names, {name: data[:, i] for i, name in enumerate(names)}, rows


def _read_parquet(path: Path) -> tuple[list[str], dict[str, Any], np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow, which is not installed: pip install pyarrow "
                        "(or save the table as CSV)") from None
    except Exception as e:  # pyarrow raises its own types (ArrowInvalid, ...) for a damaged file
        raise UserError(f"{path} is not a readable Parquet file ({e})") from None
    names = [str(c) for c in frame.columns]
    _check_header(path, names)
    cells: dict[str, Any] = {}
    for name, (_, column) in zip(names, frame.items()):
        if pd.api.types.is_datetime64_any_dtype(column.dtype):
            cells[name] = column.reset_index(drop=True)
        elif pd.api.types.is_numeric_dtype(column.dtype):
            cells[name] = column.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        else:
            cells[name] = np.array([_cell_text(v) for v in column.tolist()], dtype=object)
    return names, cells, np.arange(1, len(frame) + 1, dtype=np.int64)


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a numeric id 3.0 is series "3", as in a CSV
    return str(value).strip()


def _show(value: Any, limit: int = 40) -> str:
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _table(path: Path, fmt: str, names: list[str], cells: dict[str, Any], rows: np.ndarray, word: str,
           columns: list[str] | None, time_column: str | None, id_column: str | None,
           allow_missing: bool) -> SeriesTable:
    """Value, time and id columns checked and grouped into series."""
    available = ", ".join(names)
    for flag, name in (("--time-column", time_column), ("--id-column", id_column)):
        if name is not None and name not in names:
            raise UserError(f"{path} has no column {name!r} for {flag}; its columns are: {available}")
    if time_column is not None and time_column == id_column:
        raise UserError(f"column {time_column!r} of {path} cannot be both --time-column and --id-column")
    special = {c for c in (time_column, id_column) if c is not None}
    if columns is None:
        values_named = [n for n in names if n not in special]
    else:
        values_named = list(columns)
        check_columns(values_named, names, path)
        clash = [c for c in values_named if c in special]
        if clash:
            raise UserError(f"column {clash[0]!r} of {path} is the time or id column; leave it out of --columns")
    if not values_named:
        raise UserError(f"{path}: no value columns are left (columns: {available}); "
                        "a series needs at least one numeric column")
    if len(rows) == 0:
        raise UserError(f"{path} has a header but no data rows: add one row per time step")

    parsed = {name: _numbers(cells[name]) for name in values_named}
    not_numeric = []
    for name, (_, bad, _) in parsed.items():
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            count = int(bad.sum())
            whole = ("is not numeric" if count + parsed[name][2].sum() == len(bad)
                     else f"has {count} non-numeric cell{'s' if count > 1 else ''}")
            not_numeric.append(f"column {name!r} {whole} ({word} {rows[i]}: {_show(_text_at(cells[name], i))})")
    if not_numeric:
        numeric = [n for n in values_named if not parsed[n][1].any()]
        hint = f" (e.g. --columns {','.join(numeric)})" if numeric else ""
        dated = next((n for n in values_named
                      if time_column is None and parsed[n][1].any() and _looks_like_times(cells[n])), None)
        also = f", or --time-column {dated} if it holds the times" if dated else ""
        raise UserError(f"{path}: {'; '.join(not_numeric)}: pass --columns to pick the numeric ones{hint}{also}, "
                        "or fix those cells")
    for name, (values, _, gap) in parsed.items():
        huge = ~gap & ~(np.abs(values) <= _F32_MAX)
        if huge.any():
            i = int(np.flatnonzero(huge)[0])
            raise UserError(f"{path}: column {name!r} has an infinite or out-of-float32-range value ({word} {rows[i]}: "
                            f"{_show(_text_at(cells[name], i))}); replace it with a number, or empty it and use "
                            "--allow-missing")
        if gap.all():
            raise UserError(f"{path}: column {name!r} has no values, every cell is empty or NaN; "
                            "leave it out with --columns")
    missing = {name: int(parsed[name][2].sum()) for name in values_named}
    if any(missing.values()) and not allow_missing:
        first = min(int(np.flatnonzero(parsed[n][2])[0]) for n in values_named if missing[n])
        counts = ", ".join(f"{n!r}: {k} missing" for n, k in missing.items() if k)
        raise UserError(f"{path} has empty or NaN cells ({counts}; first on {word} {rows[first]}): fill them, or "
                        "prepare with --allow-missing to train imputation with them as gaps")
    matrix = np.stack([parsed[n][0] for n in values_named], axis=1)

    if id_column is not None:
        ids_text = _texts(cells[id_column])
        empty = np.flatnonzero(ids_text == "")
        if len(empty):
            raise UserError(f"{path}: {word} {rows[empty[0]]} has no id in --id-column {id_column!r}; "
                            "give every row the name of its series")
        import pandas as pd

        codes, uniques = pd.factorize(ids_text, sort=False)  # in order of first appearance
        order = np.argsort(codes, kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(codes))[:-1])
        ids = [str(u) for u in uniques]
    else:
        groups, ids = [np.arange(len(rows))], [""]

    start_times: list[str | None] = [None] * len(groups)
    if time_column is not None:
        keys, start_text = _times(path, time_column, cells[time_column], rows, word)
        for g, (sid, index) in enumerate(zip(ids, groups)):
            _check_order(path, time_column, cells[time_column], keys, index, rows, word, sid, id_column)
            start_times[g] = start_text(int(index[0]))
    return SeriesTable(series=[np.ascontiguousarray(matrix[index]) for index in groups], columns=values_named, ids=ids,
                       start_times=start_times,
                       source={"file": str(path), "format": fmt, "time_column": time_column, "id_column": id_column},
                       missing=missing)


def _texts(cells: Any) -> np.ndarray:
    """A column's cells as stripped text ("" for empty)."""
    import pandas as pd

    if isinstance(cells, np.ndarray) and cells.dtype == object:
        return pd.Series(cells, dtype=object).str.strip().to_numpy(dtype=object)
    values = cells.tolist()
    return np.array([_cell_text(v) for v in values], dtype=object)


def _text_at(cells: Any, i: int) -> str:
    value = cells.iloc[i] if hasattr(cells, "iloc") else cells[i]
    return _cell_text(value.item() if isinstance(value, np.generic) else value)


def _numbers(cells: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A column's float64 values, which cells are not numbers, and which are gaps (empty or NaN)."""
    import pandas as pd

    if isinstance(cells, np.ndarray) and cells.dtype.kind == "f":
        gap = np.isnan(cells)
        return cells, np.zeros(len(cells), bool), gap
    if isinstance(cells, pd.Series):  # a Parquet datetime column is not a value column
        return np.full(len(cells), np.nan), cells.notna().to_numpy(), cells.isna().to_numpy()
    try:  # fast path: every cell a number, "nan" or "inf" (numpy reads them as Python's float() does)
        values = cells.astype(np.float64)
        return values, np.zeros(len(values), bool), np.isnan(values)
    except (ValueError, TypeError):
        pass
    text = pd.Series(cells, dtype=object).str.strip()
    values = np.array(pd.to_numeric(text, errors="coerce"), dtype=np.float64)  # a writable copy
    gap = text.str.lower().isin(_MISSING_TOKENS).to_numpy()
    bad = np.isnan(values) & ~gap
    values[gap] = np.nan
    return values, bad, gap


def _looks_like_times(cells: Any) -> bool:
    """Whether the first few cells of a non-numeric column read as dates (a time column not named as such)."""
    import pandas as pd

    if isinstance(cells, pd.Series):
        return True
    sample = [c for c in cells[:20] if c != ""][:5]
    return bool(sample) and not _to_datetime(pd.Series(sample, dtype=object)).isna().any()


def _times(path: Path, name: str, cells: Any, rows: np.ndarray, word: str):
    """Comparable keys of a time column (float or datetime64) and a function giving row i's ISO start text."""
    import pandas as pd

    if isinstance(cells, pd.Series):  # Parquet timestamps
        stamps = cells
    else:
        text = pd.Series(_texts(cells), dtype=object) if cells.dtype.kind != "f" else None
        numbers = cells if text is None else np.asarray(pd.to_numeric(text, errors="coerce"), dtype=np.float64)
        empty = np.flatnonzero(np.isnan(cells)) if text is None else np.flatnonzero((text == "").to_numpy())
        if len(empty):
            raise UserError(f"{path}: {word} {rows[empty[0]]} has no time in --time-column {name!r}; "
                            "fill it or remove that row")
        if not np.isnan(numbers).any():
            infinite = np.flatnonzero(~np.isfinite(numbers))
            if len(infinite):
                raise UserError(f"{path}: --time-column {name!r} is infinite on {word} {rows[infinite[0]]}; "
                                "give a finite time")
            return numbers, lambda i: _number_text(numbers[i])
        stamps = _to_datetime(text)
        bad = np.flatnonzero(stamps.isna().to_numpy())
        if len(bad):
            raise UserError(f"{path}: --time-column {name!r} has a value pandas cannot read as a time "
                            f"({word} {rows[bad[0]]}: {_show(text.iloc[bad[0]])}); write times as ISO 8601 "
                            "(2024-01-31 or 2024-01-31T12:00), or as plain numbers")
    if stamps.isna().any():
        i = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise UserError(f"{path}: {word} {rows[i]} has no time in --time-column {name!r}; fill it or remove that row")
    keys = (stamps.dt.tz_convert(None) if stamps.dt.tz is not None else stamps).to_numpy()
    return keys, lambda i: stamps.iloc[i].isoformat()


def _to_datetime(text: Any):
    """pandas' parse of a text column, NaT where it fails; mixed formats and mixed UTC offsets are accepted."""
    import pandas as pd

    def parse(**options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "could not infer format": we retry with format="mixed" ourselves
            try:
                return pd.to_datetime(text, errors="coerce", **options)
            except (ValueError, TypeError, OverflowError):  # mixed time zones
                return pd.to_datetime(text, errors="coerce", utc=True, **options)

    stamps = parse()
    if stamps.isna().any():
        stamps = parse(format="mixed")
    return stamps


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2 ** 53 else repr(float(value))


def _check_order(path: Path, name: str, cells: Any, keys: np.ndarray, index: np.ndarray, rows: np.ndarray, word: str,
                 sid: str, id_column: str | None) -> None:
    """Times within one series (rows `index` of the file) must strictly increase: a step back or a repeat means
    unsorted rows, or several series in one file without --id-column."""
    if len(index) < 2:
        return
    step = np.diff(keys[index])
    zero = np.zeros((), step.dtype)
    bad = np.flatnonzero(step <= zero)
    if not len(bad):
        return
    a, b = int(index[bad[0]]), int(index[bad[0] + 1])
    before, after = _show(_text_at(cells, a)), _show(_text_at(cells, b))
    where = f" in series {sid!r}" if sid else ""
    if step[bad[0]] == zero:
        hint = "remove or merge the repeated rows"
        hint += "" if id_column else ", or pass --id-column if the file holds several series"
        raise UserError(f"{path}: time {before} in --time-column {name!r} appears twice{where} "
                        f"({word}s {rows[a]} and {rows[b]}); {hint}")
    raise UserError(f"{path}: --time-column {name!r} goes back in time{where} at {word} {rows[b]} "
                    f"({after} after {before} on {word} {rows[a]}); sort the rows by time")


def _read_npy(path: Path, columns: list[str] | None, time_column: str | None, id_column: str | None,
              allow_missing: bool) -> SeriesTable:
    if time_column is not None or id_column is not None:
        raise UserError(f"{path} is a .npy array without named columns: leave out --time-column and --id-column "
                        "(its rows are the time steps, in order)")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if not magic:
            raise UserError(f"{path} is empty: save a float array (T, C) or (N, T, C) with numpy.save")
        if magic != b"\x93NUMPY":
            raise UserError(f"{path} is not a NumPy .npy file: save a float array (T, C) or (N, T, C) with numpy.save")
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "Object arrays" in str(e):
            raise UserError(f"{path} holds an object array (ragged series?); save a float array (T, C) or (N, T, C), "
                            "or series of unequal length as a CSV with --id-column") from None
        raise UserError(f"{path} is not a readable .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path} ({getattr(e, 'strerror', None) or e})") from None
    if array.dtype.kind not in "biuf":
        raise UserError(f"{path} holds {array.dtype} values, not numbers: save a float array (T, C) or (N, T, C)")
    if array.ndim not in (2, 3):
        raise UserError(f"{path} has shape {array.shape}; a .npy series file needs (T, C) for one series or "
                        "(N, T, C) for N series (use (T, 1) for a single channel)")
    if 0 in array.shape:
        raise UserError(f"{path} has shape {array.shape}, with no values: save at least one step of one channel")
    stack = array.astype(np.float64)[None] if array.ndim == 2 else array.astype(np.float64)
    names = [f"c{k}" for k in range(stack.shape[2])]
    if columns is None:
        chosen = names
    else:
        chosen = list(columns)
        check_columns(chosen, names, path, "channel", f"a .npy file's channels are c0..c{len(names) - 1}")
        if not chosen:
            raise UserError(f"{path}: --columns picks no channel; name at least one of c0..c{len(names) - 1}")
        stack = stack[:, :, [names.index(c) for c in chosen]]
    with np.errstate(invalid="ignore"):
        huge = ~np.isnan(stack) & ~(np.abs(stack) <= _F32_MAX)
    if huge.any():
        s, t, c = (int(v) for v in np.argwhere(huge)[0])
        place = (f"series {s}, " if array.ndim == 3 else "") + f"step {t}, channel {chosen[c]!r}"
        raise UserError(f"{path} has an infinite or out-of-float32-range value ({place}: {stack[s, t, c]!r}); "
                        "replace it with a number, or with NaN and use --allow-missing")
    gap = np.isnan(stack)
    missing = {c: int(gap[:, :, k].sum()) for k, c in enumerate(chosen)}
    if gap.all(axis=(0, 1)).any():
        empty = chosen[int(np.flatnonzero(gap.all(axis=(0, 1)))[0])]
        raise UserError(f"{path}: channel {empty!r} is NaN everywhere; leave it out with --columns")
    if gap.any() and not allow_missing:
        counts = ", ".join(f"{c!r}: {k} missing" for c, k in missing.items() if k)
        raise UserError(f"{path} has NaN values ({counts}): fill them, or prepare with --allow-missing to train "
                        "imputation with them as gaps")
    ids = [""] if array.ndim == 2 else [str(i) for i in range(len(stack))]
    return SeriesTable(series=[np.ascontiguousarray(x) for x in stack], columns=chosen, ids=ids,
                       start_times=[None] * len(ids),
                       source={"file": str(path), "format": "npy", "time_column": None, "id_column": None},
                       missing=missing)


# -- windows -----------------------------------------------------------------------------------------------

def split_windows(table: SeriesTable, window: int, stride: int = 1, test_fraction: float = 0.1
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train and test windows (N, window, C) float32, NaN kept, split so that no window crosses the split.

    "time": every series is long enough, so each gives its first floor((1 - f) * T) steps to train and its tail to
    test. "series": otherwise, with several series, the last round(f * N) series (at least one) are held out whole.
    "none": test_fraction 0. A single series too short for a tail of one window is an error.
    """
    _check_int(window, 2, "--window")
    _check_int(stride, 1, "--stride")
    window, stride = int(window), int(stride)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating, np.integer)) \
            or not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be a number in [0, 1), got {test_fraction!r}")
    test_fraction = float(test_fraction)
    where = _where(table)
    channels = len(table.columns)
    for sid, x in zip(table.ids, table.series):
        if len(x) < window:
            who = f"series {sid!r}" if sid else "the series"
            raise UserError(f"{where}: {who} has {len(x)} steps, fewer than --window {window}; use a --window of at "
                            f"most {len(x)}, or leave that series out")

    def windows(parts: list[np.ndarray]) -> np.ndarray:
        cut = [_windows(x, window, stride) for x in parts if len(x) >= window]
        if not cut:
            return np.zeros((0, window, channels), np.float32)
        return np.ascontiguousarray(np.concatenate(cut).astype(np.float32))

    lengths = [len(x) for x in table.series]
    info: dict[str, Any] = {"window": window, "stride": stride, "test_fraction": test_fraction}
    if test_fraction == 0:
        train, test, split, boundary = windows(table.series), windows([]), "none", []
    elif all(_fits(n, window, test_fraction) for n in lengths):
        heads = [_head(n, test_fraction) for n in lengths]
        train = windows([x[:h] for x, h in zip(table.series, heads)])
        test = windows([x[h:] for x, h in zip(table.series, heads)])
        split, boundary = "time", heads
    elif len(table.series) > 1:
        count = len(table.series)
        held = min(count - 1, max(1, math.floor(test_fraction * count + 0.5)))
        train, test = windows(table.series[:count - held]), windows(table.series[count - held:])
        split, boundary = "series", list(table.ids[count - held:])
    else:
        n = lengths[0]
        need = _needed(window, test_fraction)
        best = next((w for w in range(window - 1, 1, -1) if _fits(n, w, test_fraction)), None)
        fix = (f"use a shorter --window (at most {best} fits)" if best
               else "use a shorter --window or a larger --test-fraction")
        raise UserError(f"{where}: a series of {n} steps is too short for --window {window} with a held-out tail: "
                        f"--test-fraction {test_fraction:g} needs at least {need} steps; {fix}")
    info.update(split=split, train_windows=int(len(train)), test_windows=int(len(test)), boundary=boundary)
    return train, test, info


def _windows(x: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Windows of `window` steps starting every `stride` steps: (n, window, C) views of x (T, C)."""
    return np.lib.stride_tricks.sliding_window_view(x, window, axis=0)[::stride].transpose(0, 2, 1)


def _head(n: int, test_fraction: float) -> int:
    return math.floor((1.0 - test_fraction) * n + _EPS)


def _fits(n: int, window: int, test_fraction: float) -> bool:
    """Whether a series of n steps gives at least one train window and one test window in its tail."""
    head = _head(n, test_fraction)
    return head >= window and n - head >= window


def _needed(window: int, test_fraction: float) -> int:
    """The fewest steps a series needs for the time split: ceil(window / test_fraction) when test_fraction <= 0.5."""
    n = max(2 * window, math.ceil(window / test_fraction - _EPS))
    while not _fits(n, window, test_fraction):
        n += 1
    return n


def _where(table: SeriesTable) -> str:
    source = table.source or {}
    if "file" in source:
        return str(source["file"])
    if "builtin" in source:
        return f"built-in series {source['builtin']!r}"
    return "the series table"


def _check_int(value: Any, minimum: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be an integer of at least {minimum}, got {value!r}")
