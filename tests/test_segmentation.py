"""The segmentation modality: image + mask folders prepared aligned, the joint view, training and sampling pairs."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difftrain.data import describe_dataset, load_dataset, prepare_dataset
from difftrain.data.builtin import load_builtin
from difftrain.data.digit_masks import DIGIT_MASK_CLASSES, masks_from_labels
from difftrain.data.images import BadImage
from difftrain.data.masks import decode_mask
from difftrain.data.segmentation_folder import write_segmentation_folder
from difftrain.errors import UserError
from difftrain.modalities import segmentation
from tests.conftest import SHARED_MNIST, tiny_overrides

PER_DIGIT = 6  # 60 clean pairs: enough for a split, small enough to stay fast


def prepare(source, out, **options):
    return prepare_dataset(source, out, progress=False, **options)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def digit_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PER_DIGIT sklearn digits of each class, their labels and stroke masks (class = digit + 1)."""
    digits = load_builtin("digits")
    picked = np.concatenate([np.flatnonzero(digits.labels == d)[:PER_DIGIT] for d in range(10)])
    images, labels = digits.images[picked], digits.labels[picked]
    return images, labels, masks_from_labels(images, labels)


PLANTED = {  # path -> a fragment of the reason it is rejected for
    "images/lonely.png": "image without a mask",
    "masks/orphan.png": "mask without an image",
    "masks/big.png": "mask is 10x10 but its image images/big.png is 8x8",
    "masks/colour.png": "save masks as single-channel class-index PNGs",
    "masks/index.png": "class index 20, but mask_classes.txt names only 11 classes",
    "masks/empty.png": "empty file",
    "images/broken.png": "not a readable image",
}


@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory, digit_pairs) -> Path:
    """The digit pairs as images/ + masks/ + labels.csv + mask_classes.txt, one pair with a JPEG image, and one bad pair
    (or lone file) of each kind in PLANTED."""
    images, labels, masks = digit_pairs
    root = tmp_path_factory.mktemp("sources") / "digit-masks"
    write_segmentation_folder(root, images, masks, labels=labels, class_names=[str(d) for d in range(10)],
                              mask_classes=DIGIT_MASK_CLASSES)
    grey, mask = images[0, ..., 0], masks[0]
    save(images[1, ..., 0], root / "images" / "photo.jpg")  # a JPEG image pairs with a PNG mask
    save(masks[1], root / "masks" / "photo.png")
    save(grey, root / "images" / "lonely.png")
    save(mask, root / "masks" / "orphan.png")
    save(grey, root / "images" / "big.png")
    save(np.zeros((10, 10), np.uint8), root / "masks" / "big.png")
    for name in ("colour", "index", "empty", "broken"):
        save(grey, root / "images" / f"{name}.png")
    save(np.zeros((8, 8, 3), np.uint8), root / "masks" / "colour.png")
    save(np.full((8, 8), 20, np.uint8), root / "masks" / "index.png")
    (root / "masks" / "empty.png").write_bytes(b"")
    save(mask, root / "masks" / "broken.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    with (root / "labels.csv").open("a") as f:
        planted = ["photo.jpg", *(f"{n}.png" for n in ("lonely", "big", "colour", "index", "empty", "broken"))]
        f.writelines(f"{name},{labels[1]}\n" for name in planted)
    return root


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory, seg_folder) -> Path:
    out = tmp_path_factory.mktemp("data") / "digit-masks"
    prepare(seg_folder, out, test_fraction=0.2)
    return out


def test_join_split_are_exact_inverses_and_split_takes_the_argmax():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    masks = rng.integers(0, 4, (5, 6, 7), dtype=np.uint8)
    joint = segmentation.join(images, masks, 4)
    assert joint.shape == (5, 6, 7, 7) and joint.dtype == np.uint8
    assert set(np.unique(joint[..., 3:])) == {0, 255} and (joint[..., 3:].sum(-1) == 255).all()
    back_images, back_masks = segmentation.split(joint, 3)
    assert np.array_equal(back_images, images) and np.array_equal(back_masks, masks)
    # A generated mask is never exactly one-hot: each pixel takes its largest channel.
    noisy = joint.astype(np.int64) + rng.integers(-100, 100, joint.shape) * (joint == 0)
    _, noisy_masks = segmentation.split(np.clip(noisy, 0, 255).astype(np.uint8), 3)
    assert np.array_equal(noisy_masks, masks)
    with pytest.raises(ValueError, match="not below"):
        segmentation.join(images, masks, 3)


