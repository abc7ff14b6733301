"""Property-based tests (hypothesis) of what users hand difftrain: `key=value` overrides, config files, data sources
(image files, IDX, CSV, captions) and samples files. Whatever the bytes, the outcome is a result or one UserError of a
single line (exit code 2 at the command line), never another exception, and the source is never modified."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from difftrain.config import Config, load_config
from difftrain.data import prepare_dataset
from difftrain.errors import UserError
from difftrain.modalities import modality_for
from difftrain.sampling import read_samples

# FUZZ_EXAMPLES=500 for the full run (docs/benchmarks.md); 40 in CI.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 40)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def config_keys(model=Config, prefix="") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys += config_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


KEYS = config_keys()
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def only_user_errors(call):
    """The call's result, or None for a UserError of one line; any other exception fails the test."""
    try:
        return call()
    except UserError as e:
        message = str(e)
        assert message.strip() and "\n" not in message.strip() and "Traceback" not in message
        return None


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@FUZZ
@given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), TEXT), st.one_of(
    TEXT, st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(str), st.sampled_from(
        ["[]", "{}", "[1, 2", "null", "true", "-1", "0", "1e309", "[64, 128]", "{a: 1}", "~", "!!python/object:os.system"]))),
    max_size=4))
def test_overrides_load_or_fail_with_one_clear_error(pairs):
    only_user_errors(lambda: load_config(overrides=[f"{k}={v}" for k, v in pairs]))


@FUZZ
@given(st.one_of(st.binary(max_size=300), TEXT.map(str.encode), st.sampled_from([
    b"train:\n  batch_size: -3\n", b"model: [1, 2]\n", b"!!python/object/apply:os.system ['true']\n", b"a: b: c\n",
    b"train: {duration_images: 1e99}\n", b"\xff\xfe\x00", b"- 1\n- 2\n", b"optim:\n  lr: .nan\n"])))
def test_config_files_load_or_fail_with_one_clear_error(tmp_path, text):
    file = tmp_path / "config.yaml"
    file.write_bytes(text)
    only_user_errors(lambda: load_config(file=file))


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=200), st.builds(lambda v, cut: png(v)[:cut], st.integers(0, 255),
                                                             st.integers(0, 120))), min_size=1, max_size=3),
       st.sampled_from([".png", ".jpg", ".bmp", ".webp", ".txt"]), st.booleans())
def test_image_folders_of_random_bytes_prepare_or_fail_clearly(tmp_path_factory, blobs, suffix, strict):
    root = tmp_path_factory.mktemp("src")
    for c in ("a", "b"):
        for i in range(2):
            (root / c).mkdir(exist_ok=True)
            (root / c / f"good{i}.png").write_bytes(png(40 * i + (100 if c == "b" else 0)))
    for i, blob in enumerate(blobs):
        (root / "a" / f"fuzz{i}{suffix}").write_bytes(blob)
    before = snapshot(root)
    out = tmp_path_factory.mktemp("out") / "prepared"
    ds = only_user_errors(lambda: prepare_dataset(root, out, test_fraction=0.0, strict=strict, progress=False))
    if ds is not None:
        assert len(ds.train_data) >= 4 and len(ds.train_data) + len(ds.manifest["rejected"]) == 4 + len(blobs)
    assert snapshot(root) == before


@FUZZ
@given(st.binary(max_size=400), st.booleans())
def test_idx_files_of_random_bytes_prepare_or_fail_clearly(tmp_path_factory, blob, magic):
    root = tmp_path_factory.mktemp("idx")
    if magic:  # a valid header for 28x28 unsigned bytes, then a count and data that may not agree with it
        blob = bytes([0, 0, 8, 3]) + blob
    (root / "train-images-idx3-ubyte").write_bytes(blob)
    before = snapshot(root)
    only_user_errors(lambda: prepare_dataset(root / "train-images-idx3-ubyte", tmp_path_factory.mktemp("o") / "p",
                                             test_fraction=0.0, progress=False))
    assert snapshot(root) == before


CSV_TEXT = st.lists(st.lists(st.one_of(TEXT.filter(lambda t: "," not in t and "\n" not in t and "\r" not in t),
                                       st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers().map(str)),
                             min_size=1, max_size=4), min_size=0, max_size=12).map(
    lambda rows: "\n".join(",".join(r) for r in rows))


@FUZZ
@given(st.one_of(CSV_TEXT.map(str.encode), st.binary(max_size=300)), st.sampled_from(["points", "tabular", "timeseries"]))
def test_csv_files_prepare_or_fail_clearly(tmp_path_factory, blob, kind):
    root = tmp_path_factory.mktemp("csv")
    (root / "data.csv").write_bytes(blob)
    before = snapshot(root)
    only_user_errors(lambda: prepare_dataset(root / "data.csv", tmp_path_factory.mktemp("o") / "p", kind=kind,
                                             progress=False))
    assert snapshot(root) == before


