"""Data preparation: sources, validation, conversion, the prepared-dataset format."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from difftrain.data import describe_dataset, load_dataset, prepare_dataset
from difftrain.data.images import BadImage, decode_image
from difftrain.errors import UserError

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def prepare(source, out, **options):
    return prepare_dataset(source, out, progress=False, **options)


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".old")]


# --- builtin ---------------------------------------------------------------------------------


def test_digits_prepare_stratified_split(tmp_path):
    ds = prepare("digits", tmp_path / "digits")
    m = ds.manifest
    assert len(ds.train_data) + len(ds.test_data) == 1797
    assert (m["count"]["train"], m["count"]["test"]) == (1617, 180)
    assert ds.sample_shape == (8, 8, 1) and ds.train_data.shape == (1617, 8, 8, 1)
    assert ds.train_data.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert ds.train_data.min() == 0 and ds.train_data.max() == 255
    assert ds.num_classes == 10 and ds.class_names == [str(d) for d in range(10)]
    # Stratified: every class keeps its share of the 10% test split (18 of ~180 each).
    assert m["class_counts"]["test"] == [18] * 10
    assert sum(m["class_counts"]["train"]) == 1617
    assert m["source"] == {"path": "builtin:digits", "kind": "builtin", "sha256": m["source"]["sha256"]}
    assert "scikit-learn" in m["provenance"]


def test_digits_seed_and_limit(tmp_path):
    a = prepare("digits", tmp_path / "a", seed=1, limit=200)
    b = prepare("digits", tmp_path / "b", seed=1, limit=200)
    c = prepare("digits", tmp_path / "c", seed=2, limit=200)
    assert len(a.train_data) + len(a.test_data) == 200
    assert np.array_equal(a.train_data, b.train_data)
    assert not np.array_equal(a.train_data, c.train_data)
    assert a.manifest["class_counts"]["test"] == [2] * 10


def test_digits_resolution_and_channels(tmp_path):
    ds = prepare("digits", tmp_path / "d", resolution=16, channels=3, limit=50)
    assert ds.train_data.shape[1:] == (16, 16, 3)
    assert np.array_equal(ds.train_data[..., 0], ds.train_data[..., 2])


# --- single images -----------------------------------------------------------------------------


def test_decode_modes():
    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], np.uint8)
    assert decode_image(png_bytes(Image.fromarray(rgba, "RGBA"))).tolist() == [
        [[0, 0, 0], [200, 100, 50], [100, 50, 25]]  # composited onto black
    ]
    sixteen = np.array([[0, 257 * 100, 65535]], np.uint16)
    img = Image.fromarray(sixteen)
    assert img.mode == "I;16"
    assert decode_image(png_bytes(img)).tolist() == [[[0], [100], [255]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert decode_image(png_bytes(palette)).tolist() == [[[0, 0, 0], [255, 0, 0]]]
    # Grey content stays one channel even when stored as RGB.
    assert decode_image(png_bytes(Image.new("RGB", (3, 2), (7, 7, 7)))).shape == (2, 3, 1)


def test_decode_refuses_truncated_even_if_pillow_allows_it(monkeypatch):
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(BadImage, match="truncated"):
        decode_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it
    with pytest.raises(BadImage, match="empty"):
        decode_image(b"")
    with pytest.raises(BadImage, match="unsupported image format GIF"):
        decode_image(png_bytes(Image.new("L", (2, 2)), "GIF"))


# --- image folders -----------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes, five pixel modes, five sizes, and four bad files."""
    root = tmp_path / "photos"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 32), np.uint8), "L").save(root / "cats" / "grey.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8), "RGB").save(root / "cats" / "colour.JPG")
    Image.fromarray(rng.integers(0, 255, (50, 30, 4), np.uint8), "RGBA").save(root / "cats" / "alpha.png")
    Image.new("P", (20, 20)).save(root / "dogs" / "palette.bmp")
    Image.fromarray(rng.integers(0, 65535, (36, 36), np.uint16)).save(root / "dogs" / "deep.png")
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), np.uint8)).save(root / "dogs" / "web.webp")
    (root / "dogs" / "empty.png").write_bytes(b"")
    whole = png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)))
    (root / "dogs" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "cats" / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    (root / "cats" / "notes.txt").write_text("a note")
    (root / ".DS_Store").write_bytes(b"\0hidden")
    return root


EXPECTED_REJECTIONS = {
    "cats/garbage.jpg": "not a readable image",
    "cats/notes.txt": "unsupported file type .txt",
    "dogs/cut.png": "truncated",
    "dogs/empty.png": "empty file",
}


def test_folder_needs_resolution_for_mixed_sizes(image_folder, tmp_path):
    with pytest.raises(UserError, match="--resolution"):
        prepare(image_folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_folder_prepare_rejects_bad_files(image_folder, tmp_path):
    before = tree_hashes(image_folder)
    ds = prepare(image_folder, tmp_path / "out", resolution=16, test_fraction=0.0)
    m = ds.manifest
    assert tree_hashes(image_folder) == before  # the source is byte-for-byte untouched
    assert ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
    assert ds.sample_shape == (16, 16, 3)  # colour present, so RGB
    assert m["count"] == {"train": 6, "test": 0}
    assert m["class_counts"]["train"] == [3, 3]
    reasons = {r["path"]: r["reason"] for r in m["rejected"]}
    assert reasons.keys() == EXPECTED_REJECTIONS.keys()
    for path, fragment in EXPECTED_REJECTIONS.items():
        assert fragment in reasons[path], (path, reasons[path])
    assert m["source"]["kind"] == "folder" and m["source"]["path"] == str(image_folder.resolve())
    assert m["provenance"] == f"user-supplied images from {image_folder.resolve()}"
    assert m["options"]["resolution"] == 16 and m["options"]["channels"] is None
    assert 0 < m["channel_stats"]["mean"][0] < 1 and len(m["channel_stats"]["std"]) == 3
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_folder_strict_names_the_bad_files(image_folder, tmp_path):
    with pytest.raises(UserError) as err:
        prepare(image_folder, tmp_path / "out", resolution=16, strict=True)
    for path in EXPECTED_REJECTIONS:
        assert path in str(err.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_all_bad_folder_fails(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    (root / "b.txt").write_text("x")
    with pytest.raises(UserError, match="no usable images.*a.png: empty file"):
        prepare(root, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_crop_and_pad(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    band = np.zeros((20, 60), np.uint8)
    band[:, 20:40] = 255  # a white centre square between black sides
    Image.fromarray(band).save(root / "wide.png")
    crop = prepare(root, tmp_path / "crop", resolution=20, test_fraction=0.0)
    assert crop.train_labels is None and crop.num_classes == 0 and crop.class_names == []
    assert crop.sample_shape == (20, 20, 1)
    assert (crop.train_data[0] == 255).all()  # the centre survives the crop

    pad = prepare(root, tmp_path / "pad", resolution=20, fit="pad", test_fraction=0.0)
    image = pad.train_data[0, ..., 0]
    assert image.shape == (20, 20)
    assert (image[:6] == 0).all() and (image[-6:] == 0).all()  # black bars above and below
    assert image[9:11].max() > 200


def test_grey_folder_gets_one_channel_and_same_size_needs_no_resolution(tmp_path):
    root = tmp_path / "grey"
    root.mkdir()
    for i in range(4):
        Image.new("L", (12, 10), 40 * i).save(root / f"{i}.png")
    ds = prepare(root, tmp_path / "out", test_fraction=0.25)
    assert ds.sample_shape == (10, 12, 1)
    assert (len(ds.train_data), len(ds.test_data)) == (3, 1)
    assert load_dataset(tmp_path / "out").train_labels is None


def test_out_rules(image_folder, tmp_path):
    with pytest.raises(UserError, match="source folder"):
        prepare(image_folder, image_folder / "prepared", resolution=8)
    with pytest.raises(UserError, match="source folder"):
        prepare(image_folder, tmp_path, resolution=8, overwrite=True)  # would replace the source
    out = tmp_path / "out"
    prepare("digits", out, limit=30)
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        prepare("digits", out, limit=30)
    assert len(prepare("digits", out, limit=40, overwrite=True).train_data) == 36
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "thesis.tex").write_text("do not delete")
    with pytest.raises(UserError, match="not a prepared dataset"):
        prepare("digits", keep, overwrite=True)
    assert (keep / "thesis.tex").exists()
    # A manifest.json of someone else's (a web app, another tool) does not make a folder ours.
    (keep / "manifest.json").write_text('{"name": "my web app"}')
    with pytest.raises(UserError, match="not a prepared dataset"):
        prepare("digits", keep, overwrite=True)
    assert (keep / "thesis.tex").exists()
    assert leftovers(tmp_path) == []


def test_no_temp_folder_left_when_writing_fails(tmp_path, monkeypatch):
    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("difftrain.data.prepared_output.write_json", broken_write)
    with pytest.raises(OSError):
        prepare("digits", tmp_path / "out", limit=20)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"resolution": 0}, "resolution"),
        ({"channels": 2}, "channels"),
        ({"fit": "stretch"}, "fit"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"limit": 0}, "limit"),
    ],
)
def test_bad_options(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        prepare("digits", tmp_path / "out", **options)


def test_unknown_source(tmp_path):
    with pytest.raises(UserError, match="not found"):
        prepare(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(UserError, match="unknown builtin dataset 'cifar'"):
        prepare("builtin:cifar", tmp_path / "out")


# --- IDX ---------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def write_idx(folder: Path, prefix: str, n: int, gz: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 5, 4), np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 3
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return images, labels


def test_idx_folder_with_test_split(tmp_path):
    src = tmp_path / "idx"
    src.mkdir()
    train_images, train_labels = write_idx(src, "train", 30, gz=True, seed=0)
    test_images, test_labels = write_idx(src, "t10k", 9, gz=False, seed=1)
    ds = prepare(src, tmp_path / "out")
    assert ds.sample_shape == (5, 4, 1) and ds.class_names == ["0", "1", "2"]
    assert np.array_equal(ds.train_data[..., 0], train_images)
    assert np.array_equal(ds.test_data[..., 0], test_images)  # t10k is the test split, in full
    assert np.array_equal(ds.test_labels, test_labels.astype(np.int64))
    assert ds.manifest["source"]["kind"] == "idx"

    limited = prepare(src, tmp_path / "limited", limit=13)
    assert limited.manifest["count"] == {"train": 10, "test": 3}  # shared in the source's 30:9 proportion


def test_single_idx_file_without_labels(tmp_path):
    src = tmp_path / "one"
    src.mkdir()
    images = np.arange(10 * 6 * 6, dtype=np.uint8).reshape(10, 6, 6)
    (src / "my-images-idx3-ubyte").write_bytes(idx_bytes(images))
    ds = prepare(src / "my-images-idx3-ubyte", tmp_path / "out", test_fraction=0.2)
    assert ds.train_labels is None and ds.num_classes == 0
    assert (len(ds.train_data), len(ds.test_data)) == (8, 2)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda data: b"\x12\x34" + data[2:], "not an IDX file"),
        (lambda data: data[:-7], "truncated"),
        (lambda data: data + b"extra", "longer than its header"),
        (lambda data: data[:2] + b"\x0d" + data[3:], "only 0x08"),
        (lambda data: gzip.compress(data)[:-20], "gzip"),
    ],
)
def test_bad_idx_names_the_file(tmp_path, corrupt, message):
    src = tmp_path / "idx"
    src.mkdir()
    write_idx(src, "train", 4, gz=False, seed=0)
    path = src / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(UserError, match=message) as err:
        prepare(src, tmp_path / "out")
    assert str(path) in str(err.value)


