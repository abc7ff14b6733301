"""A 32x32 RGB image folder of the kind a user brings: one sub-folder per class of PNGs. Prints one JSON line.

The images are MNIST digits in colour: each digit is padded to 32x32, drawn in a random colour on a background of
another random colour, with a little random shift. Colour is independent of the class, so a model must learn both
the shapes (per class) and the colours (shared); the classes keep difftrain's domain classifier (FID, CAS) usable.

Run, then prepare and train as a user would:
    python benchmarks/rgb_folder.py --mnist ../shared/data/mnist --count 20000 --out /tmp/rgb-digits
    difftrain data prepare /tmp/rgb-digits --out /tmp/rgb-data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import common
from text_to_image import digits


def coloured(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 28, 28) grey digits -> (N, 32, 32, 3): a random foreground over a random background, shifted by up to 2."""
    n = len(images)
    canvas = np.zeros((n, 32, 32), np.float32)
    dy, dx = rng.integers(0, 5, n), rng.integers(0, 5, n)
    for i in range(n):
        canvas[i, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] = images[i] / 255.0
    fg, bg = rng.uniform(0, 1, (n, 1, 1, 3)), rng.uniform(0, 1, (n, 1, 1, 3))
    alpha = canvas[..., None]
    return np.round(255 * (alpha * fg + (1 - alpha) * bg)).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, required=True, help="A folder of the MNIST IDX files.")
    parser.add_argument("--count", type=int, default=20_000, help="Images to write (from MNIST's training set).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    images, labels, _, _ = digits(args.mnist)
    pick = rng.choice(len(images), args.count, replace=False)
    for i, (image, label) in enumerate(zip(coloured(images[pick], rng), labels[pick])):
        folder = args.out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    common.emit({"benchmark": "rgb_folder", "images": args.count, "shape": [32, 32, 3], "out": str(args.out)})


if __name__ == "__main__":
    main()
