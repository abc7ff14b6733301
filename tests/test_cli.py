"""The tool the way a user runs it: train, sample, evaluate and report from the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import yaml
import pytest
from typer.testing import CliRunner

from difftrain.cli import app
from tests.conftest import tiny_overrides

runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(map(str, args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def difftrain(*args: str) -> subprocess.CompletedProcess:
    """Run the real entry point, as a user would (error handling included)."""
    return subprocess.run([sys.executable, "-c", "from difftrain.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, digits_dir):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    cli("train", "--out", run, "--no-progress", *tiny_overrides(digits_dir, **{"train.duration_steps": 8, "train.checkpoint_every_images": 64}))
    return run


def test_every_verb_has_help_with_an_example():
    for verb in (["train"], ["sample"], ["eval"], ["export"], ["synth"], ["demo"], ["config"], ["doctor"], ["sweep"], ["rate", "create"], ["rate", "serve"], ["rate", "results"], ["data", "prepare"], ["data", "info"]):
        result = cli(*verb, "--help")
        assert "Example" in result.output, verb


def test_sample_writes_the_samples_file(trained_run, tmp_path):
    out = tmp_path / "s.npz"
    cli("sample", trained_run, "--n", 20, "--out", out, "--sampler", "dpmpp_2m", "--steps", 5, "--guidance", 2, "--seed", 3)
    with np.load(out) as f:
        images, labels, meta = f["images"], f["labels"], json.loads(str(f["meta"]))
    assert images.dtype == np.uint8 and images.shape == (20, 8, 8, 1)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [2] * 10
    assert meta["sampler"] == "dpmpp_2m" and meta["steps"] == 5 and meta["guidance"] == 2 and meta["seed"] == 3
    assert meta["network_evaluations"] == 2 * 5 and meta["checkpoint"].endswith("ckpt-000000128")
    assert out.with_suffix(".png").is_file()
    # Same seed, same images; another seed, other images.
    again, other = tmp_path / "again.npz", tmp_path / "other.npz"
    cli("sample", trained_run, "--n", 20, "--out", again, "--sampler", "dpmpp_2m", "--steps", 5, "--guidance", 2, "--seed", 3)
    cli("sample", trained_run, "--n", 20, "--out", other, "--sampler", "dpmpp_2m", "--steps", 5, "--guidance", 2, "--seed", 4)
    assert np.array_equal(np.load(again)["images"], images)
    assert not np.array_equal(np.load(other)["images"], images)


def test_sample_one_class(trained_run, tmp_path):
    cli("sample", trained_run, "--n", 6, "--out", tmp_path / "c.npz", "--class", 7, "--steps", 3)
    assert np.load(tmp_path / "c.npz")["labels"].tolist() == [7] * 6


def test_eval_logs_and_reports(trained_run):
    result = cli("eval", trained_run, "--n", 100, "--steps", 4, "--json")
    [record] = json.loads(result.stdout[result.stdout.index("["):])
    assert record["n_samples"] == 100 and record["fid_floor"] > 0 and record["label_agreement"] < record["extractor_test_accuracy"]  # 8 steps: not yet digits
    for key in ("kid", "kid_floor", "precision", "recall", "density", "coverage", "cas", "cas_real", "memorized_fraction"):
        assert isinstance(record[key], float), key
    assert record["sampler"] == "heun" and record["steps"] == 4 and record["extractor"] == "difftrain-small-classifier"
    lines = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "eval" and lines[-1]["fid"] == record["fid"]
    assert (trained_run / "eval" / "metrics-vs-images.png").is_file()
    assert (trained_run / "eval" / "memorization-ckpt-000000128-heun-4-g1-n100-s0.png").is_file()
    report = (trained_run / "README.md").read_text()
    assert "## Evaluation" in report and "floor" in report and "samples/grid-" in report and "eval/memorization-" in report
    # The model card's front matter, as the Hugging Face Hub reads it: the final evaluation in its model-index.
    assert report.startswith("---\n")
    card = yaml.safe_load(report.split("---\n")[1])
    assert card["library_name"] == "difftrain" and card["license"] == "cc-by-4.0"  # the digits' provenance says CC BY 4.0
    assert card["datasets"] == ["digits"] and card["pipeline_tag"] == "unconditional-image-generation"
    assert {"difftrain", "image", "class-conditional"} <= set(card["tags"]) and "fid" in card["metrics"]
    [result] = card["model-index"][0]["results"]
    fid = next(m for m in result["metrics"] if m["type"] == "fid")
    assert fid["value"] == record["fid"] and fid["args"]["real_data_floor"] == record["fid_floor"]
    assert "100 samples, heun 4 steps" in fid["name"]


def test_eval_sweeps_steps_and_checkpoints_and_plots(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    result = cli("eval", run, "--n", 50, "--steps", "2,4", "--sampler", "euler", "--checkpoints", "all",
                 "--metrics", "fid,kid,nll", "--nll-images", 8, "--json")
    records = json.loads(result.stdout[result.stdout.index("["):])
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*"))
    assert [(r["checkpoint"].rsplit("/", 1)[-1], r["steps"]) for r in records] == [(c, s) for c in checkpoints for s in (2, 4)]
    assert all(r["network_evaluations"] == r["steps"] and r["nll_bits_per_dim"] > 0 and r["nll_images"] == 8 for r in records)
    assert "precision" not in records[0] and "cas" not in records[0]
    assert (run / "eval" / "metrics-vs-steps.png").is_file()
    # Each evaluation keeps its own samples file; none overwrites another.
    assert len(checkpoints) == 2 and len(list((run / "eval").glob("samples-*-euler-*.npz"))) == 2 * len(checkpoints)
    table = cli("eval", run, "--n", 50, "--steps", 2, "--metrics", "fid").stdout
    assert "FID" in table and "difftrain-small-classifier" in table


def test_eval_scores_any_samples_file(trained_run, digits_dir, tmp_path):
    from difftrain.data import load_dataset
    from difftrain.sampling import write_samples

    from difftrain.evaluation.reference import floor_pool

    ds = load_dataset(digits_dir)
    # Real training images packed as a samples file (as another tool would write them) score at the floor: images the
    # feature classifier never trained on, as the floor's own (its training images have more confident features).
    real = floor_pool(ds)[:400]
    write_samples(tmp_path / "real.npz", ds.modality, ds.train_data[real], ds.train_labels[real], {"name": "real images"})
    result = cli("eval", "--samples", tmp_path / "real.npz", "--data", digits_dir, "--metrics", "fid,pr,mem", "--json")
    [record] = json.loads(result.stdout[result.stdout.index("["):])
    assert record["fid"] == pytest.approx(record["fid_floor"], rel=0.5) and record["memorized_fraction"] == 1.0
    assert record["name"] == "real images" and record["label_agreement"] > 0.9
    assert (tmp_path / "real-memorization.png").is_file()


def test_best_checkpoint_is_kept_by_evaluation_during_training(tmp_path, digits_dir):
    run = tmp_path / "run"
    cli("train", "--out", run, "--no-progress", *tiny_overrides(digits_dir, **{
        "train.duration_steps": 6, "train.checkpoint_every_images": 32, "train.keep_checkpoints": 1,
        "eval.every_images": 32, "eval.during_n": 20, "eval.during_metrics": "[fid, kid]", "eval.best_metric": "kid"}))
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["images"] for e in evals] == [32, 64, 96] and all(e["during_training"] for e in evals)
    best = min(evals, key=lambda e: e["kid"])
    assert [e["best"] for e in evals] == [i == 0 or e["kid"] < min(x["kid"] for x in evals[:i]) for i, e in enumerate(evals)]
    saved = json.loads((run / "checkpoints" / "best" / "best.json").read_text())
    assert saved["images"] == best["images"] and saved["kid"] == best["kid"]
    assert json.loads((run / "checkpoints" / "best" / "info.json").read_text())["images_seen"] == best["images"]
    [record] = json.loads(cli("eval", run, "--checkpoints", "best", "--n", 20, "--metrics", "fid", "--json").stdout)
    assert record["images"] == best["images"]
    # Resuming keeps the best so far: a later checkpoint replaces it only by beating it.
    cli("train", "--out", run, "--resume", "--no-progress", "train.duration_steps=10")
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"during_training"' in l]
    assert [e["images"] for e in evals] == [32, 64, 96, 128, 160]
    best = min(evals, key=lambda e: e["kid"])
    assert json.loads((run / "checkpoints" / "best" / "best.json").read_text())["images"] == best["images"]
    assert [e["best"] for e in evals] == [i == 0 or e["kid"] < min(x["kid"] for x in evals[:i]) for i, e in enumerate(evals)]


@pytest.mark.parametrize("args, message", [
    (["eval", "{run}", "--metrics", "fid,bogus"], "bogus"),
    (["eval", "--samples", "{tmp}/s.npz"], "--data"),
    (["eval", "{run}", "--steps", "5,x"], "5,x"),
    (["eval", "{run}", "--checkpoints", "best"], "eval.every_images"),
    (["eval", "{run}", "--extractor", "inception", "--n", "20"], "eval.inception_weights"),
    (["eval", "{run}", "--extractor", "inception", "--inception-weights", "{tmp}/none.pth", "--n", "20"], "none.pth"),
    (["eval", "{run}", "--extractor", "{tmp}/notscript.pt", "--n", "20"], "TorchScript"),
    (["eval", "--samples", "{tmp}/s.npz", "--data", "{tmp}", "--steps", "5"], "--steps"),
    (["eval", "--samples", "{tmp}/floatlabels.npz", "--data", "{data}"], "labels"),
    (["eval", "--samples", "{tmp}/big.npz", "--data", "{data}"], "(20, 16, 16, 1)"),  # the samples array's shape
])
def test_eval_mistakes_get_a_clear_error(args, message, trained_run, digits_dir, tmp_path):
    (tmp_path / "notscript.pt").write_bytes(b"not a module")
    images = np.zeros((20, 8, 8, 1), np.uint8)
    np.savez(tmp_path / "floatlabels.npz", images=images, labels=np.full(20, 0.5))
    np.savez(tmp_path / "big.npz", images=np.zeros((20, 16, 16, 1), np.uint8))
    result = difftrain(*[a.format(run=trained_run, tmp=tmp_path, data=digits_dir) for a in args])
    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.split())  # the console wraps long lines
    assert message in said and "Traceback" not in result.stderr


def test_eval_metrics_that_need_no_feature_extractor(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    [record] = json.loads(cli("eval", run, "--n", 30, "--steps", 2, "--metrics", "cas,mem", "--json").stdout)
    assert record["cas"] < record["cas_real"] and record["memorized_fraction"] == 0 and "extractor" not in record and "fid" not in record


def test_torchscript_extractor_is_recorded_by_name_and_hash(trained_run, tmp_path):
    import torch

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 2).flatten(1)

    file = tmp_path / "pool.pt"
    torch.jit.save(torch.jit.script(Pool()), str(file))
    result = cli("eval", trained_run, "--n", 40, "--steps", 2, "--metrics", "fid,kid", "--extractor", file, "--json")
    [record] = json.loads(result.stdout[result.stdout.index("["):])
    from difftrain.hashing import sha256_file

    assert record["extractor"] == "torchscript:pool.pt" and record["extractor_sha256"] == sha256_file(file)
    assert record["fid"] > 0
    # The same network as a torch.export program (TorchScript's successor) gives the same numbers.
    exported = tmp_path / "pool.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(Pool(), (torch.zeros(4, 1, 8, 8),), dynamic_shapes=({0: batch},)), str(exported))
    result = cli("eval", trained_run, "--n", 40, "--steps", 2, "--metrics", "fid,kid", "--extractor", exported, "--json")
    [again] = json.loads(result.stdout[result.stdout.index("["):])
    assert again["extractor"] == "exported:pool.pt2" and again["fid"] == pytest.approx(record["fid"])


def test_resume_from_cli_extends_the_run(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    cli("train", "--out", run, "--resume", "--no-progress", "train.duration_steps=9")
    info = json.loads(sorted((run / "checkpoints").glob("ckpt-*"))[-1].joinpath("info.json").read_text())
    assert info["step"] == 9


def test_sample_from_a_chosen_checkpoint_and_raw_weights(trained_run, tmp_path):
    ckpt = sorted((trained_run / "checkpoints").glob("ckpt-*"))[-1]
    cli("sample", trained_run, "--n", 10, "--out", tmp_path / "ema.npz", "--steps", 3, "--checkpoint", ckpt)
    cli("sample", trained_run, "--n", 10, "--out", tmp_path / "raw.npz", "--steps", 3, "--raw-weights")
    ema, raw = np.load(tmp_path / "ema.npz"), np.load(tmp_path / "raw.npz")
    assert json.loads(str(ema["meta"]))["weights"] == "ema" and json.loads(str(raw["meta"]))["weights"] == "model"
    assert json.loads(str(ema["meta"]))["checkpoint"] == str(ckpt.resolve())
    assert not np.array_equal(ema["images"], raw["images"])


def test_unlabelled_images_train_an_unconditional_model(tmp_path, digits_dir):
    from PIL import Image

    from difftrain.data import load_dataset

    folder = tmp_path / "flat"
    folder.mkdir()
    for i, img in enumerate(load_dataset(digits_dir).train_data[:40]):
        Image.fromarray(img[..., 0]).save(folder / f"{i}.png")
    cli("data", "prepare", folder, "--out", tmp_path / "prepared")
    overrides = tiny_overrides(tmp_path / "prepared", **{"train.duration_steps": 2})
    cli("train", "--out", tmp_path / "run", "--no-progress", *overrides)
    cli("sample", tmp_path / "run", "--n", 8, "--out", tmp_path / "s.npz", "--steps", 2)
    with np.load(tmp_path / "s.npz") as f:
        assert "labels" not in f.files and f["images"].shape == (8, 8, 8, 1)
    result = difftrain("sample", tmp_path / "run", "--n", 8, "--out", tmp_path / "g.npz", "--guidance", 2)
    assert result.returncode == 2 and "unconditional" in result.stderr
    # Unlabelled data has no domain classifier: evaluation during training says so before training starts.
    result = difftrain("train", "--out", tmp_path / "run2", "--no-progress", *overrides, "eval.every_images=16")
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "has no labels" in message and "eval.every_images=0" in message and "Warning" not in message
    assert not list((tmp_path / "run2").glob("checkpoints/ckpt-*"))


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "digits", "train.batch_sise=3"], "train.batch_sise"),
    (["train", "--preset", "mnist"], "--data"),
    (["sample", "/no/such/run", "--out", "x.npz"], "/no/such/run"),
    (["data", "prepare", "/no/such/folder", "--out", "x"], "/no/such/folder"),
    (["data", "info", "/no/such/dataset"], "difftrain data prepare"),
    (["train", "--preset", "digits", "model.attention_head_dim=48"], "attention_head_dim"),
])
def test_user_mistakes_get_a_clear_error_not_a_traceback(args, message, tmp_path):
    result = subprocess.run([sys.executable, "-c", "from difftrain.cli import main; main()", *args],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_end_to_end(tmp_path, digits_dir):
    # The real `difftrain demo` path with a tiny model and budget: train, sample, evaluate, report.
    overrides = [o for o in tiny_overrides(digits_dir, **{"eval.n_samples": 100}) if not o.startswith(("data.path", "train.duration"))]
    result = cli("demo", "--out", tmp_path / "demo", "--images", 64, *overrides)
    assert result.stdout.strip().endswith(str(tmp_path / "demo"))
    report = (tmp_path / "demo" / "README.md").read_text()
    assert "## Evaluation" in report and "class-conditional" in report
    assert (tmp_path / "demo" / "data" / "manifest.json").is_file()
    assert list((tmp_path / "demo" / "eval").glob("samples-ckpt-*.png"))


def test_config_lists_every_field_with_its_value():
    out = cli("config", "--preset", "digits").stdout
    assert "[false, true]" in out and "train.ema_halflife_images" in out and "5000" in out
