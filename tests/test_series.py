"""The timeseries modality through the CLI, as a user runs it: prepare a CSV, train, sample, forecast, impute, evaluate.

Metric definitions are tested in test_series_metrics.py, file reading in test_series_sources.py, networks in
test_series_networks.py; this file checks that the verbs join them up and write what a user opens.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from difftrain.data import load_dataset
from tests.test_cli import cli, difftrain

TINY = ["model.unet1d.channels=[16,32]", "model.unet1d.attention=[false,true]", "model.unet1d.layers_per_block=1",
        "model.unet1d.embedding_dim=32", "model.unet1d.attention_heads=4", "train.batch_size=32", "train.duration_steps=6",
        "train.log_every_images=64", "train.grid_every_images=0", "train.checkpoint_every_images=0",
        "train.mixed_precision=no", "train.compile=off", "optim.warmup_images=64", "sample.steps=3", "sample.batch_size=64",
        "eval.task_windows=4", "eval.task_paths=3"]


def write_series(path, rows: int = 300, gaps: bool = False) -> np.ndarray:
    t = np.arange(rows)
    values = np.stack([np.sin(t / 5.0), np.cos(t / 7.0) * 2 + 10], axis=1)
    if gaps:
        values[[5, 6, 40], 0] = np.nan
        values[45, 1] = np.nan
    times = np.datetime64("2020-01-01T00") + t.astype("timedelta64[h]")
    with open(path, "w") as f:
        f.write("time,a,b\n")
        for when, (a, b) in zip(times, values, strict=True):
            f.write(f"{when},{'' if np.isnan(a) else a},{'' if np.isnan(b) else b}\n")
    return values


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    source = root / "prices.csv"
    write_series(source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cli("data", "prepare", source, "--kind", "timeseries", "--window", 16, "--time-column", "time", "--out", root / "data")
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest  # the source is never touched
    cli("train", "--preset", "timeseries", "--data", root / "data", "--out", root / "run", "--no-progress", *TINY)
    return root


def test_prepare_splits_by_time_and_scales_on_the_training_split(series_run):
    ds = load_dataset(series_run / "data")
    assert ds.train_data.shape[1:] == (16, 2) and ds.manifest["split"]["split"] == "time"
    # No held-out window starts before the last training window ends: the tail is the last 10% of the rows.
    assert ds.manifest["split"]["boundary"] == [270]
    assert len(ds.train_data) == 270 - 16 + 1 and len(ds.test_data) == 30 - 16 + 1
    lo, hi = np.asarray(ds.manifest["min"]), np.asarray(ds.manifest["max"])
    assert np.allclose(lo, ds.train_data.reshape(-1, 2).min(0)) and np.allclose(hi, ds.train_data.reshape(-1, 2).max(0))
    x = ds.train_data[:4]
    assert np.allclose(ds.modality.from_model(ds.modality.to_model(__import__("torch").from_numpy(x))), x, atol=1e-5)


def test_sample_writes_windows_in_the_datas_units(series_run, tmp_path):
    out = tmp_path / "s.npz"
    cli("sample", series_run / "run", "--n", 10, "--out", out)
    with np.load(out) as f:
        series, meta = f["series"], json.loads(str(f["meta"]))
    assert series.dtype == np.float32 and series.shape == (10, 16, 2) and meta["kind"] == "timeseries"
    assert out.with_suffix(".png").is_file()


def test_forecast_keeps_the_context_and_writes_quantiles(series_run, tmp_path):
    context = tmp_path / "recent.csv"
    values = write_series(context, rows=40)
    out = tmp_path / "forecast.npz"
    cli("sample", series_run / "run", "--context", context, "--horizon", 4, "--n", 8, "--out", out)
    with np.load(out) as f:
        paths, bands, ctx = f["paths"], f["quantiles"], f["context"]
    assert paths.shape == (8, 4, 2) and bands.shape == (5, 4, 2) and np.allclose(ctx, values[-12:], atol=1e-5)
    assert (np.diff(bands, axis=0) >= -1e-6).all()  # quantiles in order
    assert out.with_suffix(".png").is_file()
    bad = difftrain("sample", series_run / "run", "--context", context, "--horizon", 16, "--n", 2, "--out", out)
    assert bad.returncode != 0 and "--horizon 16" in bad.stderr + bad.stdout and "1..15" in bad.stderr + bad.stdout


def test_impute_fills_only_the_gaps(series_run, tmp_path):
    gappy = tmp_path / "gappy.csv"
    values = write_series(gappy, rows=50, gaps=True)
    out = tmp_path / "filled.csv"
    cli("sample", series_run / "run", "--impute", gappy, "--n", 3, "--out", out)
    import pandas as pd

    filled = pd.read_csv(out)
    assert list(filled.columns) == ["time", "a", "b"] and len(filled) == 50
    assert filled[["a", "b"]].notna().all().all()
    known = ~np.isnan(values)
    assert np.allclose(filled[["a", "b"]].to_numpy()[known], values[known], atol=1e-6)  # observed cells untouched
    assert filled["time"].tolist() == pd.read_csv(gappy)["time"].tolist()


def test_eval_forecasts_and_imputes_beside_baselines(series_run):
    result = cli("eval", series_run / "run", "--n", 20, "--metrics", "mem,forecast,impute", "--json")
    record = json.loads(result.stdout)[0]
    for key in ("forecast_crps", "forecast_crps_naive", "forecast_mae_var", "impute_crps", "impute_mae_interp"):
        assert np.isfinite(record[key]), key
    assert record["forecast_horizon"] == 4 and record["forecast_windows"] == 4 and record["impute_windows"] == 4


def test_point_options_are_refused_for_series_and_series_options_for_images(series_run, tmp_path):
    bad = difftrain("data", "prepare", series_run / "prices.csv", "--kind", "timeseries", "--label-column", "a",
                    "--out", tmp_path / "x")
    assert bad.returncode != 0 and "--label-column" in bad.stderr + bad.stdout and not (tmp_path / "x").exists()
    bad = difftrain("data", "prepare", "digits", "--window", 8, "--out", tmp_path / "y")
    assert bad.returncode != 0 and "--window" in bad.stderr + bad.stdout


def test_synth_writes_tables_and_a_forecasting_utility_report(series_run, tmp_path):
    from difftrain.synth.generate import synthesize

    out = tmp_path / "synth"
    manifest = synthesize(series_run / "run", out, n=12, report_options={"steps": 4, "repeats": 2}, warn=lambda *_: None)
    import pandas as pd

    table = pd.read_csv(out / "series.csv")
    assert list(table.columns) == ["window", "step", "a", "b"] and len(table) == 12 * 16
    assert pd.read_parquet(out / "series.parquet")[["a", "b"]].to_numpy() == pytest.approx(table[["a", "b"]].to_numpy(), abs=1e-5)
    report = json.loads((out / "report.json").read_text())
    utility = report["utility"]
    assert utility["task"] == "forecasting" and utility["counts"] == {"real_train": 255, "synthetic": 12, "real_test": 15}
    assert utility["steps"] == 4 and utility["seeds"] == [0, 1] and utility["synthetic_helps"] in (True, False)
    card = (out / "README.md").read_text()
    assert "next-step MAE" in card and "| real + synthetic | 267 |" in card
    assert manifest["report"] == report["files"]


def test_series_scores_take_real_data_with_gaps(tmp_path):
    source = tmp_path / "gappy.csv"
    write_series(source, rows=120, gaps=True)
    cli("data", "prepare", source, "--kind", "timeseries", "--window", 8, "--time-column", "time", "--allow-missing", "--out", tmp_path / "data")
    ds = load_dataset(tmp_path / "data")
    assert np.isnan(ds.train_data).any()
    scores = ds.modality.extra_metrics(ds.train_data[40:60], ds.test_data, 0)
    correlational = scores["correlational"]
    # Gaps are interpolated in time before scoring: finite, and zero for the same windows.
    assert correlational(ds.test_data) == pytest.approx(0.0, abs=1e-9)
    assert np.isfinite(correlational(ds.train_data[:20])) and correlational(ds.train_data[:20]) > 0
