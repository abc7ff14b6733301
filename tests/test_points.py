"""The points modality through the CLI, as a user runs it: prepare a table, train, sample, evaluate, synthesise, doctor.

The smallest proof that the seams hold: a second kind of data through the same verbs, with no branch for it
outside modalities/.
"""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import yaml

from difftrain.data import load_dataset
from difftrain.data.point_sources import generate_points
from difftrain.evaluation.sample_distances import sliced_wasserstein
from tests.test_cli import cli, difftrain

TINY = ["model.mlp.width=64", "model.mlp.depth=2", "model.mlp.embedding_dim=32", "train.batch_size=256",
        "train.duration_images=25600", "train.log_every_images=5120", "train.grid_every_images=0",
        "train.checkpoint_every_images=0", "train.mixed_precision=no", "train.compile=off", "optim.warmup_images=2560",
        "train.ema_halflife_images=2560", "eval.every_images=0", "sample.steps=12", "eval.classifier_epochs=5"]


def write_moons_csv(path, n: int = 1200, bad_rows: bool = True) -> None:
    table = generate_points("moons", n, seed=3)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "label"])
        for (x, y), label in zip(table.points, table.labels, strict=True):
            writer.writerow([f"{x:.6f}", f"{y:.6f}", table.class_names[label]])
        if bad_rows:
            writer.writerow(["0.5", "oops", "upper"])  # line n + 2 of the file
            writer.writerow(["", "0.1", "lower"])


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    root = tmp_path_factory.mktemp("points")
    source = root / "moons.csv"
    write_moons_csv(source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cli("data", "prepare", source, "--out", root / "data", "--label-column", "label", "--test-fraction", "0.25")
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest  # the source is never touched
    return root


@pytest.fixture(scope="module")
def points_run(moons):
    run = moons / "run"
    cli("train", "--preset", "points", "--data", moons / "data", "--out", run, "--no-progress", *TINY)
    return run


def test_prepare_reads_a_table_and_reports_its_bad_rows(moons):
    ds = load_dataset(moons / "data")
    m = ds.manifest
    assert m["kind"] == "points" and m["shape"] == [2] and m["columns"] == ["x", "y"]
    assert ds.class_names == ["lower", "upper"] and ds.num_classes == 2
    assert ds.train_data.dtype == np.float32 and ds.train_data.shape == (900, 2) and ds.test_data.shape == (300, 2)
    # Both bad rows are rejected with the line a user sees in the file; the good ones are all kept.
    assert [r["row"] for r in m["rejected"]] == [1202, 1203]
    assert "'oops'" in m["rejected"][0]["reason"] and "y" in m["rejected"][0]["reason"]
    # The model's standardisation is the training split's own.
    np.testing.assert_allclose(m["mean"], ds.train_data.mean(0), atol=1e-5)
    np.testing.assert_allclose(m["std"], ds.train_data.std(0), rtol=1e-4)


def test_a_text_column_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,name\n1.0,a\n2.0,b\n")
    result = difftrain("data", "prepare", bad, "--out", tmp_path / "out")
    assert result.returncode == 2 and "name" in result.stderr and "--label-column" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_training_records_the_datas_sigma_and_the_mlp(points_run):
    config = yaml.safe_load((points_run / "config.yaml").read_text())
    # Standardised columns: the data's std as the model sees it is 1 (population std of the training split).
    assert config["diffusion"]["sigma_data"] == pytest.approx(1.0, abs=1e-4)
    assert config["model"]["arch"] == "mlp" and config["diffusion"]["weighting"] == "edm"
    dataset = json.loads((points_run / "dataset.json").read_text())
    assert dataset["modality"]["kind"] == "points" and dataset["modality"]["columns"] == ["x", "y"]
    assert (points_run / "README.md").read_text().count("points data of shape 2") == 1
    assert list((points_run / "samples").glob("grid-*.png"))


def test_sample_writes_points_in_the_datas_units(points_run, moons, tmp_path):
    out = tmp_path / "p.npz"
    cli("sample", points_run, "--n", 400, "--out", out, "--seed", 1)
    with np.load(out) as f:
        points, labels, meta = f["points"], f["labels"], json.loads(str(f["meta"]))
    assert points.dtype == np.float32 and points.shape == (400, 2) and "images" not in np.load(out).files
    assert np.bincount(labels).tolist() == [200, 200] and meta["kind"] == "points" and meta["class_names"] == ["lower", "upper"]
    assert out.with_suffix(".png").is_file()
    # A model that learnt something: far closer to the held-out moons than standard normal noise, in the data's units.
    test = load_dataset(moons / "data").test_data
    noise = np.random.default_rng(0).standard_normal((400, 2)).astype(np.float32)
    assert sliced_wasserstein(points, test) < 0.5 * sliced_wasserstein(noise, test)
    # The upper moon lies above the lower one: the labels steer the samples.
    assert points[labels == 1, 1].mean() > points[labels == 0, 1].mean() + 0.3


def test_eval_scores_points_next_to_their_floors(points_run):
    result = cli("eval", points_run, "--n", 300, "--metrics", "dist,fid,pr,cas,mem", "--json")
    record = json.loads(result.stdout)[0]
    for key in ("sliced_wasserstein", "energy_distance", "fid", "precision", "recall"):
        assert np.isfinite(record[key]) and np.isfinite(record[f"{key}_floor"]), key
    # Real points score better than the samples of a model trained for seconds, on the distances.
    assert record["sliced_wasserstein_floor"] < record["sliced_wasserstein"]
    assert record["extractor"] == "standardised-data"
    # CAS: a classifier trained on the samples, tested on real held-out points; the moons are easy to tell apart.
    assert record["cas"] > 0.8 and record["cas_real"] > 0.9
    assert record["memorized_fraction_floor"] >= 0 and "memorized_fraction" in record


def test_synth_writes_one_table_with_a_report(points_run, tmp_path):
    out = tmp_path / "synth"
    cli("synth", points_run, "--out", out, "--per-class", 60, "--filter", "dedup")
    with open(out / "points.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120 and list(rows[0]) == ["x", "y", "label", "class"]
    assert sorted({r["class"] for r in rows}) == ["lower", "upper"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality"]["kind"] == "points" and manifest["columns"] == ["x", "y"] and manifest["totals"]["kept"] == 120
    assert "points.csv" in (out / "README.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["privacy"] is not None and report["utility"]["arms"]["real"]["accuracy_mean"] > 0.9
    # The table is a points source again.
    cli("data", "prepare", out / "points.csv", "--label-column", "class", "--columns", "x,y", "--out", tmp_path / "again")
    assert load_dataset(tmp_path / "again").num_classes == 2


def test_doctor_probes_the_mlp(moons):
    result = cli("doctor", "--preset", "points", "--data", moons / "data", "--json", "train.duration_images=25600")
    report = json.loads(result.stdout)
    assert report["probe"]["sample_shape"] == [2]
    assert report["probe"]["parameters"] > 0


def test_an_unconditional_builtin_set_trains_and_samples(tmp_path):
    run = tmp_path / "roll"
    cli("train", "--preset", "points", "--out", run, "--no-progress", "data.path=swissroll", *TINY,
        "train.duration_images=5120")
    out = tmp_path / "roll.npz"
    cli("sample", run, "--n", 50, "--out", out)
    assert "labels" not in np.load(out).files and np.load(out)["points"].shape == (50, 2)


def test_image_only_settings_are_refused_for_points(moons, tmp_path):
    result = difftrain("train", "--preset", "points", "--data", moons / "data", "--out", tmp_path / "r", *TINY, "train.hflip=true")
    assert result.returncode == 2 and "train.hflip" in result.stderr and "Traceback" not in result.stderr
    result = difftrain("train", "--preset", "points", "--data", moons / "data", "--out", tmp_path / "r2", *TINY, "model.arch=unet")
    assert result.returncode == 2 and "model.arch" in result.stderr and "Traceback" not in result.stderr


def test_points_options_that_do_not_apply_are_refused(moons, tmp_path):
    result = difftrain("data", "prepare", moons / "moons.csv", "--n", 500, "--out", tmp_path / "a")
    assert result.returncode == 2 and "--n" in result.stderr and "--limit" in result.stderr
    result = difftrain("data", "prepare", "moons", "--label-column", "x", "--out", tmp_path / "b")
    assert result.returncode == 2 and "--label-column" in result.stderr
    result = difftrain("data", "prepare", moons / "moons.csv", "--label-column", "label", "--strict", "--out", tmp_path / "c")
    assert result.returncode == 2 and "strict" in result.stderr and "row 1202" in result.stderr
    assert not any((tmp_path / name).exists() for name in "abc")
