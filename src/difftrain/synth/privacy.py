"""Privacy beside utility: how close synthetic items come to the training items they were learned from.

The distance to closest record (DCR) is the Euclidean distance in the modality's `neighbour_view` (pixel L2 for
images in [0, 1]; its `distance_name` says which) from an item to its nearest training item. Its baseline is the DCR of real held-out images, which the model never saw: a generator that
does not copy puts its samples no closer to the training set than new real data, so about 5% of its samples
fall below the held-out 5th percentile; many more means samples sit nearer training images than fresh data
does. Exact copies (DCR 0) and the memorized fraction (the d1/d2 rule of evaluation/memorization.py) are counted too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.evaluation.memorization import Memorization, memorization, nearest_training

QUANTILES = (0.01, 0.05, 0.25, 0.5)
THRESHOLD_QUANTILE = 0.05  # synthetic images below this quantile of the held-out DCR are counted


def _quantiles(dcr: np.ndarray) -> dict[str, float]:
    return {f"p{round(q * 100)}": float(np.quantile(dcr, q)) for q in QUANTILES}


def dcr_summary(synth_dcr: np.ndarray, held_out_dcr: np.ndarray, result: Memorization | None = None, *,
                item: str = "image", distance: str = "pixel L2, images scaled to [0, 1]") -> dict:
    """Quantiles of both DCR distributions, the fraction of synthetic items below the held-out 5th percentile,
    exact copies, and (given the memorization result of the synthetic items) the memorized fraction."""
    threshold = float(np.quantile(held_out_dcr, THRESHOLD_QUANTILE))
    summary = {
        "distance": distance, "item": item,
        "synthetic_items": len(synth_dcr), "held_out_items": len(held_out_dcr),
        "synthetic_dcr": _quantiles(synth_dcr), "held_out_dcr": _quantiles(held_out_dcr),
        "held_out_p5": threshold,
        "fraction_below_held_out_p5": float(np.mean(synth_dcr < threshold)),
        "fraction_below_expected": ("about 0.05 when the generator does not copy; "
                                    f"less when its samples lie farther from the data than real {item}s"),
        "exact_copies": int(np.count_nonzero(synth_dcr == 0)),
        "held_out_exact_copies": int(np.count_nonzero(held_out_dcr == 0)),
    }
    if result is not None:
        summary |= result.summary()
    return summary


def privacy(synth: np.ndarray, train: np.ndarray, held_out: np.ndarray, modality) -> tuple[dict, Memorization, np.ndarray]:
    """The DCR summary of synthetic items against the training items (distances in the modality's neighbour space),
    with the held-out items as baseline; also the synthetic items' memorization result and the held-out DCRs (for plots)."""
    for what, items in ((f"synthetic {modality.item}s", synth), (f"real held-out {modality.item}s", held_out)):
        if not len(items):
            raise UserError(f"privacy report: there are no {what}; the DCR needs some of each")
        if items.shape[1:] != train.shape[1:]:
            raise UserError(f"privacy report: {what} are {items.shape[1:]} but the training items are "
                            f"{train.shape[1:]}; compare {modality.item}s of the dataset the model was trained on")
    if len(train) < 2:
        raise UserError(f"privacy report: the training set has {len(train)} {modality.item}(s); the memorization rule "
                        "needs at least 2")
    result = memorization(synth, train, modality)
    held_out_dcr = nearest_training(held_out, train, modality)[0]
    summary = dcr_summary(result.d1, held_out_dcr, result, item=modality.item, distance=modality.distance_name)
    copying = {key: {"synthetic": metric(synth), "held_out": metric(held_out)}
               for key, metric in modality.copy_metrics(train).items()}
    if copying:  # the kind's own measures of copying (text: verbatim overlap), held-out real items as the baseline
        summary["copying"] = copying
    return summary, result, held_out_dcr


def save_dcr_histogram(synth_dcr: np.ndarray, held_out_dcr: np.ndarray, path: str | Path) -> Path:
    """PNG of the two DCR distributions on shared bins, with the held-out 5th percentile marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    bins = np.linspace(0, max(float(synth_dcr.max()), float(held_out_dcr.max()), 1e-6), 41)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(held_out_dcr, bins=bins, density=True, alpha=0.5, label=f"real held-out (n={len(held_out_dcr)})")
    ax.hist(synth_dcr, bins=bins, density=True, alpha=0.5, label=f"synthetic (n={len(synth_dcr)})")
    ax.axvline(np.quantile(held_out_dcr, THRESHOLD_QUANTILE), color="gray", linestyle="--", linewidth=1,
               label="held-out 5th percentile")
    ax.set_xlabel("distance to the closest training item (L2)")
    ax.set_ylabel("density")
    ax.set_title("distance to closest record")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    return atomic.write_figure(fig, path)
