"""Prepare an image (or image + mask) dataset: read a source, validate and convert every image, split, write atomically.

Every source (sources.py) becomes a list of samples; one loop reads, checks and converts them
(images.conform_image, and masks.fit_mask for the masks of image + mask pairs), and one function
writes the result.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

import difftrain
from difftrain.progress import track
from difftrain.data.dataset import FORMAT_VERSION, PreparedDataset, load_dataset
from difftrain.data.prepared_output import check_out_folder, pick_stratified, write_prepared
from difftrain.data.image_folder import is_folder_name
from difftrain.data.images import FITS, BadImage, conform_image, to_channels
from difftrain.data.masks import fit_mask
from difftrain.data.row_store import RowStore
from difftrain.data.sources import Sample, Source, open_source
from difftrain.errors import UserError
from difftrain.modalities.captions import CaptionTokens, attach_captions, caption_spec, read_captions

_SHOWN_REJECTIONS = 5  # how many rejected files an error message lists


def _check_options(
    resolution: int | None, channels: int | None, fit: str, limit: int | None, test_fraction: float
) -> None:
    def positive_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    if resolution is not None and not positive_int(resolution):
        raise UserError(f"resolution must be a positive whole number of pixels, got {resolution!r}.")
    if channels not in (None, 1, 3):
        raise UserError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    if fit not in FITS:
        raise UserError(f"fit must be one of {', '.join(FITS)}, got {fit!r}.")
    if limit is not None and not positive_int(limit):
        raise UserError(f"limit must be a positive number of images, got {limit!r}.")
    if not 0 <= test_fraction < 1:
        raise UserError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")


def _strata(samples: list[Sample]) -> np.ndarray:
    # Unlabelled data is one stratum, so stratified picking is plain random picking.
    return np.array([s.label or 0 for s in samples], dtype=np.int64)


def _apply_limit(
    src: Source, limit: int | None, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample] | None]:
    """Cap the samples to read at `limit`, drawn stratified; an own test split gets its proportional share."""
    if limit is None:
        return src.train, src.test

    def subset(samples: list[Sample], k: int) -> list[Sample]:
        return [samples[i] for i in pick_stratified(_strata(samples), k, rng)]

    if src.test is None:
        return subset(src.train, limit), None
    n_test = round(limit * len(src.test) / (len(src.train) + len(src.test)))
    return subset(src.train, limit - n_test), subset(src.test, n_test)


def _keep_classes(src: Source, classes: list[str]) -> Source:
    """`src` with only the named classes, labelled 0..K-1 in the order given (e.g. MNIST digits 5-9)."""
    if src.class_names is None:
        raise UserError(f"--classes: {src.path} has no class labels to choose from")
    unknown = [c for c in classes if c not in src.class_names]
    if unknown or len(set(classes)) != len(classes):
        problem = f"unknown class(es) {', '.join(unknown)}" if unknown else "a class named twice"
        raise UserError(f"--classes: {problem}; {src.path} has: {', '.join(src.class_names)}")
    new_label = {src.class_names.index(name): i for i, name in enumerate(classes)}

    def keep(samples: list[Sample] | None) -> list[Sample] | None:
        if samples is None:
            return None
        return [replace(s, label=new_label[s.label]) for s in samples if s.label in new_label]

    return replace(src, class_names=list(classes), train=keep(src.train), test=keep(src.test))


def _named_classes(src: Source, names: list[str] | str | Path) -> Source:
    """`src` with its classes (label 0 first) named `names`: a list, comma-separated text, or a file of one name per
    line. The names title grids and reports, choose classes in `sample --class` and `synth --classes`, and name the
    folders `synth` writes, so each must be one visible path component."""
    if isinstance(names, (str, Path)) and Path(names).is_file():
        try:
            names = [line.strip() for line in Path(names).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--class-names {names}: unreadable ({e}); give one name per line in UTF-8") from None
    elif isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = list(names)
    if src.class_names is None:
        raise UserError(f"--class-names: {src.path} has no classes to name (it is unlabelled)")
    if len(names) != len(src.class_names):
        raise UserError(f"--class-names gives {len(names)} names, but {src.path} has {len(src.class_names)} classes "
                        f"({', '.join(src.class_names)}): give one name for each, in that order")
    bad = [n for n in names if not is_folder_name(n)]
    if bad or len(set(names)) != len(names):
        problem = f"{bad[0]!r} cannot name a folder" if bad else "a name is given twice"
        raise UserError(f"--class-names: {problem}; each class needs its own name, without / or \\ and not starting "
                        "with '.'")
    return replace(src, class_names=names)


def _read_sample(
    sample: Sample, *, channels: int | None, resolution: int | None, fit: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """One sample's converted pixels, and its mask fitted the same way (None without one); raises BadImage."""
    pixels = sample.read()
    image = conform_image(pixels, channels=channels, resolution=resolution, fit=fit)
    if sample.read_mask is None:
        return image, None
    mask = sample.read_mask()
    if mask.shape != pixels.shape[:2]:
        (h, w), (mh, mw) = pixels.shape[:2], mask.shape
        raise BadImage(f"mask is {mw}x{mh} but its image {sample.name} is {w}x{h}; a mask must match its image "
                       "pixel for pixel", path=sample.mask)
    return image, fit_mask(mask, resolution, fit)


