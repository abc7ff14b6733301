"""`difftrain synth`: the files a user gets, their manifest, the filters, resume, processes, and the clear errors."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from difftrain.cli import app
from difftrain.data import load_dataset, prepare_dataset
from difftrain.errors import UserError
from difftrain.modalities import modality_for
from difftrain.modalities.base import Classifier
from difftrain.sampling import SamplingSpec
from difftrain.synth import generate as synth_generate
from difftrain.synth.filters import Judge, parse_filters
from difftrain.synth.generate import synthesize
from difftrain.synth.plan import round_sizes, round_slots
from tests.conftest import tiny_overrides

FAST = SamplingSpec(sampler="euler", steps=2)  # the tests check files, not image quality


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def train_tiny(run: Path, data: Path, **extra) -> Path:
    from difftrain.config import load_config
    from difftrain.training.trainer import train

    train(load_config(overrides=tiny_overrides(data, **{"sample.batch_size": 8, **extra})), run, progress=False)
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_dir) -> Path:
    """A tiny class-conditional digits run (4 training steps): its samples are blobs, but reproducible ones."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "cond", digits_dir)


def synth(run: Path, out: Path, **options) -> dict:
    return synthesize(run, out, **{"spec": FAST, "report": False, **options})


# The pieces: the plan and the filters, on numbers and planted arrays. ------------------------------------

def test_each_round_draws_the_shortfall_over_the_share_kept_so_far():
    assert round_sizes([3, 3], [0, 0], [0, 0]) == [3, 3]  # nothing drawn yet: exactly the request
    assert round_sizes([3, 3], [1, 3], [3, 3]) == [4, 0]  # 2 missing, 2 of 4 kept (Laplace): 2 * 4 / 2
    assert round_sizes([2], [0], [39]) == [1]  # the cap: 20x the request
    assert round_sizes([2], [0], [40]) == [0]
    assert round_slots([2, 1, 3]) == [0, 1, 2, 0, 2, 2]  # round-robin: every batch mixes the classes


def test_filter_strings_parse_into_specs_in_judging_order():
    specs = parse_filters("confidence:0.8, dedup ,memorization:1/4", 0.02 * math.sqrt(8 * 8 * 1))
    # dedup's default: an RMS difference of 0.02 per value, 0.02 * sqrt(8 * 8 * 1).
    assert [s.describe() for s in specs] == [{"name": "memorization", "ratio": 0.25}, {"name": "dedup", "distance": 0.16},
                                             {"name": "confidence", "threshold": 0.8}]
    assert parse_filters("memorization,confidence", 0.02 * math.sqrt(28 * 28 * 1))[0].value == round(1 / 3, 6)
    rgb = modality_for({"kind": "image", "shape": [28, 28, 3]})
    assert parse_filters("dedup", rgb.dedup_distance())[0].value == pytest.approx(0.02 * math.sqrt(28 * 28 * 3), abs=1e-6)
    assert parse_filters(None, 0.02 * math.sqrt(8 * 8 * 1)) == [] == parse_filters("", 0.02 * math.sqrt(8 * 8 * 1))
    for text, message in [("blur", "unknown filter 'blur'"), ("confidence:2", "must be in (0, 1]"), ("dedup:-1", "must be >= 0"),
                          ("memorization:abc", "not a number"), ("dedup,dedup:3", "given twice"), ("memorization:0", "(0, 1]")]:
        with pytest.raises(UserError, match=re.escape(message)):
            parse_filters(text, 0.02 * math.sqrt(8 * 8 * 1))


