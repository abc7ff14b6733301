"""The report of a synthetic dataset: its utility (does it train a model that works on real data?) beside its
privacy (how close does it come to the training images?), written as OUT/report.json, dcr.png, closest-pairs.png.

Classification data is scored by evaluation/utility.py, segmentation data (image + mask pairs) by
modalities/segmenter.segmentation_utility; privacy is measured on the image part in both cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from difftrain import atomic
from difftrain.data import PreparedDataset
from difftrain.errors import UserError
from difftrain.evaluation.memorization import save_closest_pairs
from difftrain.synth.privacy import privacy, save_dcr_histogram

REPORT, DCR_PNG, PAIRS_PNG = "report.json", "dcr.png", "closest-pairs.png"


def _jsonable(value: Any) -> Any:
    """NaN (an empty class in an IoU, say) as null: report.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_report(out_dir: str | Path, real: PreparedDataset, synth_images: np.ndarray, synth_labels: np.ndarray | None, *,
                 seed: int = 0, progress: Callable[[str], None] | None = None,
                 steps: int | None = None, repeats: int = 3) -> dict:
    """Score synthetic data (the real dataset's kind; privacy on the modality's `privacy_view`) against the real dataset and write
    OUT/report.json, dcr.png and closest-pairs.png; returns the summary that report.json holds.

    Utility's judges train with seeds seed..seed+repeats-1, to convergence (`steps`: the most steps of any training;
    None: the judge's own cap); `progress(stage)` is called before each long step.
    """
    out_dir = Path(out_dir)
    synth_images = np.asarray(synth_images)
    modality = real.modality
    if repeats < 1:
        raise UserError(f"report: repeats must be at least 1 (got {repeats})")
    # Checked before any training: a mismatch found after minutes of utility training would waste them.
    if synth_images.dtype != modality.dtype or synth_images.shape[1:] != real.train_data.shape[1:]:
        raise UserError(f"synthetic data is {synth_images.dtype} {synth_images.shape[1:]} but the data of {real.path} is "
                        f"{modality.dtype} {real.train_data.shape[1:]}; report on samples of a model trained on that dataset")
    (synth_part, view), train_part, test_part = (modality.privacy_view(synth_images), modality.privacy_view(real.train_data)[0],
                                                 modality.privacy_view(real.test_data)[0])
    # Privacy first: it takes seconds, the utility's trainings minutes.
    privacy_summary, privacy_skipped, files = None, None, {"report": REPORT}
    if not len(test_part):
        privacy_skipped = f"{real.path} has no held-out (test) data for the DCR baseline"
    else:
        if progress is not None:
            progress("privacy: distances to the training images")
        privacy_summary, result, held_out_dcr = privacy(synth_part, train_part, test_part, view)
        save_dcr_histogram(result.d1, held_out_dcr, out_dir / DCR_PNG)
        save_closest_pairs(synth_part, train_part, result, out_dir / PAIRS_PNG, view)
        files |= {"dcr": DCR_PNG, "closest_pairs": PAIRS_PNG}
    seeds = tuple(range(seed, seed + repeats))
    utility, utility_skipped = modality.synth_utility(real, synth_images, synth_labels, seeds=seeds, steps=steps,
                                                      progress=progress)

    summary = _jsonable({
        "task": modality.synth_task,
        "real": {"path": str(Path(real.path).resolve()), "train_images": len(real.train_data), "test_images": len(real.test_data),
                 "class_names": real.class_names, **modality.synth_manifest_fields()},
        "synthetic": {"images": len(synth_images), "labelled": synth_labels is not None,
                      "masks": bool(modality.synth_manifest_fields().get("mask_classes"))},
        "seed": seed, "utility": utility, "utility_skipped": utility_skipped,
        "privacy": privacy_summary, "privacy_skipped": privacy_skipped, "files": files,
    })
    atomic.write_json(out_dir / REPORT, summary)
    return summary


def _mean_std(arm: dict, metric: str) -> str:
    return f"{arm[f'{metric}_mean']:.4f} ± {arm[f'{metric}_std']:.4f}"