@dataclass
class Read:
    """What reading the samples kept: their indices, their pixels (and masks) in scratch files, the rejections."""

    kept: list[int]
    pixels: RowStore  # (H, W, channels or 3): grey images repeated, until every image is known
    masks: RowStore | None
    rejected: list[dict[str, str]]
    colour: bool  # some image has colour
    mask_values: set[int]  # the mask indices found


def _read(
    samples: list[Sample], scratch: Path, *, channels: int | None, resolution: int | None, fit: str, progress: bool
) -> Read:
    """Read, validate and convert every sample into scratch files (one image in memory at a time)."""
    read = Read([], RowStore(scratch / "pixels"), None, [], False, set())
    first: tuple[int, int] | None = None
    console = Console(stderr=True)  # stdout stays clean for --json output
    for i, sample in enumerate(
        track(samples, description="Reading images", disable=not progress, console=console)
    ):
        try:
            image, mask = _read_sample(sample, channels=channels, resolution=resolution, fit=fit)
        except BadImage as e:
            read.rejected.append({"path": e.path or sample.name, "reason": e.reason})
            continue
        if first is not None and image.shape[:2] != first:
            (h0, w0), (h, w) = first, image.shape[:2]
            raise UserError(
                f"images differ in size ({samples[read.kept[0]].name} is {w0}x{h0}, {sample.name} is {w}x{h}); "
                "set a square size to resize them all to, e.g. --resolution 64."
            )
        first = image.shape[:2]
        read.colour |= image.shape[-1] == 3
        read.kept.append(i)
        read.pixels.append(to_channels(image, channels or 3))
        if mask is not None:
            if read.masks is None:
                read.masks = RowStore(scratch / "masks")
            read.masks.append(mask)
            read.mask_values.update(np.unique(mask).tolist())
    read.pixels.finish()
    if read.masks is not None:
        read.masks.finish()
    return read


def _rejection_list(rejected: list[dict[str, str]]) -> str:
    shown = "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:_SHOWN_REJECTIONS])
    more = len(rejected) - _SHOWN_REJECTIONS
    return shown + (f"; and {more} more" if more > 0 else "")


class ChannelStats:
    """Per-channel mean and std of images scaled to [0, 1], exact, from 256-bin histograms added chunk by chunk."""

    def __init__(self, channels: int):
        self.hist = np.zeros((channels, 256), np.int64)

    def add(self, images: np.ndarray) -> None:
        for c in range(self.hist.shape[0]):
            self.hist[c] += np.bincount(images[..., c].ravel(), minlength=256)

    def summary(self) -> dict[str, list[float]]:
        values = np.arange(256) / 255
        mean, std = [], []
        for counts in self.hist:
            share = counts / max(1, counts.sum())
            m = float(share @ values)
            mean.append(m)
            std.append(float(np.sqrt(share @ (values - m) ** 2)))
        return {"mean": mean, "std": std}


