"""Do generated digit masks agree with their image and their label? (issue 7, item 5)

For a segmentation dataset of digits whose masks label the stroke with the digit's class (benchmarks/mnist_masks.py
for real pairs, `difftrain synth` of a model trained on them for synthetic ones), with labels.csv naming each pair's digit:
  - majority_is_label: share of pairs whose most frequent stroke class is the pair's own digit
  - stroke_pixels_of_label: share of all stroke (non-background) mask pixels that carry the pair's digit
  - masks_with_several_digits: share of masks holding more than one digit class
  - mask_vs_image_stroke_iou: mean IoU of the mask's stroke with the image's stroke (grey level >= --threshold)
Real pairs score 1, 1, 0 and 1 by construction. Prints one JSON line.

Run:
    python benchmarks/digit_mask_agreement.py /tmp/synth-seg/synth
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

import common


def agreement(folder: Path, threshold: int) -> dict:
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    majority = of_label = stroke_total = several = 0
    ious = []
    for row in rows:
        name = Path(row["file"]).name
        mask = np.asarray(Image.open(folder / "masks" / name))
        grey = np.asarray(Image.open(folder / "images" / name).convert("L"))
        digit = int(row["label"]) + 1  # mask class 0 is the background
        counts = np.bincount(mask[mask > 0], minlength=11)
        majority += counts.argmax() == digit and counts.sum() > 0
        of_label, stroke_total = of_label + counts[digit], stroke_total + counts.sum()
        several += (counts[1:] > 0).sum() > 1
        drawn, masked = grey >= threshold, mask > 0
        ious.append((drawn & masked).sum() / max((drawn | masked).sum(), 1))
    n = len(rows)
    return {"pairs": n, "majority_is_label": majority / n, "stroke_pixels_of_label": float(of_label / max(stroke_total, 1)),
            "masks_with_several_digits": several / n, "mask_vs_image_stroke_iou": float(np.mean(ious))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="segmentation dataset: images/, masks/ and labels.csv")
    parser.add_argument("--threshold", type=int, default=128, help="grey level from which an image pixel is the stroke")
    args = parser.parse_args()
    common.emit({"benchmark": "digit_mask_agreement", "folder": str(args.folder), "threshold": args.threshold,
                 **agreement(args.folder, args.threshold)})


if __name__ == "__main__":
    main()
