"""MNIST as a segmentation task: write image + mask pairs whose mask marks each digit's stroke with its class.

Reads the MNIST IDX files (train-* or t10k-*), marks every pixel at or above --threshold with the
digit's class + 1 (0 = background; mask classes "background", "0", ..., "9"), and writes
OUT/images/, OUT/masks/, OUT/labels.csv and OUT/mask_classes.txt: the layout `difftrain data prepare`
reads as a segmentation dataset. Prints one JSON line (counts, class pixel fractions).

Run:
    python benchmarks/mnist_masks.py ../shared/data/mnist /tmp/mnist-masks --limit 6000
    difftrain data prepare /tmp/mnist-masks --out data/mnist-masks
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import common
from difftrain.data.digit_masks import DIGIT_MASK_CLASSES, masks_from_labels
from difftrain.data.idx import find_idx_files, parse_idx
from difftrain.data.segmentation_folder import write_segmentation_folder
from difftrain.errors import UserError


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28, 1) and int64 labels of MNIST's train or test split."""
    files = find_idx_files(folder)
    images_path, labels_path = ((files.train_images, files.train_labels) if split == "train"
                                else (files.test_images, files.test_labels)) if files else (None, None)
    if images_path is None or labels_path is None:
        raise UserError(f"{folder}: no labelled MNIST {split} split (expected *-images-idx3-ubyte and *-labels-idx1-ubyte files)")
    images = parse_idx(images_path.read_bytes(), images_path, ndim=3)[..., None]
    labels = parse_idx(labels_path.read_bytes(), labels_path, ndim=1).astype(np.int64)
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mnist", type=Path, help="folder of the MNIST IDX files")
    parser.add_argument("out", type=Path, help="folder to create (images/, masks/, labels.csv, mask_classes.txt)")
    parser.add_argument("--limit", type=int, default=None, help="write this many pairs, a seeded random subset")
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--threshold", type=int, default=128, help="grey level from which a pixel is the stroke")
    parser.add_argument("--seed", type=int, default=0, help="drives the --limit subset")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    try:
        images, labels = read_split(args.mnist, args.split)
        if args.limit is not None:
            keep = np.sort(np.random.default_rng(args.seed).permutation(len(images))[:args.limit])
            images, labels = images[keep], labels[keep]
        masks = masks_from_labels(images, labels, threshold=args.threshold)
        write_segmentation_folder(args.out, images, masks, names=[f"{args.split}-{i:05d}" for i in range(len(images))],
                                  labels=labels, class_names=[str(d) for d in range(10)], mask_classes=DIGIT_MASK_CLASSES,
                                  overwrite=args.overwrite)
    except UserError as e:
        sys.exit(f"error: {e}")
    pixels = np.bincount(masks.ravel(), minlength=len(DIGIT_MASK_CLASSES)) / masks.size
    common.emit({"benchmark": "mnist_masks", "command": " ".join(sys.argv), "split": args.split, "pairs": len(images),
                 "class_counts": np.bincount(labels, minlength=10).tolist(), "threshold": args.threshold,
                 "mask_classes": DIGIT_MASK_CLASSES, "pixel_fractions": [round(float(f), 5) for f in pixels],
                 "out": str(args.out.resolve()), "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
