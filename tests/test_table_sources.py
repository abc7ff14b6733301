"""Table sources: built-ins, CSV/Parquet reading and type inference with one-line errors, exact codes both ways,
repair of model outputs, stratified row splits and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from difftrain.data.table_sources import (BUILTIN_TABLES, TYPES, TableSource, from_codes, infer_schema, read_table,
                                          to_codes, write_table)
from difftrain.errors import UserError
from tests.reading import expect_read_error, write


def expect_error(path: Path, *fragments: str, **options) -> str:
    return expect_read_error(read_table, path, *fragments, **options)


def by_name(table: TableSource) -> dict[str, dict]:
    return {c["name"]: c for c in table.schema}


MIXED = """\
id , age,height,city,member,joined,flag
a1,34,1.75,Paris,yes,2020-01-05,True
a2,,1.80, Lyon ,no,2021-03-04,False
a3,51,NA,,yes,,True
a4,29,1.6,Paris,,2019-12-31,
a5,40,1.725,Nice,no,2020-06-30,False
"""


# -- inference ---------------------------------------------------------------------------------------------

def test_csv_types_are_inferred_with_the_schema_a_manifest_stores(tmp_path):
    source = write(tmp_path / "people.csv", MIXED)
    table = read_table(source)
    assert table.source == {"file": str(source)} and table.target is None and table.warnings == []
    assert list(table.frame.columns) == ["id", "age", "height", "city", "member", "joined", "flag"]
    schema = by_name(table)
    assert [c["type"] for c in table.schema] == ["categorical", "integer", "numeric", "categorical", "boolean",
                                                 "datetime", "boolean"]
    assert set(c["type"] for c in table.schema) <= set(TYPES)
    assert schema["age"] == {"name": "age", "type": "integer", "missing": 0.2, "min": 29.0, "max": 51.0,
                             "decimals": None, "categories": None, "counts": None, "unit": None}
    assert schema["height"]["decimals"] == 3 and schema["height"]["min"] == 1.6 and schema["height"]["missing"] == 0.2
    # Cells are stripped; categories are sorted text with their row counts.
    assert schema["city"]["categories"] == ["Lyon", "Nice", "Paris"] and schema["city"]["counts"] == [1, 1, 2]
    assert schema["member"]["categories"] == ["no", "yes"] and schema["flag"]["categories"] == ["False", "True"]
    assert schema["joined"]["unit"] == "D" and schema["joined"]["min"] == pd.Timestamp("2019-12-31").timestamp()
    frame = table.frame
    assert str(frame["age"].dtype) == "Int64" and frame["height"].dtype == np.float64
    assert frame["city"].dtype == object and frame["city"].tolist()[:2] == ["Paris", "Lyon"]
    assert frame["joined"].dtype == "datetime64[ns]" and frame["joined"].isna().sum() == 1
    assert json.loads(json.dumps(table.schema)) == table.schema  # plain JSON types only


@pytest.mark.parametrize("cells, kind", [
    (["1", "2", "-3", ""], "integer"),
    (["1", "0", "1", "0"], "integer"),  # 0/1 is a number, not a boolean
    (["3.0", "4", "5"], "numeric"),  # written with a decimal point
    (["1e3", "2", "3"], "numeric"),
    (["Y", "n", "Y"], "boolean"),
    (["T", "F"], "boolean"),
    (["YES", "no", ""], "boolean"),
    (["yes", "false"], "categorical"),  # not one pair of spellings
    (["2020-01-05T10:00:00", "2021-03-04 12:30", "2020-02-29"], "datetime"),
    (["01/02/2020", '"Jan 5, 2021"', "2020-03-04"], "datetime"),
    (["2020-01-05T10:00:00+02:00", "2020-01-05T10:00:00Z"], "datetime"),
    (["3-4", "5-6", "1-2"], "categorical"),  # ranges, not dates
    (["10:30", "11:45"], "categorical"),
    (["10:30:00", "11:45:10", "09:00:00"], "categorical"),  # a bare time is not dated to the day it is read
    (["May", "June"], "categorical"),
    (["a", "b", "1"], "categorical"),
    (["02138", "10001", "94105"], "categorical"),  # codes: as numbers the leading zero would be lost
])
def test_each_type_is_inferred_from_text(tmp_path, cells, kind):
    source = write(tmp_path / "t.csv", "x,y\n" + "".join(f"{c},{i}\n" for i, c in enumerate(cells)))
    assert read_table(source).schema[0]["type"] == kind


def test_datetimes_become_utc_and_keep_their_unit(tmp_path):
    source = write(tmp_path / "t.csv", "t,v\n2020-01-05T10:00:00+02:00,1\n2020-01-05T10:00:30Z,2\n,3\n")
    table = read_table(source)
    assert table.frame["t"].tolist()[:2] == [pd.Timestamp("2020-01-05 08:00:00"), pd.Timestamp("2020-01-05 10:00:30")]
    assert table.schema[0]["unit"] == "s"
    codes = to_codes(table.frame, table.schema)
    assert codes[0, 0] == pd.Timestamp("2020-01-05 08:00", tz="UTC").timestamp() and np.isnan(codes[2, 0])


def test_parquet_types_come_from_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "t.parquet"
    stamps = pa.array([pd.Timestamp("2020-01-01 01:00", tz="Europe/Paris"), None, pd.Timestamp("2021-05-01", tz="UTC")],
                      pa.timestamp("us", tz="Europe/Paris"))
    pq.write_table(pa.table({
        "n": pa.array([1, None, 3], pa.int32()), "whole": [1.0, 2.0, 4.0], "x": [0.5, None, 1.25],
        "ok": [True, False, None], "s": [" b ", "a", None], "num_text": ["1", "2", "3"], "zip": ["02138", "10001", "94105"], "t": stamps,
        "cat": pa.array(["u", "v", "u"]).dictionary_encode(),
    }), source)
    table = read_table(source)
    schema = by_name(table)
    assert {c: schema[c]["type"] for c in schema} == {
        "n": "integer", "whole": "numeric", "x": "numeric", "ok": "boolean", "s": "categorical",
        "num_text": "integer", "zip": "categorical", "t": "datetime", "cat": "categorical"}
    assert schema["ok"]["categories"] == ["False", "True"] and schema["s"]["categories"] == ["a", "b"]
    assert schema["x"]["decimals"] == 2 and schema["whole"]["decimals"] == 0
    assert table.frame["t"].tolist()[0] == pd.Timestamp("2020-01-01 00:00")  # Paris 01:00 is 00:00 UTC
    assert schema["t"]["timezone"] == "Europe/Paris" and "timezone" not in schema["n"]
    back = from_codes(to_codes(table.frame, table.schema), table.schema)
    assert back["t"].tolist()[0] == pd.Timestamp("2020-01-01 01:00", tz="Europe/Paris")  # in its zone again
    assert str(table.frame["n"].dtype) == "Int64" and table.frame["n"].isna().tolist() == [False, True, False]


def test_types_overrides_are_applied_and_checked(tmp_path):
    source = write(tmp_path / "t.csv", "zip,age,score,yes\n01234,3,1,0\n99999,4,2,1\n01234,5.0,3,1\n")
    table = read_table(source, types={"zip": "categorical", "age": "integer", "score": "numeric", "yes": "boolean"})
    schema = by_name(table)
    assert schema["zip"]["categories"] == ["01234", "99999"]  # leading zeros kept as text
    assert schema["age"]["type"] == "integer" and table.frame["age"].tolist() == [3, 4, 5]
    assert schema["score"]["type"] == "numeric" and schema["score"]["decimals"] == 0
    assert schema["yes"]["type"] == "boolean" and schema["yes"]["categories"] == ["0", "1"]


def test_columns_keep_the_file_order_and_the_target(tmp_path):
    source = write(tmp_path / "t.csv", "a,b,c,d\n1,x,2.5,u\n2,y,3.5,v\n")
    table = read_table(source, columns=["c", "a"], target="d")
    assert list(table.frame.columns) == ["a", "c", "d"] and table.target == "d"
    assert [c["name"] for c in table.schema] == ["a", "c", "d"]


def test_na_values_mark_extra_missing_cells(tmp_path):
    source = write(tmp_path / "t.csv", "x,y\n1,a\n?,b\n3, -\n4,a\n5,b\n6,a\n7,b\n8,a\n9,b\n10,a\n")
    table = read_table(source, na_values=["?", "-"])
    assert by_name(table)["x"]["type"] == "integer" and table.frame["x"].isna().sum() == 1
    assert by_name(table)["y"]["missing"] == 0.1


def test_infer_schema_types_a_frame_as_prepare_does_for_two_files(tmp_path):
    a = read_table(write(tmp_path / "a.csv", MIXED))
    b = read_table(write(tmp_path / "b.csv", MIXED.replace("Nice", "Lille")))
    both = pd.concat([a.frame, b.frame], ignore_index=True)
    schema, notes = infer_schema(both, types={c["name"]: c["type"] for c in a.schema}, where="a + b")
    assert [c["type"] for c in schema] == [c["type"] for c in a.schema] and notes == []
    assert by_name(TableSource(both, schema, None))["city"]["categories"] == ["Lille", "Lyon", "Nice", "Paris"]
    pd.testing.assert_frame_equal(from_codes(to_codes(both, schema), schema), both)
    with pytest.raises(UserError, match=r"^a \+ b: column 'city' holds one value only"):
        infer_schema(pd.DataFrame({"city": ["x", "x"]}), where="a + b")


# -- codes -------------------------------------------------------------------------------------------------

ROUND_TRIP = pd.DataFrame({
    "n": pd.array([3, None, -7, 12, 0], dtype="Int64"),
    "x": [1.5, 2.25, np.nan, -0.125, 1e-3],
    "c": pd.Series(["red", "blue", pd.NA, "red", "green"], dtype=object),
    "b": pd.Series(["yes", pd.NA, "no", "yes", "no"], dtype=object),
    "t": pd.to_datetime(["2020-01-05 10:00:01", "2021-03-04", None, "1999-12-31 23:59:59.250", "2020-02-29"],
                        format="ISO8601").astype("datetime64[ns]"),
})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_codes_round_trip_exactly_with_missing_cells_in_every_type(tmp_path, suffix):
    source = tmp_path / f"t{suffix}"
    write_table(ROUND_TRIP, source)
    before = source.read_bytes()
    table = read_table(source)
    assert source.read_bytes() == before
    assert [c["type"] for c in table.schema] == ["integer", "numeric", "categorical", "boolean", "datetime"]
    assert by_name(table)["t"]["unit"] == "ms"
    codes = to_codes(table.frame, table.schema)
    assert codes.dtype == np.float64 and codes.shape == (5, 5)
    assert np.isnan(codes).sum(axis=0).tolist() == [1, 1, 1, 1, 1]
    assert codes[:, 2].tolist()[:2] == [2.0, 0.0]  # index into ["blue", "green", "red"]
    back = from_codes(codes, table.schema)
    pd.testing.assert_frame_equal(back, table.frame)
    pd.testing.assert_frame_equal(back, ROUND_TRIP)
    assert [str(d) for d in back.dtypes] == ["Int64", "float64", "object", "object", "datetime64[ns]"]
    assert back["c"].isna().tolist() == [False, False, True, False, False] and back["c"][2] is pd.NA


def test_from_codes_repairs_model_outputs():
    schema = [
        {"name": "n", "type": "integer", "min": 0.0, "max": 10.0},
        {"name": "x", "type": "numeric", "min": -1.0, "max": 1.0, "decimals": 2},
        {"name": "c", "type": "categorical", "categories": ["a", "b", "c"]},
        {"name": "b", "type": "boolean", "categories": ["no", "yes"]},
        {"name": "t", "type": "datetime", "min": 0.0, "max": 86_400.0 * 10, "unit": "D"},
    ]
    codes = np.array([[2.6, 0.12345, 1.7, 0.4, 86_400 * 2.4],
                      [-3.0, 7.0, 5.2, 1.6, -1e9],
                      [11.4, -np.inf, -0.8, np.nan, 1e12],
                      [np.nan, np.nan, np.nan, -2.0, np.nan]])
    frame = from_codes(codes, schema)
    assert frame["n"].tolist()[:3] == [3, 0, 10] and frame["n"].isna().tolist() == [False, False, False, True]
    assert frame["x"].tolist()[:3] == [0.12, 1.0, -1.0] and np.isnan(frame["x"][3])
    assert frame["c"].tolist()[:3] == ["c", "c", "a"] and frame["c"][3] is pd.NA
    assert frame["b"].tolist() == ["no", "yes", pd.NA, "no"]
    assert frame["t"].tolist()[:3] == [pd.Timestamp("1970-01-03"), pd.Timestamp("1970-01-01"),
                                       pd.Timestamp("1970-01-11")]
    assert frame["t"].isna().tolist() == [False, False, False, True]
    # Repaired codes are exact codes: they survive another round trip unchanged.
    again = to_codes(frame, schema)
    pd.testing.assert_frame_equal(from_codes(again, schema), frame)


def test_to_codes_refuses_a_category_outside_the_schema():
    schema = [{"name": "x", "type": "numeric"},
              {"name": "city", "type": "categorical", "categories": ["Lyon", "Paris"]}]
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "city": ["Paris", None, "Rome"]})
    with pytest.raises(UserError) as caught:
        to_codes(frame, schema)
    message = str(caught.value)
    assert "'city'" in message and "'Rome'" in message and "row 3" in message and "\n" not in message
    with pytest.raises(UserError, match="no column 'city'"):
        to_codes(frame[["x"]], schema)


# -- refusals and warnings ---------------------------------------------------------------------------------

def test_files_that_are_not_tables_are_refused(tmp_path):
    expect_error(tmp_path / "absent.csv", "does not exist", "wine")
    (tmp_path / "folder.csv").mkdir()
    expect_error(tmp_path / "folder.csv", "is a folder")
    expect_error(write(tmp_path / "t.xlsx", "x"), "unsupported file type '.xlsx'", ".csv", ".parquet")
    expect_error(write(tmp_path / "empty.csv", ""), "is empty")
    expect_error(write(tmp_path / "blank.csv", "\n \n"), "is empty")
    expect_error(write(tmp_path / "header.csv", "a,b\n\n"), "has a header but no data rows")
    expect_error(write(tmp_path / "dup.csv", "a, b,a\n1,2,3\n4,5,6\n"), "names column 'a' twice")
    expect_error(write(tmp_path / "bad.parquet", "not parquet"), "not a readable Parquet file")


def test_ragged_rows_name_their_line(tmp_path):
    expect_error(write(tmp_path / "long.csv", "a,b\n1,2\n\n3,4,5\n6,7\n"), "line 4 has 3 cells but the header has 2")
    expect_error(write(tmp_path / "short.csv", "a,b,c\n1,2,3\n4,5\n"), "line 3 has 2 cells but the header has 3")


def test_unknown_columns_targets_and_types_are_refused(tmp_path):
    source = write(tmp_path / "t.csv", "a,b\n1,x\n2,y\n")
    expect_error(source, "no column 'z'", "--columns", "its columns are: a, b", columns=["a", "z"])
    expect_error(source, "no column 'z' for --target", "its columns are: a, b", target="z")
    expect_error(source, "--types a=float", "choose one of: numeric, integer", types={"a": "float"})
    expect_error(source, "--types names column 'z'", "its columns are: a, b", types={"z": "integer"})
    with pytest.raises(UserError, match="--columns leaves out"):
        read_table(source, columns=["a"], types={"b": "categorical"})


def test_a_mostly_numeric_column_with_text_is_refused_with_examples(tmp_path):
    lines = [str(i) for i in range(40)]
    lines[4], lines[9], lines[20], lines[25] = "abc", "?", "n.a.", "x"
    source = write(tmp_path / "t.csv", "v,w\n" + "".join(f"{v},{i % 3}\n" for i, v in enumerate(lines)))
    message = expect_error(source, "column 'v' holds numbers but 4 cells are not", "'abc' on line 6", "'?' on line 11",
                           "'n.a.' on line 22", "--na-values", "--types v=categorical")
    assert "'x'" not in message  # three examples at most
    table = read_table(source, na_values=["abc", "?", "n.a.", "x"])
    assert by_name(table)["v"]["type"] == "integer" and by_name(table)["v"]["missing"] == 4 / 40
    assert by_name(read_table(source, types={"v": "categorical"}))["v"]["type"] == "categorical"


def test_constant_and_empty_columns_are_refused(tmp_path):
    expect_error(write(tmp_path / "c.csv", "a,b\n1,x\n2,x\n3,\n"), "column 'b' holds one value only ('x')",
                 "drop it with --columns")
    expect_error(write(tmp_path / "e.csv", "a,b\n1,\n2,NA\n"), "column 'b' has no values", "drop it with --columns")
    expect_error(write(tmp_path / "n.csv", "a,b\n1.5,x\n1.50,y\n"), "column 'a' holds one value only ('1.5')")
    assert read_table(tmp_path / "e.csv", columns=["a"]).frame.columns.tolist() == ["a"]


def test_id_like_and_many_valued_columns_warn_and_too_many_are_refused(tmp_path):
    rows = 120
    source = write(tmp_path / "t.csv", "key,num,city,grp\n" + "".join(
        f"k{i},{i},c{i % 60},g{i % 2}\n" for i in range(rows)))
    table = read_table(source)
    assert len(table.warnings) == 3 and all("\n" not in w for w in table.warnings)
    assert "column 'key' has a different value on every one of its 120 rows, like an id" in table.warnings[0]
    assert "--columns" in table.warnings[0] and "column 'num'" in table.warnings[1]
    assert "column 'city' has 60 distinct values" in table.warnings[2]
    expect_error(source, "column 'city' has 60 distinct values, more than --max-categories 40", "--columns",
                 columns=["city", "grp"], max_categories=40)
    small = write(tmp_path / "small.csv", "key,grp\n" + "".join(f"k{i},g{i % 2}\n" for i in range(50)))
    assert read_table(small).warnings == []  # 50 rows are too few to call a column an id


@pytest.mark.parametrize("text, types, fragments", [
    ("age,b\n3,x\n3.5,y\n4,z\n", {"age": "integer"}, ["column 'age' is given as integer", "'3.5' on line 3",
                                                       "not whole numbers"]),
    ("age,b\n3,x\nold,y\n", {"age": "numeric"}, ["column 'age' is given as numeric", "'old' on line 3", "not numbers"]),
    ("t,b\n2020-01-01,x\nsoon,y\n", {"t": "datetime"}, ["'soon' on line 3", "not dates or times"]),
    ("f,b\na,x\nb,y\nc,z\n", {"f": "boolean"}, ["column 'f' is given as boolean", "3 distinct values",
                                                "--types f=categorical"]),
    ("v,b\n1,x\ninf,y\n", None, ["column 'v' has an infinite value ('inf' on line 3)"]),
    ("v,b\n1,x\n12345678901234567890,y\n", None, ["beyond 2^53", "--types v=categorical"]),
])
def test_values_that_do_not_fit_their_type_are_refused(tmp_path, text, types, fragments):
    expect_error(write(tmp_path / "t.csv", text), *fragments, types=types)


def test_parquet_overrides_name_the_row(tmp_path):
    source = tmp_path / "t.parquet"
    pd.DataFrame({"x": [1.0, 2.5, 3.0], "y": ["a", "b", "c"]}).to_parquet(source, index=False)
    expect_error(source, "column 'x' is given as integer", "'2.5' on row 2", types={"x": "integer"})
    assert by_name(read_table(source, types={"x": "categorical"}))["x"]["categories"] == ["1", "2.5", "3"]


# -- splits ------------------------------------------------------------------------------------------------

def test_builtins_load_offline_with_their_target():
    assert set(BUILTIN_TABLES) >= {"wine", "breast_cancer", "adult_like"}
    wine = read_table("wine")
    assert wine.source == {"builtin": "wine"} and wine.target == "target" and wine.frame.shape == (178, 14)
    assert by_name(wine)["target"]["categories"] == ["class_0", "class_1", "class_2"]
    assert all(c["type"] == "numeric" for c in wine.schema[:-1])
    cancer = read_table("breast_cancer", columns=["mean radius"])
    assert list(cancer.frame.columns) == ["mean radius", "target"]
    assert cancer.schema[-1]["categories"] == ["benign", "malignant"] and cancer.schema[-1]["counts"] == [357, 212]

    adult = read_table("adult_like")
    assert adult.target == "income" and len(adult.frame) == 2000 and adult.warnings == []
    types = {c["name"]: c["type"] for c in adult.schema}
    assert {"numeric", "integer", "categorical", "boolean"} <= set(types.values())
    assert by_name(adult)["income"]["categories"] == ["<=50K", ">50K"]
    assert any(c["type"] == "categorical" and 0 < c["missing"] < 0.1 for c in adult.schema)
    frame = adult.frame
    rich = frame["income"] == ">50K"
    assert 0.1 < rich.mean() < 0.5
    assert frame.loc[rich, "education_num"].mean() > frame.loc[~rich, "education_num"].mean() + 1  # depends on columns
    pd.testing.assert_frame_equal(read_table("adult_like").frame, frame)  # seeded
    pd.testing.assert_frame_equal(from_codes(to_codes(frame, adult.schema), adult.schema), frame)


def test_write_table_writes_atomically_by_suffix(tmp_path):
    write_table(ROUND_TRIP, tmp_path / "out" / "rows.csv")
    write_table(ROUND_TRIP, tmp_path / "out" / "rows.parquet")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rows.csv", "rows.parquet"]
    assert (tmp_path / "out" / "rows.csv").read_text().splitlines()[0] == "n,x,c,b,t"
    assert str(pd.read_parquet(tmp_path / "out" / "rows.parquet")["n"].dtype) == "Int64"
    with pytest.raises(UserError, match=r"rows\.xlsx.*use \.csv or \.parquet"):
        write_table(ROUND_TRIP, tmp_path / "out" / "rows.xlsx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rows.csv", "rows.parquet"]


def test_a_semicolon_csv_may_write_decimal_commas(tmp_path):
    source = write(tmp_path / "t.csv", "price;code;city\n1,5;1,2;Lyon\n2;3,4;Metz\n-0,25;5-6;Lyon\n;7;Metz\n")
    table = read_table(source)
    assert [(c["type"], c["decimals"]) for c in table.schema] == [("numeric", 2), ("categorical", None),
                                                                  ("categorical", None)]
    assert table.frame["price"].tolist()[:3] == [1.5, 2.0, -0.25] and np.isnan(table.frame["price"].iloc[3])
    assert table.schema[1]["categories"] == ["1,2", "3,4", "5-6", "7"]  # not all numbers: kept as written