@FUZZ
@given(st.lists(st.one_of(TEXT, st.dictionaries(st.sampled_from(["file_name", "text", "x"]),
                                                st.one_of(TEXT, st.integers(), st.none()), max_size=3).map(json.dumps)),
                max_size=5))
def test_caption_files_prepare_or_fail_clearly(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("cap")
    for i in range(3):
        (root / f"{i}.png").write_bytes(png(80 * i))
    (root / "metadata.jsonl").write_text("\n".join(lines))
    before = snapshot(root)
    only_user_errors(lambda: prepare_dataset(root, tmp_path_factory.mktemp("o") / "p", captions=root / "metadata.jsonl",
                                             test_fraction=0.0, progress=False))
    assert snapshot(root) == before


def npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


ARRAYS = st.one_of(
    st.builds(lambda shape, dtype: np.zeros(shape, dtype), st.lists(st.integers(0, 9), max_size=5).map(tuple),
              st.sampled_from([np.uint8, np.float32, np.int64, np.bool_])),
    st.just(np.array("not json")), st.just(np.array(json.dumps([1, 2]))), st.just(np.array(json.dumps({"kind": 3}))))


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.dictionaries(st.sampled_from(["images", "labels", "meta", "x"]), ARRAYS,
                                                          max_size=3).map(npz)),
       st.booleans())
def test_samples_files_read_or_fail_clearly(tmp_path, blob, truncate):
    if truncate and len(blob) > 10:
        blob = blob[: len(blob) // 2]
    file = tmp_path / "samples.npz"
    file.write_bytes(blob)
    image = modality_for({"kind": "image", "shape": [8, 8, 1]})
    result = only_user_errors(lambda: read_samples(file, image))
    if result is not None:
        samples, labels, meta = result
        assert samples.shape[1:] == (8, 8, 1) and isinstance(meta, dict)


def test_a_zip_that_is_not_an_npz_is_one_clear_error(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("images.npy", b"\x93NUMPY garbage")
    (tmp_path / "s.npz").write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="samples file"):
        read_samples(tmp_path / "s.npz", modality_for({"kind": "image", "shape": [8, 8, 1]}))


def test_a_number_given_for_a_text_setting_is_that_text():
    """Found by the fuzzing above: YAML reads data.path=2024 as a number, which is a folder name here."""
    assert load_config(overrides=["data.path=2024"]).data.path == "2024"
    with pytest.raises(UserError, match=r"'train\.batch size' is not a setting's name"):
        load_config(overrides=["train.batch size=3"])


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=200), st.builds(lambda v, cut: png(v)[:cut], st.integers(0, 255),
                                                             st.integers(0, 120))), min_size=1, max_size=3))
def test_mask_pairs_of_random_bytes_prepare_or_fail_clearly(tmp_path_factory, masks):
    root = tmp_path_factory.mktemp("pairs")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(2):
        (root / "images" / f"good{i}.png").write_bytes(png(100 * i))
        (root / "masks" / f"good{i}.png").write_bytes(png(i))
    for i, blob in enumerate(masks):
        (root / "images" / f"fuzz{i}.png").write_bytes(png(50))
        (root / "masks" / f"fuzz{i}.png").write_bytes(blob)
    before = snapshot(root)
    ds = only_user_errors(lambda: prepare_dataset(root, tmp_path_factory.mktemp("o") / "p", test_fraction=0.0,
                                                  progress=False))
    if ds is not None:
        assert len(ds.train_data) + len(ds.manifest["rejected"]) == 2 + len(masks)
    assert snapshot(root) == before


def test_huge_declared_sizes_and_absurd_counts_are_one_clear_error(tmp_path, digits_dir):
    """An IDX header declaring 2**31 images, and requests for 10**12 samples: refused at once, nothing allocated."""
    from difftrain.evaluation.run_eval import sample_run
    from difftrain.synth.generate import synthesize
    from tests.test_synth import train_tiny

    header = bytes([0, 0, 8, 3]) + (2**31 - 1).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + bytes(784 * 3))
    with pytest.raises(UserError):
        prepare_dataset(tmp_path / "train-images-idx3-ubyte", tmp_path / "idx", progress=False)
    run = train_tiny(tmp_path / "run", digits_dir)
    spec = __import__("difftrain.sampling", fromlist=["SamplingSpec"]).SamplingSpec("euler", 2)
    with pytest.raises(UserError, match=r"--n 1,000,000,000,000: the samples alone take .* GiB, more than half"):
        sample_run(run, 10**12, spec, tmp_path / "s.npz")
    with pytest.raises(UserError, match=r"--per-class .* more than half this machine's memory"):
        synthesize(run, tmp_path / "synth", per_class=10**11, spec=spec, report=False)
    assert not (tmp_path / "synth").exists() and not (tmp_path / "s.npz").exists()