def test_real_mnist(tmp_path):
    if not (MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST IDX files not found at {MNIST} (they live outside the repo)")
    ds = prepare(MNIST, tmp_path / "mnist", limit=2000)
    assert ds.sample_shape == (28, 28, 1) and ds.num_classes == 10
    # t10k is the test split: its share of the limit is 2000 * 10000 / 70000.
    assert ds.manifest["count"] == {"train": 1714, "test": 286}
    assert min(ds.manifest["class_counts"]["test"]) > 0


# --- loading and describing ---------------------------------------------------------------------


def test_load_and_describe(tmp_path):
    prepared = prepare("digits", tmp_path / "d", limit=100)
    ds = load_dataset(tmp_path / "d")
    assert np.array_equal(ds.train_data, prepared.train_data)
    assert np.array_equal(ds.test_labels, prepared.test_labels)
    info = describe_dataset(ds)
    json.dumps(info)
    assert info["shape"] == [8, 8, 1] and info["count"] == {"train": 90, "test": 10}
    assert info["classes"][0] == {"name": "0", "train": 9, "test": 1}
    assert info["source"]["kind"] == "builtin" and info["rejected"] == 0
    assert info["num_classes"] == 10 and "channel_stats" in info and info["created"]


def test_load_missing_or_broken(tmp_path):
    with pytest.raises(UserError, match="difftrain data prepare"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="manifest.json"):
        load_dataset(tmp_path / "empty")

    out = tmp_path / "d"
    prepare("digits", out, limit=50)
    (out / "test_labels.npy").unlink()
    with pytest.raises(UserError, match="test_labels.npy is missing"):
        load_dataset(out)

    prepare("digits", out, limit=50, overwrite=True)
    np.save(out / "train_images.npy", np.zeros((3, 8, 8, 1), np.uint8))
    with pytest.raises(UserError, match="train_images.npy"):
        load_dataset(out)

    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(UserError, match="format_version"):
        load_dataset(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        load_dataset(out)


def test_a_large_image_split_stays_on_disk_and_trains_from_it(tmp_path, digits_dir, monkeypatch):
    """Above MAP_ABOVE_BYTES a split is memory-mapped (bounded memory); training then streams its batches from it."""
    from difftrain.config import load_config
    from difftrain.data.loader import ArrayBatches
    from difftrain.modalities import image
    from difftrain.training.trainer import train
    from tests.conftest import tiny_overrides

    monkeypatch.setattr(image, "MAP_ABOVE_BYTES", 50_000)  # the digits: train split 92 kB, test split 23 kB
    ds = load_dataset(digits_dir)
    assert isinstance(ds.train_data, np.memmap) and not isinstance(ds.test_data, np.memmap)
    streamed = []
    real_init = ArrayBatches.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        streamed.append(self.streamed)

    monkeypatch.setattr(ArrayBatches, "__init__", spy)
    result = train(load_config(overrides=tiny_overrides(digits_dir)), tmp_path / "run", progress=False)
    assert result.images == 64 and streamed == [True]


NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_class_names_name_the_classes_everywhere_after(tmp_path):
    from difftrain.config import load_config
    from difftrain.errors import UserError
    from difftrain.sampling import SamplingSpec
    from difftrain.store.run import open_run
    from difftrain.synth.generate import synthesize
    from difftrain.training.trainer import train
    from tests.conftest import tiny_overrides

    ds = prepare_dataset("digits", tmp_path / "named", class_names=",".join(NAMES), progress=False)
    assert ds.class_names == NAMES and ds.manifest["options"]["class_names"] == NAMES
    (tmp_path / "names.txt").write_text("\n".join(["low", "high"]) + "\n")
    two = prepare_dataset("digits", tmp_path / "two", classes=["0", "1"], class_names=tmp_path / "names.txt", progress=False)
    assert two.class_names == ["low", "high"] and set(two.train_labels.tolist()) == {0, 1}

    run = tmp_path / "run"
    train(load_config(overrides=tiny_overrides(tmp_path / "named")), run, progress=False)
    assert open_run(run).class_names == NAMES
    m = synthesize(run, tmp_path / "synth", per_class=1, classes=["seven"], spec=SamplingSpec("euler", 2), report=False)
    assert [f["file"].split("/")[0] for f in m["files"]] == ["seven"]
    for bad, message in [("a,b", "gives 2 names, but .* has 10 classes"), (",".join(["x"] * 10), "given twice"),
                         (",".join(["../up", *NAMES[1:]]), "cannot name a folder")]:
        with pytest.raises(UserError, match=message):
            prepare_dataset("digits", tmp_path / "bad", class_names=bad, progress=False)
    assert not (tmp_path / "bad").exists()
