"""Time series sources: built-ins, CSV/Parquet/.npy reading with one-line errors, and leak-free window splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from difftrain.data.series_sources import (BUILTIN_SERIES, SeriesTable, generate_series, read_series_table,
                                           split_windows)
from difftrain.errors import UserError
from tests.reading import expect_read_error, write


def expect_error(path: Path, *fragments: str, **options) -> str:
    return expect_read_error(read_series_table, path, *fragments, **options)


def table_of(*series: np.ndarray, ids: list[str] | None = None) -> SeriesTable:
    arrays = [np.asarray(s, np.float64).reshape(len(s), -1) for s in series]
    channels = arrays[0].shape[1]
    return SeriesTable(series=arrays, columns=[f"c{k}" for k in range(channels)],
                       ids=ids if ids is not None else ([""] if len(arrays) == 1 else [str(i) for i in range(len(arrays))]),
                       start_times=[None] * len(arrays), source={"file": "mem.csv"}, missing={})


# -- built-ins ---------------------------------------------------------------------------------------------

def test_sines_follow_the_timegan_formula():
    table = generate_series("sines", seed=3, n=7, window=30)
    assert table.columns == ["s0", "s1", "s2", "s3", "s4"]
    assert table.ids == [str(i) for i in range(7)] and table.start_times == [None] * 7
    assert table.source == {"builtin": "sines", "seed": 3, "n": 7, "window": 30}
    assert table.missing == {c: 0 for c in table.columns}
    # TimeGAN's sine_data_generation, draw by draw: per series, per channel, frequency then phase.
    rng = np.random.default_rng(3)
    t = np.arange(30)
    for x in table.series:
        assert x.shape == (30, 5) and x.dtype == np.float64
        for k in range(5):
            freq, phase = rng.uniform(0, 0.1), rng.uniform(0, 0.1)
            np.testing.assert_allclose(x[:, k], (np.sin(freq * t + phase) + 1) * 0.5, rtol=0, atol=1e-12)
    values = np.stack(table.series)
    assert values.min() >= 0 and values.max() <= 1


def test_sines_are_seeded_and_default_to_10000_windows_of_24():
    a, b, c = generate_series("sines", seed=1, n=5), generate_series("sines", seed=1, n=5), generate_series("sines", seed=2, n=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.series, b.series))
    assert not np.array_equal(np.stack(a.series), np.stack(c.series))
    full = generate_series("sines")
    assert len(full.series) == 10_000 and full.series[0].shape == (24, 5)


@pytest.mark.parametrize("options, fragment", [
    ({"n": 0}, "n"), ({"n": 2.5}, "n"), ({"window": 1}, "--window"), ({"window": True}, "--window"),
])
def test_sines_reject_bad_sizes(options, fragment):
    with pytest.raises(UserError, match=fragment):
        generate_series("sines", **options)


def test_unknown_builtin_and_n_for_a_recording_are_errors():
    with pytest.raises(UserError, match="sines, co2, sunspots, macrodata"):
        generate_series("airline")
    with pytest.raises(UserError, match="only to 'sines'"):
        generate_series("co2", n=10)


@pytest.mark.parametrize("name, columns, length, start", [
    ("co2", ["co2"], 2284, "1958-03-29T00:00:00"),
    ("sunspots", ["SUNACTIVITY"], 309, "1700-01-01T00:00:00"),
    ("macrodata", ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
                   "infl", "realint"], 203, "1959-01-01T00:00:00"),
])
def test_statsmodels_builtins_load_offline_without_gaps(name, columns, length, start):
    table = generate_series(name)
    assert name in BUILTIN_SERIES
    assert table.columns == columns and table.ids == [""] and table.start_times == [start]
    (x,) = table.series
    assert x.shape == (length, len(columns)) and x.dtype == np.float64
    assert not np.isnan(x).any() and table.missing == {c: 0 for c in columns}
    assert table.source["builtin"] == name


def test_co2_gaps_are_linearly_interpolated():
    from statsmodels import datasets

    raw = datasets.co2.load_pandas().data["co2"].to_numpy()
    table = generate_series("co2")
    assert table.source["interpolated"] == int(np.isnan(raw).sum()) > 0
    assert "interpolation" in BUILTIN_SERIES["co2"]
    x = table.series[0][:, 0]
    np.testing.assert_array_equal(x[~np.isnan(raw)], raw[~np.isnan(raw)])
    i = int(np.flatnonzero(np.isnan(raw) & ~np.isnan(np.roll(raw, 1)) & ~np.isnan(np.roll(raw, -1)))[0])
    assert x[i] == pytest.approx((raw[i - 1] + raw[i + 1]) / 2)


# -- CSV ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_csv_separators_are_detected(tmp_path, sep):
    path = write(tmp_path / "s.csv", sep.join(["day", "a", "b"]) + "\n" + "\n".join(
        sep.join([f"2024-01-0{d}", str(d), str(10 * d)]) for d in range(1, 6)) + "\n")
    table = read_series_table(path, time_column="day")
    assert table.columns == ["a", "b"] and table.ids == [""]
    np.testing.assert_array_equal(table.series[0], [[d, 10 * d] for d in range(1, 6)])
    assert table.start_times == ["2024-01-01T00:00:00"]
    assert table.source == {"file": str(path), "format": "csv", "time_column": "day", "id_column": None}
    assert table.missing == {"a": 0, "b": 0}


def test_without_a_time_column_rows_keep_file_order(tmp_path):
    path = write(tmp_path / "s.csv", "x,y\n3,1\n1,2\n2,3\n")
    table = read_series_table(path)
    np.testing.assert_array_equal(table.series[0], [[3, 1], [1, 2], [2, 3]])
    assert table.start_times == [None]
    assert read_series_table(path, columns=["y"]).columns == ["y"]


def test_id_column_groups_rows_in_order_of_first_appearance(tmp_path):
    path = write(tmp_path / "s.csv", "t,shop,v\n1,B,10\n1,A,20\n2,B,11\n2,A,21\n3,B,12\n5,C,7\n")
    table = read_series_table(path, time_column="t", id_column="shop")
    assert table.ids == ["B", "A", "C"]
    assert [x[:, 0].tolist() for x in table.series] == [[10, 11, 12], [20, 21], [7]]
    assert table.columns == ["v"] and table.start_times == ["1", "1", "5"]


def test_time_order_is_checked_within_each_series(tmp_path):
    path = write(tmp_path / "s.csv", "t,shop,v\n1,A,1\n1,B,2\n2,A,3\n0,B,4\n")
    expect_error(path, "series 'B'", "line 5", "goes back", time_column="t", id_column="shop")


def test_allow_missing_keeps_nan_and_counts(tmp_path):
    path = write(tmp_path / "s.csv", "High,Low\n1,\n2,NaN\n,5\n4,6\n")
    table = read_series_table(path, allow_missing=True)
    assert table.missing == {"High": 1, "Low": 2}
    x = table.series[0]
    assert np.isnan(x).sum() == 3 and np.isnan(x[0, 1]) and np.isnan(x[1, 1]) and np.isnan(x[2, 0])
    assert x[3].tolist() == [4, 6]
    train, test, _ = split_windows(table, 2, test_fraction=0)
    assert train.dtype == np.float32 and np.isnan(train).sum() == 2 + 2 + 1  # windows keep the gaps


def test_blank_lines_and_a_bom_are_ignored(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes("\ufeff\n\na,b\n1,2\n\n3,4\n".encode("utf-8"))
    table = read_series_table(path)
    assert table.columns == ["a", "b"]
    np.testing.assert_array_equal(table.series[0], [[1, 2], [3, 4]])
    write(path, "\n\na,b\n1,2\n\nx,4\n")
    expect_error(path, "column 'a'", "line 6", "'x'")


# -- errors ------------------------------------------------------------------------------------------------

def test_missing_file_folder_and_suffix(tmp_path):
    expect_error(tmp_path / "nope.csv", "does not exist")
    expect_error(tmp_path, "is a folder")
    expect_error(write(tmp_path / "s.json", "{}"), "'.json'", ".csv, .parquet or .npy")


@pytest.mark.parametrize("text, fragment", [("", "is empty"), ("\n\n", "is empty"), ("a,b\n", "no data rows"),
                                            ("a,b\n\n,\n", "no data rows")])
def test_empty_and_header_only_files(tmp_path, text, fragment):
    expect_error(write(tmp_path / "s.csv", text), fragment)


def test_unknown_columns_list_the_available_ones(tmp_path):
    path = write(tmp_path / "s.csv", "t,High,Low\n1,2,3\n")
    expect_error(path, "'Close'", "--columns", "t, High, Low", columns=["High", "Close"])
    expect_error(path, "'when'", "--time-column", "t, High, Low", time_column="when")
    expect_error(path, "'who'", "--id-column", id_column="who")
    expect_error(path, "'t'", "leave it out of --columns", columns=["t", "High"], time_column="t")


def test_non_numeric_column_names_column_row_and_value(tmp_path):
    path = write(tmp_path / "s.csv", "price,name\n1,x\n2,y\n3,abc\n")
    message = expect_error(path, "column 'name' is not numeric (line 2: 'x')", "--columns price")
    assert "price" not in message.split(":", 1)[1].split("pass")[0]  # only the bad column is blamed
    path = write(tmp_path / "t.csv", "price,qty\n1,2\n2,3\n3,abc\n")
    expect_error(path, "column 'qty' has 1 non-numeric cell (line 4: 'abc')")


def test_a_date_column_not_named_as_time_gets_a_hint(tmp_path):
    path = write(tmp_path / "s.csv", "when,v\n2024-01-01,1\n2024-01-02,2\n")
    expect_error(path, "column 'when' is not numeric", "--time-column when")


def test_missing_values_are_counted_per_column(tmp_path):
    path = write(tmp_path / "s.csv", "High,Low,Close\n1,,1\n,2,1\nnan,3,1\n4,5,1\nNA,5,1\n")
    expect_error(path, "'High': 3 missing, 'Low': 1 missing", "first on line 2", "--allow-missing")


@pytest.mark.parametrize("cell", ["inf", "-Infinity", "1e999"])
def test_infinite_values_are_always_errors(tmp_path, cell):
    path = write(tmp_path / "s.csv", f"a,b\n1,2\n3,{cell}\n")
    expect_error(path, "column 'b'", "line 3", repr(cell))
    expect_error(path, "column 'b'", "line 3", allow_missing=True)


def test_an_all_empty_column_is_an_error_even_with_allow_missing(tmp_path):
    path = write(tmp_path / "s.csv", "a,b\n1,\n3,\n")
    expect_error(path, "column 'b' has no values", allow_missing=True)


def test_unreadable_time_names_the_row(tmp_path):
    path = write(tmp_path / "s.csv", "day,v\n2024-01-01,1\n2024-01-02,2\nsoon,3\n")
    expect_error(path, "--time-column 'day'", "line 4", "'soon'", time_column="day")
    path = write(tmp_path / "e.csv", "day,v\n2024-01-01,1\n,2\n")
    expect_error(path, "line 3 has no time", time_column="day")


def test_time_going_back_names_the_row(tmp_path):
    path = write(tmp_path / "s.csv", "day,v\n2024-01-01,1\n2024-01-03,2\n2024-01-02,3\n2024-01-04,4\n")
    expect_error(path, "goes back in time at line 4", "'2024-01-02' after '2024-01-03'", time_column="day")


def test_duplicate_times_name_the_value_and_rows(tmp_path):
    path = write(tmp_path / "s.csv", "day,v\n2024-01-01,1\n2024-01-02,2\n2024-01-02,3\n")
    expect_error(path, "'2024-01-02'", "appears twice", "lines 3 and 4", "--id-column", time_column="day")


def test_numeric_times_are_used_as_they_are(tmp_path):
    path = write(tmp_path / "s.csv", "year,v\n1990,1\n1991.5,2\n1993,3\n")
    table = read_series_table(path, time_column="year")
    assert table.start_times == ["1990"] and table.series[0][:, 0].tolist() == [1, 2, 3]
    write(path, "year,v\n1990,1\n1989,2\n")
    expect_error(path, "line 3", "'1989' after '1990'", time_column="year")


def test_ragged_csv_line_is_named(tmp_path):
    path = write(tmp_path / "s.csv", "a,b\n1,2\n3,4\n5,6,7\n8,9\n")
    expect_error(path, "line 4 has 3 cells", "header has 2")


def test_bad_headers(tmp_path):
    expect_error(write(tmp_path / "a.csv", "1,2\n3,4\n"), "looks like data")
    expect_error(write(tmp_path / "b.csv", "a,a\n3,4\n"), "'a' twice")
    expect_error(write(tmp_path / "c.csv", "a,\n3,4\n"), "column 2 has no name")


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(b"a,b\n1,\xff\n")
    expect_error(path, "UTF-8")


# -- Parquet and .npy --------------------------------------------------------------------------------------

def test_parquet_with_timestamps_ids_and_gaps(tmp_path):
    path = tmp_path / "s.parquet"
    frame = pd.DataFrame({
        "ts": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-02", "2024-01-02", "2024-01-03"]),
        "sensor": [1, 2, 1, 2, 1],
        "temp": [1.0, 2.0, np.nan, 4.0, 5.0],
        "label": ["a", "b", "c", "d", "e"],
    })
    frame.to_parquet(path)
    table = read_series_table(path, time_column="ts", id_column="sensor", columns=["temp"], allow_missing=True)
    assert table.ids == ["1", "2"] and table.columns == ["temp"]
    assert table.start_times == ["2024-01-01T00:00:00"] * 2
    assert table.missing == {"temp": 1} and table.source["format"] == "parquet"
    np.testing.assert_array_equal(table.series[0][:, 0], [1.0, np.nan, 5.0])
    np.testing.assert_array_equal(table.series[1][:, 0], [2.0, 4.0])
    expect_error(path, "'temp': 1 missing", "row 3", time_column="ts", id_column="sensor", columns=["temp"])
    expect_error(path, "column 'label' is not numeric (row 1: 'a')", time_column="ts", id_column="sensor")
    expect_error(path, "appears twice", "rows 1 and 2", time_column="ts", columns=["temp"], allow_missing=True)


def test_damaged_parquet(tmp_path):
    path = tmp_path / "s.pq"
    path.write_bytes(b"PAR1 not really")
    expect_error(path, "not a readable Parquet file")


def test_npy_one_and_many_series(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.arange(12, dtype=np.float32).reshape(6, 2))
    table = read_series_table(path)
    assert table.columns == ["c0", "c1"] and table.ids == [""] and table.start_times == [None]
    np.testing.assert_array_equal(table.series[0], np.arange(12).reshape(6, 2))
    assert table.series[0].dtype == np.float64
    path = tmp_path / "many.npy"
    data = np.random.default_rng(0).normal(size=(3, 5, 4))
    data[1, 2, 3] = np.nan
    np.save(path, data)
    table = read_series_table(path, columns=["c3", "c0"], allow_missing=True)
    assert table.ids == ["0", "1", "2"] and table.columns == ["c3", "c0"]
    assert table.missing == {"c3": 1, "c0": 0}
    np.testing.assert_array_equal(table.series[2], data[2][:, [3, 0]])
    expect_error(path, "'c3': 1 missing", "--allow-missing")


def test_npy_errors(tmp_path):
    path = tmp_path / "ragged.npy"
    np.save(path, np.array([np.zeros((3, 2)), np.zeros((4, 2))], dtype=object), allow_pickle=True)
    expect_error(path, "object array", "--id-column")
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros(5))
    expect_error(path, "shape (5,)", "(T, 1)")
    path = tmp_path / "inf.npy"
    bad = np.zeros((2, 3, 2))
    bad[1, 2, 0] = np.inf
    np.save(path, bad)
    expect_error(path, "series 1, step 2, channel 'c0'", allow_missing=True)
    expect_error(path, "without named columns", time_column="t")
    expect_error(path, "'c9'", columns=["c9"])
    expect_error(write(tmp_path / "fake.npy", "a,b\n1,2\n"), "not a NumPy .npy file")
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    expect_error(tmp_path / "text.npy", "not numbers")


# -- windows -----------------------------------------------------------------------------------------------

def test_time_split_keeps_train_before_the_boundary_and_test_after():
    steps = 300
    table = table_of(np.stack([np.arange(steps), -np.arange(steps)], axis=1))
    train, test, info = split_windows(table, window=24, stride=1, test_fraction=0.1)
    head = 270  # floor(0.9 * 300)
    assert info["split"] == "time" and info["boundary"] == [head]
    assert train.dtype == test.dtype == np.float32
    assert train.shape == (head - 24 + 1, 24, 2) and test.shape == (steps - head - 24 + 1, 24, 2)
    assert info["train_windows"] == len(train) and info["test_windows"] == len(test)
    assert train[:, :, 0].max() < head <= test[:, :, 0].min()  # no window crosses the boundary
    assert test[:, :, 0].max() == steps - 1
    np.testing.assert_array_equal(train[5, :, 0], np.arange(5, 29))  # consecutive steps in order
    np.testing.assert_array_equal(train[..., 1], -train[..., 0])  # channels stay aligned


def test_time_split_per_series_and_stride():
    table = table_of(np.arange(100), 1000 + np.arange(200), ids=["a", "b"])
    train, test, info = split_windows(table, window=10, stride=5, test_fraction=0.1)
    assert info["split"] == "time" and info["boundary"] == [90, 180]
    starts = train[:, 0, 0].tolist()
    assert starts == list(range(0, 81, 5)) + [1000 + s for s in range(0, 171, 5)]
    assert test[:, 0, 0].tolist() == [90, 1180, 1185, 1190]
    assert all(w < 90 or 1000 <= w < 1180 for w in train[:, :, 0].ravel())
    assert all(90 <= w < 100 or w >= 1180 for w in test[:, :, 0].ravel())


def test_series_split_holds_out_whole_series():
    table = generate_series("sines", seed=0, n=20, window=24)
    train, test, info = split_windows(table, window=24, test_fraction=0.1)
    assert info["split"] == "series" and info["boundary"] == ["18", "19"]
    assert train.shape == (18, 24, 5) and test.shape == (2, 24, 5)
    np.testing.assert_array_equal(test, np.stack(table.series[18:]).astype(np.float32))
    # a few short series fall back to the series split too; at least one is held out
    _, test, info = split_windows(table_of(np.arange(30), np.arange(30), np.arange(30)), window=24, test_fraction=0.1)
    assert info["split"] == "series" and info["boundary"] == ["2"] and len(test) == 7


def test_zero_test_fraction_keeps_everything_for_training():
    train, test, info = split_windows(table_of(np.arange(50)), window=10, stride=3, test_fraction=0)
    assert info["split"] == "none" and info["test_windows"] == 0
    assert test.shape == (0, 10, 1) and train[:, 0, 0].tolist() == list(range(0, 41, 3))


def test_short_series_errors():
    with pytest.raises(UserError, match=r"a series of 100 steps is too short for --window 24 .* at least 240 steps; "
                                        r"use a shorter --window \(at most 10 fits\)"):
        split_windows(table_of(np.arange(100)), window=24, test_fraction=0.1)
    with pytest.raises(UserError, match="series 'b' has 5 steps, fewer than --window 8"):
        split_windows(table_of(np.arange(50), np.arange(5), ids=["a", "b"]), window=8)
    with pytest.raises(UserError, match="mem.csv"):
        split_windows(table_of(np.arange(100)), window=24)


@pytest.mark.parametrize("options, flag", [
    ({"window": 1}, "--window"), ({"window": 2.0}, "--window"), ({"window": 4, "stride": 0}, "--stride"),
    ({"window": 4, "test_fraction": 1.0}, "--test-fraction"), ({"window": 4, "test_fraction": -0.1}, "--test-fraction"),
])
def test_split_settings_are_validated(options, flag):
    with pytest.raises(UserError, match=flag):
        split_windows(table_of(np.arange(100)), **options)