def _utility_markdown(u: dict) -> list[str]:
    metric, name, counts, items = u["metric"], u["metric_name"], u["counts"], u["items"]
    fairness = u["fairness"][0].upper() + u["fairness"][1:]
    lines = [f"{fairness} (seeds {', '.join(map(str, u['seeds']))}; {name} on {counts['real_test']} real "
             f"held-out {items}, mean ± std over seeds).", "",
             f"| trained on | {items} | {name} |", "|---|---:|---:|"]
    sizes = {"real": counts["real_train"], "synthetic": counts["synthetic"],
             "real+synthetic": counts["real_train"] + counts["synthetic"]}
    for arm in ("real", "synthetic", "real+synthetic"):
        lines.append(f"| {arm.replace('+', ' + ')} | {sizes[arm]} | {_mean_std(u['arms'][arm], metric)} |")
    real = u["arms"]["real"]
    lines += ["", f"**The judge** ({u['model']}) scores {real[f'{metric}_mean']:.4f} {name} trained on the real "
                  f"{items} alone: a weak judge (far below what the task allows) makes any verdict below weak too."]
    verdict = {True: "helps", False: "does not help significantly", None: "has no verdict (one seed: nothing to pair)"}[
        u["synthetic_helps"]]
    interval = "" if u.get("gain_ci95") is None else \
        f", 95% interval [{u['gain_ci95'][0]:+.4f}, {u['gain_ci95'][1]:+.4f}], paired t-test p = {u['gain_p_value']:.3g}"
    lines += ["", f"**Adding the synthetic data {verdict}**: its gain over real alone is {u['real_plus_synthetic_gain']:+.4f} "
                  f"({name}){interval} ({u['synthetic_helps_rule']})."]
    if u.get("size_curve"):
        lines += ["", f"{name.capitalize()} against the synthetic set's size (seed {u['size_curve'][0]['seed']}):", "",
                  f"| synthetic {items} | fraction | synthetic only | real + synthetic |", "|---:|---:|---:|---:|"]
        for point in u["size_curve"]:
            lines.append(f"| {point['synthetic_images']} | {point['fraction']:g} | {point['synthetic'][metric]:.4f} | "
                         f"{point['real+synthetic'][metric]:.4f} |")
    return lines


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"  # (NaN became None in report.json)


def _privacy_markdown(p: dict, files: dict) -> list[str]:
    quantiles = list(p["synthetic_dcr"])
    item = p.get("item", "image")
    lines = [f"Distance to the closest training {item} ({p['distance']}), quantiles:", "",
             f"| {item}s | n | " + " | ".join(quantiles) + " |", "|---|---:|" + "---:|" * len(quantiles)]
    for label, key, n in (("synthetic", "synthetic_dcr", p["synthetic_items"]), ("real held-out (baseline)", "held_out_dcr",
                                                                                 p["held_out_items"])):
        lines.append(f"| {label} | {n} | " + " | ".join(f"{p[key][q]:.4f}" for q in quantiles) + " |")
    lines += ["",
              f"- Synthetic {item}s closer than the held-out 5th percentile ({p['held_out_p5']:.4f}): "
              f"**{p['fraction_below_held_out_p5']:.4f}** (expected: {p['fraction_below_expected']}).",
              f"- Exact copies of training {item}s: **{p['exact_copies']}** of {p['synthetic_items']}.",
              f"- Memorized fraction (nearest training {item} closer than {p['memorization_ratio']:.3g} x the second "
              f"nearest): **{p['memorized_fraction']:.4f}** ({p['memorized']} {item}s).",
              *[f"- {key.replace('_', ' ').capitalize()}: **{_number(v['synthetic'])}** for synthetic {item}s, "
                f"{_number(v['held_out'])} for real held-out ones (the baseline)." for key, v in p.get("copying", {}).items()],
              "", f"![distance to closest record]({files['dcr']})", "",
              f"Closest pairs (synthetic left, nearest training {item} right): ![closest pairs]({files['closest_pairs']})"]
    return lines


def report_markdown(summary: dict) -> str:
    """A Markdown section for the dataset card: the utility table and size curve, the privacy numbers and plots."""
    lines = ["## Utility and privacy", "", "### Utility", ""]
    lines += _utility_markdown(summary["utility"]) if summary.get("utility") else [f"Skipped: {summary['utility_skipped']}."]
    lines += ["", "### Privacy", ""]
    lines += _privacy_markdown(summary["privacy"], summary["files"]) if summary.get("privacy") else \
        [f"Skipped: {summary['privacy_skipped']}."]
    return "\n".join(lines) + "\n"