def test_colorize_and_preview():
    pal = segmentation.palette(30)
    assert pal[0].tolist() == [0, 0, 0] and len({tuple(c) for c in pal}) == 30
    masks = np.array([[[0, 1], [2, 1]]], np.uint8)
    coloured = segmentation.colorize(masks, 3)
    assert coloured.shape == (1, 2, 2, 3) and np.array_equal(coloured[0, 1, 1], pal[1])
    grey = np.array([[[[10], [20]], [[30], [40]]]], np.uint8)
    shown = segmentation.preview(segmentation.join(grey, masks, 3), 1)
    assert shown.shape == (1, 2, 4, 3)
    assert np.array_equal(shown[0, :, :2, 1], grey[0, ..., 0]) and np.array_equal(shown[..., 2:, :], coloured)


def test_masks_from_labels_marks_the_stroke_with_the_digit():
    images = np.array([[[0, 127], [128, 255]], [[200, 0], [0, 0]]], np.uint8)[..., None]
    masks = masks_from_labels(images, np.array([3, 0]))
    assert masks.dtype == np.uint8 and masks.tolist() == [[[0, 0], [4, 4]], [[1, 0], [0, 0]]]
    with pytest.raises(UserError, match="threshold"):
        masks_from_labels(images, np.array([3, 0]), threshold=0)