def _test_mask(
    kept: list[int],
    n_train: int,
    labels: np.ndarray | None,
    own_split: bool,
    test_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Which kept images are test images: the source's own split, else a stratified random share."""
    is_test = np.array(kept) >= n_train
    if not own_split:
        strata = labels if labels is not None else np.zeros(len(kept), np.int64)
        # Keep at least one training image, however small the source.
        n_test = min(round(len(kept) * test_fraction), len(kept) - 1)
        is_test[pick_stratified(strata, n_test, rng)] = True
    return is_test


def _manifest(
    src: Source,
    shape: tuple[int, ...],
    counts: dict[str, int],
    labels: dict[str, np.ndarray] | None,
    rejected: list[dict[str, str]],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The manifest but for what the arrays' streaming measures (channel_stats, the mask classes' pixel fractions)."""
    num_classes = len(src.class_names) if src.class_names is not None else None
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "image",  # ImageModality.kind; a segmentation dataset says so once its masks are written
        "shape": list(shape),  # of train_images.npy: for segmentation the image alone, masks beside it
        "dtype": "uint8",
        "count": counts,
        "num_classes": num_classes,
        "class_names": src.class_names,
    }
    if labels is not None:
        manifest["class_counts"] = {split: np.bincount(labels[split], minlength=num_classes).tolist()
                                    for split in ("train", "test")}
    return manifest | {
        "source": {"path": src.path, "kind": src.kind, "sha256": src.digest.hexdigest()},
        "provenance": src.provenance,
        "rejected": rejected,
        "options": options,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "difftrain_version": difftrain.__version__,
    }


def _with_captions(src: Source, captions: str | Path) -> Source:
    """`src` with each image's caption from the JSON-lines file; images without one, and the file's bad lines, are
    rejected (the file itself, when it lies among the images, is no rejected image)."""
    if src.kind not in ("folder", "idx"):
        raise UserError(f"--captions: captions go with a folder of images or IDX files, not {src.path}")
    found = read_captions(captions)
    src.digest.read(found.path, f"captions:{found.path.name}")  # the captions shape the dataset too
    train, test, missing = attach_captions(src.train, src.test, found)
    itself = found.path.relative_to(src.folder).as_posix() if src.folder and found.path.is_relative_to(src.folder) else None
    earlier = [r for r in src.rejected if r["path"] != itself]
    if not train:
        raise UserError(f"--captions {found.path}: no image of {src.path} has a caption there; its file_name values "
                        f"are paths relative to the image folder, such as {src.train[0].name!r}" if src.train else
                        f"--captions: {src.path} has no images")
    return replace(src, train=train, test=test, rejected=earlier + found.rejected + missing)


def prepare_dataset(
    source: str | Path,
    out: str | Path,
    *,
    resolution: int | None = None,  # square side in pixels; None keeps the native size if all images share it
    channels: int | None = None,  # 1 or 3; None: the source's (a folder: 3 if any image has colour)
    fit: str = "crop",  # "crop": fill the square, cut the overflow; "pad": fit inside, pad with black
    limit: int | None = None,  # read at most this many images (stratified random subset)
    classes: list[str] | None = None,  # keep only these classes (by name), relabelled in this order
    class_names: list[str] | str | Path | None = None,  # names for the classes (after `classes`): a list, or a file
    test_fraction: float = 0.1,  # held-out share when the source has no test split of its own
    seed: int = 0,  # drives the limit subset and the split
    strict: bool = False,  # fail if any input is rejected instead of skipping it
    overwrite: bool = False,  # replace an existing prepared dataset at `out`
    progress: bool = True,  # show a progress bar while reading
    expect_kind: str | None = None,  # --kind: refuse a source of the other kind (image vs segmentation)
    captions: str | Path | None = None,  # JSON lines of {"file_name", "text"}: a caption for every image
) -> PreparedDataset:
    """Read `source`, validate and convert every image, split it, and write a prepared dataset to `out`.

    `source` is a builtin name ("digits"; write "./digits" for a folder of that name), a folder of
    IDX files (t10k-* becomes the test split), one IDX images file, or a folder of images (class
    subfolders become labels), or a folder with images/ and masks/ subfolders of image + mask pairs
    (a segmentation dataset; see data/segmentation_folder.py). With its own test split, `limit` is
    shared between train and test in the source's proportion. Bad files are listed in the manifest's
    `rejected`.
    """
    _check_options(resolution, channels, fit, limit, test_fraction)
    src = open_source(source)
    found = "segmentation" if src.kind == "mask-pairs" else "image"
    if expect_kind not in (None, found):
        raise UserError(f"--kind {expect_kind}: {source} holds {found} data"
                        + (" (images/ and masks/ folders)" if found == "segmentation" else " (no images/ and masks/ pair folders)")
                        + f"; pass --kind {found} or leave --kind out")
    if classes:
        src = _keep_classes(src, classes)
    if class_names is not None:
        src = _named_classes(src, class_names)
    out = check_out_folder(Path(out), src.folder, overwrite)
    if captions is not None:
        src = _with_captions(src, captions)
    rng = np.random.default_rng(seed)

    train, test = _apply_limit(src, limit, rng)
    samples = train + (test or [])
    # The pixels wait in a scratch folder beside `out` (named as atomic writes name theirs, so a killed prepare's is
    # removed by the next one): memory holds one image, then one chunk, however large the source.
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        read = _read(samples, scratch, channels=channels, resolution=resolution, fit=fit, progress=progress)
        _write(src, out, samples, read, len(train), test is not None, channels=channels, captions=captions,
               options={"resolution": resolution, "channels": channels, "fit": fit, "limit": limit, "classes": classes,
                        "class_names": None if class_names is None else src.class_names,
                        "test_fraction": test_fraction, "seed": seed},
               rng=rng, strict=strict, overwrite=overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return load_dataset(out)


def _write(src: Source, out: Path, samples: list[Sample], read: Read, n_train: int, own_split: bool, *,
           channels: int | None, captions, options: dict[str, Any], rng: np.random.Generator, strict: bool,
           overwrite: bool) -> None:
    """Split what was read and write the prepared dataset, its large arrays streamed from the scratch files."""
    rejected = src.rejected + read.rejected
    if not read.kept:
        raise UserError(
            f"no usable images in {src.path} ({_rejection_list(rejected) or 'no image files found'})."
        )
    if strict and rejected:
        raise UserError(
            f"{len(rejected)} input(s) in {src.path} rejected in strict mode: {_rejection_list(rejected)}. "
            "Fix or remove them, or prepare without --strict to skip them."
        )
    # With channels=None, grey images join colour ones as RGB (a folder mixing both).
    wanted = channels or (3 if read.colour else 1)
    kept = read.kept
    labels = np.array([samples[i].label for i in kept], np.int64) if src.class_names is not None else None
    is_test = _test_mask(kept, n_train, labels, own_split, options["test_fraction"], rng)
    if is_test.all():
        raise UserError(f"no usable training images in {src.path}; every usable image is in its test split.")

    arrays: dict[str, np.ndarray] = {}
    if labels is not None:
        arrays |= {"train_labels": labels[~is_test], "test_labels": labels[is_test]}
    mask_classes = None
    if read.masks is not None:
        # Without mask_classes.txt, the classes are the indices up to the largest one found.
        mask_classes = src.mask_classes or [str(k) for k in range(max(read.mask_values) + 1)]
        unused = len(mask_classes) - len(read.mask_values)
        if not src.mask_classes and len(mask_classes) > 16 and unused > len(mask_classes) // 2:
            # A "void" or "ignore" label such as 255 would give the model 256 mask channels, most of them never used.
            raise UserError(f"the masks in {src.path} use index {len(mask_classes) - 1} but {unused} of the indices below it "
                            "never occur (a 'void' label such as 255?): give the classes in mask_classes.txt, one name per "
                            "line, and map void pixels to one of them (e.g. 0, background)")
    if samples[kept[0]].caption is not None:
        texts = np.array([samples[i].caption for i in kept], dtype=object)
        spec = caption_spec(list(texts[~is_test]), list(texts))
        rows = CaptionTokens(spec).encode(list(texts))
        arrays |= {"train_captions": rows[~is_test], "test_captions": rows[is_test]}
        options["captions"] = None if captions is None else str(Path(captions).expanduser().resolve())
    counts = {"train": int((~is_test).sum()), "test": int(is_test.sum())}
    manifest = _manifest(src, (*read.pixels.shape[:2], wanted), counts,
                         None if labels is None else {"train": labels[~is_test], "test": labels[is_test]}, rejected, options)
    if "train_captions" in arrays:
        manifest["captions"] = spec

    def streamed(folder: Path) -> None:
        stats = ChannelStats(wanted)
        read.pixels.split({False: folder / "train_images.npy", True: folder / "test_images.npy"}, is_test,
                          convert=lambda x: x[..., :wanted], visit=lambda rows, test: stats.add(rows[~test]))
        manifest["channel_stats"] = stats.summary()
        if read.masks is not None:
            pixels = np.zeros((2, len(mask_classes)), np.int64)  # per split: train, test

            def count(masks: np.ndarray, test: np.ndarray) -> None:
                for side in (0, 1):
                    pixels[side] += np.bincount(masks[test == bool(side)].ravel(), minlength=len(mask_classes))

            read.masks.split({False: folder / "train_masks.npy", True: folder / "test_masks.npy"}, is_test, visit=count)
            manifest["kind"] = "segmentation"  # SegmentationModality.kind
            manifest["mask_classes"] = mask_classes
            manifest["mask_pixel_fractions"] = {split: [round(float(c / max(1, pixels[side].sum())), 6) for c in pixels[side]]
                                                for side, split in enumerate(("train", "test"))}

    write_prepared(out, arrays, manifest, overwrite, streamed=streamed)