class MeanLogit(torch.nn.Module):
    """A stand-in classifier: logits (4 * mean pixel, 0), so p(class 0) = sigmoid(4 * mean) in closed form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([4 * mean, torch.zeros_like(mean)], 1)


class MeanLogitClassifier(Classifier):
    """MeanLogit behind the Classifier protocol: softmax of its logits, images read as the image classifier reads them."""

    def probabilities(self, data: np.ndarray) -> np.ndarray:
        from difftrain.modalities.image import to_model

        with torch.no_grad():
            return torch.softmax(MeanLogit()(to_model(torch.from_numpy(data))), 1).numpy()


DIGIT_IMAGES = modality_for({"kind": "image", "shape": [8, 8, 1]})


def test_filters_remove_planted_copies_duplicates_and_unsure_samples():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
    a, b, c = (rng.integers(0, 256, size=(8, 8, 1), dtype=np.uint8) for _ in range(3))
    near_copy = train[4].copy()
    near_copy[0, 0, 0] ^= 8  # 8 grey levels off one training image: far closer than to any other
    near_a = a.copy()
    near_a[3, 3, 0] = near_a[3, 3, 0] + 1 if near_a[3, 3, 0] < 255 else 254  # 1/255 from a: a near duplicate
    batch = np.stack([train[3], near_copy, a, a, near_a, b, c])
    kept_before = b[None]  # b was kept in an earlier batch
    judge = Judge(parse_filters("memorization,dedup", 0.02 * math.sqrt(8 * 8 * 1)), DIGIT_IMAGES, train_images=train)
    room = [10]
    verdicts = judge.judge(batch, [0] * 7, room, kept_before)
    assert [v.removed_by for v in verdicts] == ["memorization", "memorization", None, "dedup", "dedup", "dedup", None]
    assert room == [8]  # a and c kept
    assert verdicts[0].scores["training_distance"] == 0
    assert verdicts[1].scores["training_distance"] == pytest.approx(8 / 255, abs=1e-6)
    assert verdicts[3].scores["kept_distance"] == 0 and verdicts[4].scores["kept_distance"] == pytest.approx(1 / 255, abs=1e-6)
    assert verdicts[2].scores["training_ratio"] > 0.5 and verdicts[0].scores["training_ratio"] == 0
    # The first filter that rejects a sample is the one counted: a copy of a training image repeated is a copy.
    again = judge.judge(np.stack([train[3], train[3]]), [0, 0], [10], kept_before)
    assert [v.removed_by for v in again] == ["memorization", "memorization"]

    # Confidence: p(class 0) = sigmoid(4 * mean) in [-1, 1] units; white images pass 0.5, black ones do not.
    white, black = np.full((8, 8, 1), 255, np.uint8), np.zeros((8, 8, 1), np.uint8)
    judge = Judge(parse_filters("confidence:0.5", 0.02 * math.sqrt(8 * 8 * 1)), DIGIT_IMAGES, classifier=MeanLogitClassifier(),
                  classifier_labels=[0, 1])
    room = [2, 5]
    verdicts = judge.judge(np.stack([white, black, white, white, black]), [0, 0, 0, 0, 1], room, black[:0])
    assert [v.removed_by for v in verdicts] == [None, "confidence", None, "surplus", None]  # class 0 had room for two
    assert verdicts[0].scores["confidence"] == pytest.approx(1 / (1 + math.exp(-4)), abs=1e-6)
    assert verdicts[1].scores["confidence"] == pytest.approx(1 / (1 + math.exp(4)), abs=1e-6)
    assert verdicts[4].scores["confidence"] == pytest.approx(1 / (1 + math.exp(-4)), abs=1e-6)  # class 1's probability of black
    assert room == [0, 4]


# A whole synthetic dataset. ------------------------------------------------------------------------------

def test_the_dataset_its_manifest_and_card_describe_each_other(run_dir, digits_dir, tmp_path):
    before = tree(run_dir)
    out = tmp_path / "synth"
    # The tiny run's samples are noise, which the confidence judge gives 4e-6 to 1e-3 for the asked digit (it is right):
    # a threshold below that keeps all nine, with every filter still scoring each sample.
    m = synth(run_dir, out, per_class=3, classes=["1", "7", "4"], filters="memorization,dedup,confidence:1e-7", batch_size=4)
    assert tree(run_dir) == before  # the run is read, never written

    written = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert written == {f["file"] for f in m["files"]} and len(m["files"]) == 9
    for f in m["files"]:
        img = Image.open(out / f["file"])
        assert img.mode == "L" and img.size == (8, 8) and f["file"].startswith(f"{f['class']}/")
        assert f["label"] == int(f["class"])
        assert set(f["scores"]) == {"training_distance", "training_ratio", "kept_distance", "confidence"}
    with open(out / "labels.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"file": f["file"], "label": str(f["label"]), "class": f["class"]} for f in m["files"]]
    assert m == manifest_of(out) and m["kind"] == "difftrain-synthetic-dataset" and m["task"] == "classification"
    assert m["checkpoint"].endswith("ckpt-000000064") and m["images_seen"] == 64 and m["weights"] == "ema"
    ckpt_info = json.loads((run_dir / "checkpoints" / "ckpt-000000064" / "info.json").read_text())
    assert m["weights_sha256"] == ckpt_info["sha256"]["ema.safetensors"]
    assert (m["sampler"], m["steps"], m["guidance"], m["seed"], m["network_evaluations"]) == ("euler", 2, 1.0, 0, 2)
    assert [c["kept"] for c in m["counts"]] == [3, 3, 3] and m["totals"]["shortfall"] == {"1": 0, "7": 0, "4": 0}
    t = m["totals"]
    assert t["generated"] == t["kept"] + sum(t["removed"].values()) + t["surplus"] == sum(c["generated"] for c in m["counts"])
    assert len(m["rejected"]) == sum(t["removed"].values())
    assert [f["removed"] for f in m["filters"]] == [t["removed"][name] for name in ("memorization", "dedup", "confidence")]
    assert m["filters"][2]["classifier"].startswith("difftrain-resnet-judge")  # the confidence judge, not the feature classifier
    card = (out / "README.md").read_text()
    assert "ckpt-000000064" in card and m["weights_sha256"] in card and "difftrain data prepare" in card
    assert "| 7 | 7 | 3 | 3 | 0 |" in card  # class, label, requested, kept, shortfall

    # It is an ImageFolder: `data prepare` reads back exactly the kept images, by class.
    ds = prepare_dataset(out, tmp_path / "prepared", test_fraction=0.0, progress=False)
    assert ds.class_names == ["1", "4", "7"] and len(ds.train_data) == 9
    by_file = sorted((f["class"], np.asarray(Image.open(out / f["file"])).tobytes()) for f in m["files"])
    assert sorted((ds.class_names[y], x[..., 0].tobytes()) for x, y in zip(ds.train_data, ds.train_labels)) == by_file


def test_planted_copies_and_duplicates_are_removed_and_replaced(run_dir, digits_dir, tmp_path, monkeypatch):
    train_images = load_dataset(digits_dir).train_data
    real_generate = synth_generate.generate

    def planted(*args, first_batch: int, **kwargs):
        samples = real_generate(*args, first_batch=first_batch, **kwargs)
        if first_batch == 0:  # batch 0: sample 1 copies a training image, 2 and 3 repeat sample 0 (3 one grey level off)
            samples[1] = train_images[7]
            samples[2] = samples[3] = samples[0]
            samples[3, 0, 0, 0] = samples[0, 0, 0, 0] ^ 1
        return samples

    monkeypatch.setattr(synth_generate, "generate", planted)
    m = synth(run_dir, tmp_path / "out", per_class=2, classes=["0", "1"], filters="memorization,dedup", batch_size=4)
    rejected = {(r["batch"], r["index"]): r for r in m["rejected"]}
    assert rejected[0, 1]["filter"] == "memorization" and rejected[0, 1]["score"] == 0
    assert rejected[0, 2]["filter"] == "dedup" and rejected[0, 2]["score"] == 0
    assert rejected[0, 3]["filter"] == "dedup" and rejected[0, 3]["score"] == pytest.approx(1 / 255, abs=1e-6)
    assert (0, 0) in {(f["batch"], f["index"]) for f in m["files"]}
    # The three were drawn again in a later round: every class is full.
    assert [c["kept"] for c in m["counts"]] == [2, 2] and max(f["batch"] for f in m["files"]) >= 1


def test_an_interrupted_run_resumes_to_the_same_files(run_dir, tmp_path):
    options = dict(per_class=3, classes=["2", "5", "8"], filters="memorization,dedup:0.6", batch_size=4)
    whole = synth(run_dir, tmp_path / "whole", **options)
    assert len({f["batch"] for f in whole["files"]} | {r["batch"] for r in whole["rejected"]}) > 3  # more than one round

    class Stop(Exception):
        pass

    calls = []

    def stop_after_two_batches(kept: int, requested: int) -> None:
        calls.append(kept)
        if len(calls) == 3:  # the start, then two batches
            raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        synth(run_dir, out, progress=stop_after_two_batches, **options)
    assert sorted(p.name for p in (out / ".synth" / "batches").iterdir()) == ["000000.json", "000001.json"]
    assert not (out / "manifest.json").exists()
    with pytest.raises(UserError, match=r"--seed was 0, now 1.*same command.*--overwrite.*another --out"):
        synth(run_dir, out, **{**options, "spec": SamplingSpec(sampler="euler", steps=2, seed=1)})
    resumed = synth(run_dir, out, **options)
    assert tree(out, skip=("manifest.json",)) == tree(tmp_path / "whole", skip=("manifest.json",))
    assert {**resumed, "created": None} == {**whole, "created": None}
    # Once complete, the same command draws nothing more, and a PNG no entry names (an interrupted batch that was
    # drawn again and judged otherwise) goes: the manifest describes every file. --overwrite starts again.
    (out / "2" / "2-000099.png").write_bytes((out / "2" / "2-000000.png").read_bytes())
    warnings = []
    assert synth(run_dir, out, warn=warnings.append, **options)["files"] == whole["files"]
    assert not (out / "2" / "2-000099.png").exists() and any("removed 1 file" in w for w in warnings)
    other = synth(run_dir, out, per_class=1, classes=["2"], overwrite=True)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["2/2-000000.png"] == [f["file"] for f in other["files"]]


def test_the_report_scores_the_kept_samples_under_the_real_labels(run_dir, tmp_path):
    out = tmp_path / "out"
    m = synthesize(run_dir, out, per_class=4, classes=["7", "1"], spec=FAST, report_options={"steps": 5, "repeats": 1})
    report = json.loads((out / "report.json").read_text())
    assert m["report"] == report["files"] and (out / "dcr.png").is_file() and (out / "closest-pairs.png").is_file()
    assert report["utility"]["counts"]["synthetic"] == 8 == report["privacy"]["synthetic_items"]
    assert report["utility"]["steps"] == 5 and report["utility"]["synthetic_helps"] is None  # one seed: no verdict
    card = (out / "README.md").read_text()
    assert "## Utility and privacy" in card and "has no verdict" in card
    # The model's classes are the dataset's here: the report's labels are the files' labels.
    assert sorted({f["label"] for f in m["files"]}) == [1, 7]


def test_a_class_the_filters_keep_rejecting_is_given_up_at_20x_its_request(run_dir, tmp_path):
    warnings = []
    m = synthesize(run_dir, tmp_path / "out", per_class=2, classes=["0"], spec=FAST, filters="dedup:100", batch_size=8,
                   report=False, warn=warnings.append)  # every sample after the first is a "duplicate"
    assert m["counts"] == [{"class": "0", "label": 0, "requested": 2, "generated": 40, "kept": 1, "shortfall": 1}]
    assert m["totals"]["removed"] == {"dedup": 39} and m["totals"]["shortfall"] == {"0": 1} and len(m["rejected"]) == 39
    assert any("class 0: kept 1 of 2 after 40 samples" in w for w in warnings)
    assert "| 0 | 0 | 2 | 1 | 1 |" in (tmp_path / "out" / "README.md").read_text()


def test_an_out_folder_that_is_not_a_synthetic_dataset_is_never_touched(run_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not a folder written by `difftrain synth`"):
            synth(run_dir, mine, per_class=1, overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        synth(run_dir, tmp_path / "file", per_class=1)


def test_requests_that_do_not_fit_the_model_get_a_clear_error(run_dir, digits_dir, tmp_path):
    cases = [(dict(n=5, per_class=1), "--per-class N .* or --n N .*, not both"), (dict(), "give --per-class N"),
             (dict(per_class=1, classes=["3", "cat"]), "cat not among the classes"),
             (dict(per_class=1, classes=["3", "3"]), "twice"),
             (dict(per_class=1, filters="confidence:1.5"), "must be in")]
    for options, message in cases:
        with pytest.raises(UserError, match=message):
            synth(run_dir, tmp_path / "x", **options)
    assert not (tmp_path / "x").exists()


def test_filters_that_need_the_training_data_say_so_when_it_is_gone(tmp_path, small_digits_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_digits_dir, data)
    run = train_tiny(tmp_path / "run", data, **{"train.duration_steps": 1})
    shutil.rmtree(data)
    with pytest.raises(UserError, match=r"--filter memorization needs the run's training data .*gone.*leave --filter memorization out"):
        synth(run, tmp_path / "out", per_class=1, filters="memorization")
    assert not (tmp_path / "out").exists()
    # Without data-hungry filters the dataset is made; the report is skipped with a warning.
    warnings = []
    m = synthesize(run, tmp_path / "out2", per_class=1, classes=["0"], spec=FAST, warn=warnings.append)
    assert len(m["files"]) == 1 and m["report"] is None and any("no report" in w for w in warnings)


def test_an_unconditional_run_fills_images_and_takes_n(tmp_path, digits_dir):
    run = train_tiny(tmp_path / "run", digits_dir, **{"model.conditional": "false", "train.duration_steps": 1})
    with pytest.raises(UserError, match="unconditional.*give --n N.*--per-class"):
        synth(run, tmp_path / "x", per_class=3)
    with pytest.raises(UserError, match="--filter confidence needs a class-conditional model"):
        synth(run, tmp_path / "x", n=3, filters="confidence")
    m = synth(run, tmp_path / "out", n=5, filters="dedup", batch_size=4)
    assert [f["file"] for f in m["files"]] == [f"images/{i:06d}.png" for i in range(5)]
    assert m["classes"] is None and m["totals"]["shortfall"] == {"all": 0}
    assert m["counts"] == [{"class": None, "label": None, "requested": 5, "generated": m["totals"]["generated"], "kept": 5,
                            "shortfall": 0}]
    assert not (tmp_path / "out" / "labels.csv").exists()
    ds = prepare_dataset(tmp_path / "out" / "images", tmp_path / "prepared", test_fraction=0.0, progress=False)
    assert ds.num_classes == 0 and len(ds.train_data) == 5


def test_a_segmentation_run_writes_aligned_images_and_masks(tmp_path):
    from difftrain.data.builtin import load_builtin
    from difftrain.data.digit_masks import DIGIT_MASK_CLASSES, masks_from_labels
    from difftrain.data.segmentation_folder import write_segmentation_folder

    digits = load_builtin("digits")
    images, labels = digits.images[:60], digits.labels[:60]
    write_segmentation_folder(tmp_path / "pairs", images, masks_from_labels(images, labels), labels=labels,
                              class_names=[str(d) for d in range(10)], mask_classes=DIGIT_MASK_CLASSES)
    prepare_dataset(tmp_path / "pairs", tmp_path / "data", test_fraction=0.2, progress=False)
    run = train_tiny(tmp_path / "run", tmp_path / "data", **{"train.duration_steps": 1})
    out = tmp_path / "out"
    m = synth(run, out, per_class=2, classes=["3", "6"], filters="memorization,dedup", batch_size=4)
    assert m["task"] == "segmentation" and m["mask_classes"] == DIGIT_MASK_CLASSES and m["image_shape"] == [8, 8, 1]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in (out / "masks").iterdir())
    for f in m["files"]:
        assert f["mask"] == f["file"].replace("images/", "masks/")
        image, mask = Image.open(out / f["file"]), Image.open(out / f["mask"])
        assert image.mode == mask.mode == "L" and image.size == mask.size == (8, 8)
        assert np.asarray(mask).max() < len(DIGIT_MASK_CLASSES)
    assert (out / "mask_classes.txt").read_text().splitlines() == DIGIT_MASK_CLASSES
    ds = prepare_dataset(out, tmp_path / "again", test_fraction=0.0, progress=False)
    assert ds.modality.mask_classes == DIGIT_MASK_CLASSES and len(ds.train_data) == 4 and ds.class_names == ["3", "6"]


# The command line and processes. -------------------------------------------------------------------------

runner = CliRunner()


def test_the_cli_verb(run_dir, tmp_path):
    result = runner.invoke(app, ["synth", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--per-class" in result.output
    args = ["synth", str(run_dir), "--out", str(tmp_path / "out"), "--per-class", "2", "--classes", "0,9", "--sampler", "euler",
            "--steps", "2", "--filter", "dedup", "--no-report", "--json"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["totals"]["kept"] == 4 and [c["class"] for c in summary["counts"]] == ["0", "9"]
    for bad, message in [(["--n", "3"], "not both"), (["--filter", "blur"], "unknown filter"),
                         (["--guidance", "-1"], "--guidance must be >= 0")]:
        result = runner.invoke(app, [*args[:6], *bad, "--no-report"])  # RUN --out OUT --per-class 2
        assert isinstance(result.exception, UserError) and message in str(result.exception), result.output


def test_a_run_trained_with_unlabelled_images_is_sampled_at_guidance_2_unless_told_otherwise(run_dir, digits_dir,
                                                                                         tmp_path):
    """Such a model follows the asked class weakly at guidance 1 (docs/synth.md), so synth's default for it is 2;
    --guidance, or a guidance in the run's config, is the user's choice and kept."""
    def semi_run(name: str, **sample) -> Path:
        path = shutil.copytree(run_dir, tmp_path / name)
        config = yaml.safe_load((path / "config.yaml").read_text())
        config["data"]["unlabelled"] = str(digits_dir)
        config["sample"].update(sample)
        (path / "config.yaml").write_text(yaml.safe_dump(config))
        return path

    cases = [(run_dir, [], 1.0), (semi_run("semi"), [], 2.0), (tmp_path / "semi", ["--guidance", "1"], 1.0),
             (semi_run("semi-configured", guidance=1.5), [], 1.5)]
    for i, (run, extra, expected) in enumerate(cases):
        out = tmp_path / f"out{i}"
        result = runner.invoke(app, ["synth", str(run), "--out", str(out), "--per-class", "1", "--classes", "3",
                                     "--sampler", "euler", "--steps", "2", "--no-report", *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert manifest_of(out)["guidance"] == expected, (run.name, extra)
        assert (f"at guidance {expected:g}" in result.output) == (expected != 1), result.output


def test_two_processes_write_the_files_of_one(run_dir, tmp_path):
    options = ["--per-class", "3", "--classes", "1,2,3", "--batch-size", "4", "--sampler", "euler", "--steps", "2",
               "--filter", "memorization,dedup:0.6", "--no-report"]
    command = [sys.executable, "-m", "difftrain", "synth", str(run_dir), "--out", str(tmp_path / "two"), *options, "--processes", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process: every batch computed the same way
    try:
        one = synth(run_dir, tmp_path / "one", per_class=3, classes=["1", "2", "3"], batch_size=4, filters="memorization,dedup:0.6")
    finally:
        torch.set_num_threads(threads)
    assert tree(tmp_path / "two", skip=("manifest.json",)) == tree(tmp_path / "one", skip=("manifest.json",))
    assert {**manifest_of(tmp_path / "two"), "created": None} == {**one, "created": None}
    assert "in 2 processes" in " ".join(result.stderr.split())