def test_decode_mask_modes():
    def png(img: Image.Image) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, "PNG")
        return buffer.getvalue()

    indices = np.array([[0, 1], [2, 3]], np.uint8)
    palette = Image.fromarray(indices).convert("P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])  # colours must not leak into the classes
    assert decode_mask(png(palette)).tolist() == indices.tolist()
    assert decode_mask(png(Image.fromarray(indices.astype(np.uint16)))).tolist() == indices.tolist()  # 16-bit, < 256
    with pytest.raises(BadImage, match="class indices must be 0..255"):
        decode_mask(png(Image.fromarray(np.full((2, 2), 300, np.uint16))))
    with pytest.raises(BadImage, match="single-channel class-index PNGs"):
        decode_mask(png(Image.new("RGBA", (2, 2))))
    buffer = io.BytesIO()
    Image.fromarray(indices).save(buffer, "JPEG")
    with pytest.raises(BadImage, match="unsupported image format JPEG"):
        decode_mask(buffer.getvalue())


def test_prepare_keeps_pairs_aligned_and_rejects_each_bad_pair(seg_folder, seg_dir, digit_pairs):
    before = tree_hashes(seg_folder)
    ds = prepare(seg_folder, seg_dir.parent / "again", test_fraction=0.2)
    assert tree_hashes(seg_folder) == before  # the source is byte-for-byte untouched
    m = ds.manifest
    assert m["kind"] == "segmentation" and m["mask_classes"] == DIGIT_MASK_CLASSES
    assert m["shape"] == [8, 8, 1] and m["count"]["train"] + m["count"]["test"] == 10 * PER_DIGIT + 1
    reasons = {r["path"]: r["reason"] for r in m["rejected"]}
    assert reasons.keys() == PLANTED.keys()
    for path, fragment in PLANTED.items():
        assert fragment in reasons[path], (path, reasons[path])
    assert ds.class_names == [str(d) for d in range(10)] and ds.sample_shape == (8, 8, 1 + 11)
    assert ds.modality.image_channels == 1 and ds.modality.mask_classes == DIGIT_MASK_CLASSES

    # On disk: the images beside uint8 class-index masks of the same size.
    train_masks = np.load(seg_dir / "train_masks.npy")
    train_images = np.load(seg_dir / "train_images.npy")
    assert train_masks.dtype == np.uint8 and train_masks.shape == train_images.shape[:3]
    # Every PNG pair is still exactly its image's stroke marked with its label: the pairs did not shift or swap.
    # (The JPEG pair's image changed in compression, so it is checked only for the class it carries.)
    loaded = load_dataset(seg_dir)
    test_images, test_masks = np.load(seg_dir / "test_images.npy"), np.load(seg_dir / "test_masks.npy")
    for images, labels, masks in ((train_images, loaded.train_labels, train_masks), (test_images, loaded.test_labels, test_masks)):
        expected = masks_from_labels(images, labels)
        exact = [i for i in range(len(images)) if np.array_equal(masks[i], expected[i])]
        assert len(exact) >= len(images) - 1
        assert all(set(np.unique(mask)) <= {0, label + 1} for mask, label in zip(masks, labels))
    fractions = m["mask_pixel_fractions"]["train"]
    assert len(fractions) == 11 and abs(sum(fractions) - 1) < 1e-4 and fractions[0] > 0.5  # mostly background


def test_strict_mode_fails_naming_the_bad_files(seg_folder, tmp_path):
    with pytest.raises(UserError) as err:
        prepare(seg_folder, tmp_path / "out", strict=True)
    assert "7 input(s)" in str(err.value) and "masks/big.png" in str(err.value)
    assert not (tmp_path / "out").exists()


def striped_pairs(root: Path, fit_shape=(24, 40)) -> Path:
    """Three non-square pairs whose image is 60 x the mask's class (vertical stripes of classes 1..3), no class names."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = fit_shape
    for i in range(3):
        mask = (((np.arange(w) // 8 + i) % 3) + 1).astype(np.uint8)[None, :].repeat(h, axis=0)
        save((mask * 60).astype(np.uint8), root / "images" / f"p{i}.png")
        save(mask, root / "masks" / f"p{i}.png")
    return root


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_resize_crop_and_pad_move_image_and_mask_together(tmp_path, fit):
    src = striped_pairs(tmp_path / "stripes")
    ds = prepare(src, tmp_path / "out", resolution=16, fit=fit, test_fraction=0.0)
    assert ds.modality.mask_classes == ["0", "1", "2", "3"]  # no mask_classes.txt: named by index up to the largest
    images, masks = segmentation.split(ds.train_data, ds.modality.image_channels)
    assert images.shape == (3, 16, 16, 1) and masks.shape == (3, 16, 16)
    assert set(np.unique(masks)) <= {0, 1, 2, 3}
    # Where the grey level is clearly one class's (not a stripe edge that Lanczos blurs) the mask holds that class;
    # a mask shifted by one pixel against its image agrees on at most ~86% of these pixels.
    grey = images[..., 0].astype(int)
    level = np.round(grey / 60)
    clear = np.abs(grey - level * 60) <= 15
    assert clear.mean() > 0.8 and (masks[clear] == level[clear]).mean() > 0.95
    if fit == "pad":  # 24x40 scaled to 10x16: three rows of padding above and below are background in both
        assert (masks[:, :3] == 0).all() and (images[:, :3] == 0).all() and (masks[:, 3:13] > 0).all()


def test_bad_side_files_name_the_file_and_the_fix(tmp_path):
    src = striped_pairs(tmp_path / "stripes")
    (src / "labels.csv").write_text("name,class\np0.png,a\n")
    with pytest.raises(UserError, match=r"labels.csv: needs a header with the columns file,label"):
        prepare(src, tmp_path / "out")
    (src / "labels.csv").unlink()
    (src / "mask_classes.txt").write_text("background\nstripe\nstripe\n")
    with pytest.raises(UserError, match=r"mask_classes.txt: a class is named twice"):
        prepare(src, tmp_path / "out")
    with pytest.raises(UserError, match="not an images/ \\+ masks/ folder"):
        write_segmentation_folder(tmp_path, np.zeros((1, 2, 2, 1), np.uint8), np.zeros((1, 2, 2), np.uint8), overwrite=True)


def test_load_checks_masks(seg_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(seg_dir, broken)
    masks = np.load(broken / "train_masks.npy")
    masks[0, 0, 0] = 11
    np.save(broken / "train_masks.npy", masks)
    with pytest.raises(UserError, match="train_masks.npy has class index 11.*11 mask classes"):
        load_dataset(broken)
    np.save(broken / "train_masks.npy", masks[:, :4].astype(np.uint8))
    with pytest.raises(UserError, match=r"train_masks.npy holds uint8 \(\d+, 4, 8\)"):
        load_dataset(broken)
    (broken / "train_masks.npy").unlink()
    with pytest.raises(UserError, match="train_masks.npy is missing"):
        load_dataset(broken)


def test_load_returns_the_joint_view_and_info_shows_the_mask_classes(seg_dir):
    ds = load_dataset(seg_dir)
    assert ds.sample_shape == (8, 8, 12) and ds.train_data.shape[1:] == (8, 8, 12)
    images, masks = segmentation.split(ds.train_data, ds.modality.image_channels)
    assert np.array_equal(images, np.load(seg_dir / "train_images.npy"))
    assert np.array_equal(masks, np.load(seg_dir / "train_masks.npy"))
    info = describe_dataset(ds)
    assert info["kind"] == "segmentation" and info["image_channels"] == 1
    assert [c["name"] for c in info["mask_classes"]] == DIGIT_MASK_CLASSES
    assert info["mask_classes"][0]["train_pixels"] == ds.manifest["mask_pixel_fractions"]["train"][0]


def test_plain_image_datasets_have_no_mask(small_digits_dir):
    ds = load_dataset(small_digits_dir)
    assert ds.modality.kind == "image" and not hasattr(ds.modality, "mask_classes")
    assert ds.modality.shape == ds.sample_shape and ds.sample_shape[2] == 1
    assert "mask_classes" not in describe_dataset(ds)


def test_cli_data_info_shows_the_modality(seg_dir):
    from typer.testing import CliRunner

    from difftrain.cli import app

    result = CliRunner().invoke(app, ["data", "info", str(seg_dir), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["kind"] == "segmentation" and info["mask_classes"][1]["name"] == "0"


def test_a_tiny_segmentation_run_trains_samples_and_draws_pairs(seg_dir, tmp_path):
    from difftrain.config import load_config
    from difftrain.evaluation.run_eval import sample_run
    from difftrain.store.run import open_run
    from difftrain.sampling import read_samples
    from difftrain.training.trainer import train

    run_dir = tmp_path / "run"
    train(load_config(overrides=tiny_overrides(seg_dir)), run_dir, progress=False)
    run = open_run(run_dir)
    assert run.sample_shape == (8, 8, 12) and run.modality.image_channels == 1 and run.modality.mask_classes == DIGIT_MASK_CLASSES
    grids = sorted((run_dir / "samples").glob("grid-*.png"))
    assert grids and Image.open(grids[-1]).mode == "RGB"

    out = tmp_path / "samples.npz"
    sample_run(run_dir, 20, run.sampling_spec(), out)
    joint, labels, _ = read_samples(out, run.modality)
    images, masks = segmentation.split(joint, run.modality.image_channels)
    assert images.shape == (20, 8, 8, 1) and masks.shape == (20, 8, 8) and masks.max() < len(run.modality.mask_classes)
    # The grid shows each sample as image | coloured mask: 2 per class (20 over 10 classes), tiles 8 x 16.
    grid = Image.open(out.with_suffix(".png"))
    columns, rows, pad = 2, 10, 1
    width, height = columns * (16 + pad) + pad, rows * (8 + pad) + pad
    scale = -(-256 // height)
    assert grid.mode == "RGB" and grid.size == (width * scale, height * scale)
    tile = np.asarray(grid)[(pad * scale):(pad + 8) * scale, (pad + 8) * scale:(pad + 16) * scale].reshape(-1, 3)
    assert {tuple(c) for c in tile} <= {tuple(c) for c in segmentation.palette(11)}

    # `difftrain eval` scores the joint pairs; its closest-pairs image shows image | mask of sample and training pair.
    from difftrain.evaluation.run_eval import evaluate_run

    record, = evaluate_run(run_dir, n=20, metrics="fid,mem")
    assert record["memorized_fraction"] == 0 and record["fid"] > record["fid_floor"]  # 4 training steps: far from the data
    pairs = Image.open(record["memorization_png"])
    assert pairs.mode == "RGB"


@pytest.mark.skipif(not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="MNIST IDX files not present")
def test_mnist_masks_benchmark_writes_a_folder_that_prepares(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mnist_masks.py"
    done = subprocess.run([sys.executable, script, SHARED_MNIST, tmp_path / "pairs", "--limit", "30", "--split", "test"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["pairs"] == 30 and sum(record["class_counts"]) == 30 and abs(sum(record["pixel_fractions"]) - 1) < 1e-3
    ds = prepare(tmp_path / "pairs", tmp_path / "data", test_fraction=0.2)
    assert ds.sample_shape == (28, 28, 12) and ds.modality.mask_classes == DIGIT_MASK_CLASSES and not ds.manifest["rejected"]
    images, masks = segmentation.split(ds.train_data, ds.modality.image_channels)
    assert np.array_equal(masks, masks_from_labels(images, ds.train_labels))


def test_a_void_label_without_mask_class_names_is_refused(tmp_path):
    from difftrain.data.segmentation_folder import write_segmentation_folder

    images = np.zeros((4, 8, 8, 1), np.uint8)
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[:, :2] = 255  # VOC-style "void" border
    masks[:, 4] = 1
    write_segmentation_folder(tmp_path / "pairs", images, masks)
    with pytest.raises(UserError, match="index 255 but 253 of the indices below it never occur.*mask_classes.txt"):
        prepare_dataset(tmp_path / "pairs", tmp_path / "data", progress=False)
