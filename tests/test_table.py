"""The tabular modality through the CLI, as a user runs it: prepare a mixed CSV, train, sample rows (CSV, --where),
evaluate and synthesize. Reading and type inference are tested in test_table_sources.py, metrics in
test_table_metrics.py, the encoding here; this file checks that the verbs join them up and write what a user opens.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from difftrain.data import load_dataset
from difftrain.errors import UserError
from difftrain.modalities import prepare
from difftrain.modalities.table_encoding import TableEncoding, fit_encoding
from tests.test_cli import cli, difftrain

TINY = ["model.mlp.width=32", "model.mlp.depth=1", "model.mlp.embedding_dim=16", "train.batch_size=64",
        "train.duration_steps=6", "train.log_every_images=128", "train.grid_every_images=0",
        "train.checkpoint_every_images=0", "train.mixed_precision=no", "train.compile=off", "optim.warmup_images=64",
        "sample.steps=3", "sample.batch_size=256"]


def write_table(path, rows: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    age = rng.integers(18, 80, rows)
    frame = pd.DataFrame({
        "age": age,
        "hours": np.round(rng.normal(40, 8, rows), 1),
        "job": rng.choice(["clerk", "nurse", "pilot"], rows),
        "member": rng.choice(["yes", "no"], rows),
        "income": np.where(age + rng.normal(0, 10, rows) > 50, ">50K", "<=50K"),
    })
    frame.loc[[3, 17], "job"] = None
    frame.loc[[5], "hours"] = np.nan
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    source = root / "people.csv"
    write_table(source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cli("data", "prepare", source, "--kind", "tabular", "--target", "income", "--out", root / "data")
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest  # the source is never touched
    cli("train", "--preset", "tabular", "--data", root / "data", "--out", root / "run", "--no-progress", *TINY)
    return root


def test_encoding_round_trips_codes_and_keeps_ties_together():
    schema = [{"name": "n", "type": "integer", "missing": 0.25, "min": 0, "max": 3},
              {"name": "c", "type": "categorical", "categories": ["a", "b", "c"], "missing": 0.25}]
    codes = np.array([[0, 0], [1, 1], [1, 2], [3, np.nan], [np.nan, 1], [2, 0], [1, 1], [0, 2]], np.float64)
    encoding = TableEncoding(schema, fit_encoding(codes, schema))
    assert encoding.dim == 2 + 4  # value + missing indicator; three categories + missing
    vectors = encoding.encode(codes)
    np.testing.assert_array_equal(encoding.decode(vectors), codes)
    # Every row of value 1 (three of seven present) gets one score, the mean of its quantile levels: a median value
    # sits at 0 in the normal scores.
    ones = vectors[codes[:, 0] == 1, 0]
    assert np.ptp(ones) == 0 and abs(ones[0]) < 0.2
    # Model outputs between codes decode to valid ones: the nearest tie, the argmax category.
    noisy = vectors + np.random.default_rng(0).normal(0, 0.05, vectors.shape)
    np.testing.assert_array_equal(encoding.decode(noisy.astype(np.float32)), codes)


def test_a_spike_decodes_to_its_value_not_to_made_up_amounts_beside_it():
    # capital-gain-like: 90% zeros, the rest spread out. Scores anywhere within the zeros' span decode to exactly 0.
    schema = [{"name": "gain", "type": "numeric", "missing": 0.0, "min": 0.0, "max": 1000.0}]
    values = np.concatenate([np.zeros(900), np.linspace(100, 1000, 100)])[:, None]
    encoding = TableEncoding(schema, fit_encoding(values, schema))
    zero = encoding.encode(np.zeros((1, 1)))[0, 0]
    beside = np.array([[zero - 0.5], [zero + 0.5], [zero + 1.0]])  # all within the zeros' scores (levels 0-0.9)
    np.testing.assert_array_equal(encoding.decode(beside), 0.0)
    # Past the spike the scores interpolate the spread values, increasing, within the training range.
    tail = encoding.decode(np.array([[1.4], [2.0], [3.0]]))[:, 0]
    assert 100 <= tail[0] < tail[1] < tail[2] <= 1000


def test_prepare_keeps_types_and_the_target_as_labels(table_run):
    ds = load_dataset(table_run / "data")
    assert ds.class_names == ["<=50K", ">50K"] and ds.train_data.dtype == np.float64
    schema = {c["name"]: c for c in ds.manifest["schema"]}
    assert list(schema) == ["age", "hours", "job", "member"]
    assert [schema[c]["type"] for c in schema] == ["integer", "numeric", "categorical", "boolean"]
    assert ds.modality.model_shape == (1 + 2 + 4 + 2,)  # age; hours + missing; job 3 + missing; member 2
    assert len(ds.train_data) + len(ds.test_data) == 240


def test_types_come_from_flags_or_a_schema_file(table_run, tmp_path):
    source = table_run / "people.csv"
    (tmp_path / "types.yaml").write_text("age: numeric\nmember: categorical\n")
    for types, expected in [("age=numeric,member=categorical", "numeric categorical"),
                            (tmp_path / "types.yaml", "numeric categorical"),
                            (table_run / "data" / "manifest.json", "integer boolean")]:  # a prepared manifest's schema
        out = tmp_path / f"data-{len(list(tmp_path.iterdir()))}"
        cli("data", "prepare", source, "--kind", "tabular", "--target", "income", "--types", types, "--out", out)
        schema = {c["name"]: c["type"] for c in load_dataset(out).manifest["schema"]}
        assert f"{schema['age']} {schema['member']}" == expected, types
    (tmp_path / "bad.json").write_text('["age"]')
    bad = difftrain("data", "prepare", source, "--kind", "tabular", "--types", tmp_path / "bad.json", "--out", tmp_path / "z")
    assert bad.returncode != 0 and "write a mapping of column to type" in " ".join(bad.stderr.split())
    assert not (tmp_path / "z").exists()


def test_sample_writes_a_csv_with_the_inputs_columns_types_and_categories(table_run, tmp_path):
    out = tmp_path / "rows.csv"
    cli("sample", table_run / "run", "--n", 50, "--out", out)
    rows = pd.read_csv(out)
    assert list(rows.columns) == ["age", "hours", "job", "member", "income"] and len(rows) == 50
    assert set(rows["job"].dropna()) <= {"clerk", "nurse", "pilot"} and set(rows["member"]) <= {"yes", "no"}
    assert (rows["age"] == rows["age"].round()).all() and rows["age"].between(18, 79).all()  # no 3.7 children
    assert set(rows["income"]) == {"<=50K", ">50K"}
    assert out.with_suffix(".png").is_file()


def test_where_conditions_on_the_target_and_keeps_rows_that_match_other_columns(table_run, tmp_path):
    out = tmp_path / "rich.parquet"
    cli("sample", table_run / "run", "--n", 20, "--where", "income=>50K", "--out", out)
    assert (pd.read_parquet(out)["income"] == ">50K").all()
    # Any other column: the samples that match, drawn in rounds (exact draws from the model's conditional).
    picked = tmp_path / "picked.csv"
    shown = cli("sample", table_run / "run", "--n", 30, "--where", "job=nurse", "--where", "age>=40",
                "--where", "income=<=50K", "--out", picked)
    rows = pd.read_csv(picked)
    assert len(rows) == 30 and (rows["job"] == "nurse").all() and (rows["age"] >= 40).all()
    assert (rows["income"] == "<=50K").all() and "matched" in shown.output
    again = tmp_path / "again.csv"
    cli("sample", table_run / "run", "--n", 30, "--where", "job=nurse", "--where", "age>=40", "--where", "income=<=50K",
        "--out", again)
    pd.testing.assert_frame_equal(pd.read_csv(again), rows)  # the seed alone decides the rows
    members = tmp_path / "members.csv"
    cli("sample", table_run / "run", "--n", 10, "--where", "member=YES", "--out", members)  # a boolean in any case
    assert (pd.read_csv(members)["member"] == "yes").all()
    for where, message in [("income=rich", "'rich' is not a value of income"),
                           ("salary=1", "the table has no column 'salary'; its columns are: age, hours, job, member"),
                           ("age=old", "age is integer; give a number"), ("job>nurse", "job is categorical; use job=VALUE"),
                           ("age", "write COLUMN=VALUE"),
                           ("age>1000", "the model makes such rows too rarely to fill --n 2")]:
        bad = difftrain("sample", table_run / "run", "--n", 2, "--where", where, "--out", tmp_path / "x.csv")
        said = " ".join((bad.stderr + bad.stdout).split())  # rich wraps long lines
        assert bad.returncode != 0 and message in said and "Traceback" not in said, where
    assert not (tmp_path / "x.csv").exists()


def test_eval_scores_rows_against_their_floors(table_run):
    result = cli("eval", table_run / "run", "--n", 40, "--metrics", "dist,mem", "--json")
    record = json.loads(result.stdout)[0]
    for key in ("column_shape_error", "pair_trend_error", "c2st_auc", "alpha_precision", "beta_recall"):
        assert np.isfinite(record[key]) and np.isfinite(record[f"{key}_floor"]), key
    assert 0 <= record["column_shape_error_floor"] < record["column_shape_error"] + 0.5


def test_synth_writes_rows_and_a_machine_learning_efficiency_report(table_run, tmp_path):
    from difftrain.synth.generate import synthesize

    out = tmp_path / "synth"
    synthesize(table_run / "run", out, per_class=15, report_options={"repeats": 2}, warn=lambda *_: None)
    rows = pd.read_csv(out / "rows.csv")
    assert list(rows.columns) == ["age", "hours", "job", "member", "income"] and len(rows) == 30
    assert (rows["income"].value_counts() == 15).all()
    assert pd.read_parquet(out / "rows.parquet")["age"].dtype.name in ("int64", "Int64")
    utility = json.loads((out / "report.json").read_text())["utility"]
    assert utility["task"] == "classification" and utility["metric"] == "f1_macro" and utility["seeds"] == [0, 1]
    assert utility["counts"]["synthetic"] == 30 and set(utility["arms"]) == {"real", "synthetic", "real+synthetic"}
    assert "macro F1 of income" in (out / "README.md").read_text()


def test_table_options_are_refused_for_other_kinds(tmp_path):
    bad = difftrain("data", "prepare", "digits", "--target", "x", "--out", tmp_path / "y")
    assert bad.returncode != 0 and "--target applies to tabular, not to image" in bad.stderr + bad.stdout
    assert not (tmp_path / "y").exists()
    # Each kind declares what it takes, so a series refuses a table's option rather than ignoring it, and the reverse.
    with pytest.raises(UserError, match="--target applies to tabular, not to timeseries"):
        prepare("sines", tmp_path / "s", kind="timeseries", target="x")
    with pytest.raises(UserError, match="--fit, --window do not apply to tabular .*--fit is for image and segmentation; --window is for timeseries"):
        prepare("wine", tmp_path / "t", kind="tabular", window=8, fit="pad")
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


def test_to_model_keeps_the_device_and_dtype():
    schema = [{"name": "x", "type": "numeric", "missing": 0.0, "decimals": 2}]
    codes = np.array([[0.5], [1.25], [3.0]])
    encoding = fit_encoding(codes, schema)
    from difftrain.modalities.table import TableModality

    m = TableModality({"kind": "tabular", "shape": [1], "schema": schema, "target": None, "encoding": encoding})
    x = m.to_model(torch.from_numpy(codes))
    assert x.dtype == torch.float32 and x.shape == (3, 1)
    np.testing.assert_array_equal(m.from_model(x), codes)


def test_the_preset_reads_categories_through_a_softmax_on_the_simplex(table_run, tmp_path):
    from difftrain.store.run import open_run

    run = table_run / "run"
    assert "categories: softmax" in (run / "config.yaml").read_text()
    opened = open_run(run)
    denoiser = opened.denoiser(opened.checkpoint())
    slices = opened.modality.category_slices
    assert [s.stop - s.start for s in slices] == [4, 2]  # job (3 + missing), member; the target is the label
    x = 3 * torch.randn(16, *opened.modality.model_shape, generator=torch.Generator().manual_seed(0))
    out = denoiser(x, 1.0, {"label": torch.zeros(16, dtype=torch.long)})
    for part in slices:
        k = part.stop - part.start
        assert ((out[:, part] >= -1) & (out[:, part] <= 1)).all()
        torch.testing.assert_close(out[:, part].sum(-1), torch.full((16,), 2.0 - k))
    rows_csv = tmp_path / "rows.csv"
    cli("sample", run, "--n", 40, "--out", rows_csv)
    rows = pd.read_csv(rows_csv)
    assert set(rows["job"].dropna()) <= {"clerk", "nurse", "pilot"} and set(rows["member"]) <= {"yes", "no"}


def test_rows_keep_the_sources_column_order_with_the_target_first(tmp_path):
    from difftrain.data import load_dataset

    source = tmp_path / "first.csv"
    frame = write_table(tmp_path / "people.csv")
    frame[["income", "age", "job", "hours", "member"]].to_csv(source, index=False)
    cli("data", "prepare", source, "--kind", "tabular", "--target", "income", "--out", tmp_path / "data")
    ds = load_dataset(tmp_path / "data")
    rows = ds.modality.frame(ds.train_data, ds.train_labels)
    assert list(rows.columns) == ["income", "age", "job", "hours", "member"]


def test_tiny_numbers_and_milliseconds_survive_encoding_and_decoding(tmp_path):
    from difftrain.data.table_sources import from_codes, read_table, to_codes

    rng = np.random.default_rng(0)
    source = pd.DataFrame({"dose": rng.uniform(1e-8, 5e-7, 40),  # beyond 6 decimals: not rounded to 0
                           "at": pd.date_range("2020-01-01 10:00:01.456", periods=40, freq="1min")})
    source.to_csv(tmp_path / "t.csv", index=False)
    table = read_table(tmp_path / "t.csv")
    assert [(c["decimals"], c["unit"]) for c in table.schema] == [(None, None), (None, "ms")]
    codes = to_codes(table.frame, table.schema)
    encoding = TableEncoding(table.schema, fit_encoding(codes, table.schema))
    rows = from_codes(encoding.decode(encoding.encode(codes)), table.schema)
    np.testing.assert_allclose(rows["dose"], source["dose"], rtol=1e-6)
    assert (rows["at"] == source["at"]).all()


def test_a_test_file_is_typed_like_the_training_file_and_checked_with_it(tmp_path):
    train = write_table(tmp_path / "train.csv", rows=120)
    held = write_table(tmp_path / "other.csv", rows=30)
    held["member"] = "yes"  # one value in the held-out rows alone: fine, the column has two over both files
    held["hours"] = np.nan  # and none at all: fine too
    held[["income", "member", "job", "hours", "age"]].to_csv(tmp_path / "test.csv", index=False)  # another order
    ds = prepare(tmp_path / "train.csv", tmp_path / "data", kind="tabular", target="income", test_file=tmp_path / "test.csv")
    assert ds.manifest["count"] == {"train": len(train), "test": 30}
    rows = ds.modality.frame(ds.test_data, ds.test_labels)
    assert list(rows.columns) == list(train.columns) and (rows["member"] == "yes").all()
    held["age"] = held["age"].astype(float)  # written 33.0: still whole
    held.loc[4, "age"] = 33.5
    held.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match=r"bad.csv: column 'age' is given as integer \(its type in .*train.csv\) but "
                                        r"'33.5' on line 6 is not"):
        prepare(tmp_path / "train.csv", tmp_path / "data2", kind="tabular", target="income", test_file=tmp_path / "bad.csv")


def test_parquet_strings_stay_text_and_booleans_stay_booleans(tmp_path):
    rng = np.random.default_rng(0)
    source = pd.DataFrame({"zip": pd.Series(rng.choice(["02138", "10001", "94105"], 60), dtype="string"),
                           "ok": rng.choice([True, False], 60), "x": rng.normal(size=60), "y": rng.choice(["a", "b"], 60)})
    source.to_parquet(tmp_path / "t.parquet")
    ds = prepare(tmp_path / "t.parquet", tmp_path / "data", kind="tabular", target="y")
    assert [c["type"] for c in ds.modality.schema] == ["categorical", "boolean", "numeric"]
    ds.modality.write_table(tmp_path / "rows.parquet", ds.train_data, ds.train_labels)
    rows = pd.read_parquet(tmp_path / "rows.parquet")
    assert set(rows["zip"]) <= {"02138", "10001", "94105"} and str(rows["ok"].dtype) == "boolean"
