"""The dataset card (OUT/README.md) of a synthetic dataset: a pure function of its manifest and report."""

from __future__ import annotations

from pathlib import Path

from difftrain.modalities import modality_for

NAMES = {"memorization": "near-copies of training {item}s", "dedup": "exact and near duplicates among the kept samples",
         "confidence": "samples the domain classifier does not see as their class"}
SETTING = {"memorization": ("ratio", "nearest training {item} closer than {:g} x the second nearest"),
           "dedup": ("distance", "L2 ({distance}) to a kept sample below {:g}"),
           "confidence": ("threshold", "probability of the intended class below {:g}")}


def dataset_card(m: dict, report: dict | None = None) -> str:
    """README.md: what the dataset is, where it comes from, its counts and filters, how to load it, its terms."""
    modality = modality_for(m["modality"])
    what, item = modality.synth_what, modality.item
    kept, generated = m["totals"]["kept"], m["totals"]["generated"]
    lines = [f"# Synthetic dataset from {Path(m['run']).name}", "",
             f"{kept} synthetic {what} made by `difftrain synth` from the diffusion model in `{m['run']}`: checkpoint "
             f"`{Path(m['checkpoint']).name}` after {m['images_seen']:,} training {item}s seen, {m['weights'].upper()} weights "
             f"(sha256 `{m['weights_sha256']}`). They are samples of a model, not real data.", "",
             "## How it was made", "",
             f"- Sampler `{m['sampler']}`, {m['steps']} steps ({m['schedule']} noise levels), guidance {m['guidance']:g}, seed "
             f"{m['seed']}: {m['network_evaluations']} network evaluations per sample, in batches of {m['batch_size']}.",
             f"- {generated} samples drawn, {kept} kept; the rest removed by the filters below"
             + (f" or not needed once their class was full ({m['totals']['surplus']})." if m["totals"]["surplus"] else "."),
             "- `manifest.json` lists every file with its batch, index in the batch and filter scores, and every rejected "
             "sample.",
             "", "## Contents", "", "| class | label | requested | kept | shortfall |", "|---|---:|---:|---:|---:|"]
    for c in m["counts"]:
        name, label = ("(unconditional)", "") if c["class"] is None else (c["class"], c["label"])
        lines.append(f"| {name} | {label} | {c['requested']} | {c['kept']} | {c['shortfall']} |")
    for note in modality.synth_notes():
        lines += ["", note]
    lines += ["", "## Filters", ""]
    if m["filters"]:
        lines += ["In this order; a sample counts for the first filter that removed it.", "",
                  "| filter | removes | setting | removed |", "|---|---|---|---:|"]
        for f in m["filters"]:
            key, text = SETTING[f["name"]]
            setting = text.replace("{item}", item).replace("{distance}", modality.distance_name).format(f[key])
            lines.append(f"| {f['name']} | {NAMES[f['name']].format(item=item)} | {setting} | {f['removed']} |")
        if "classifier_sha256" in (confidence := next((f for f in m["filters"] if f["name"] == "confidence"), {})):
            lines += ["", f"The classifier: `{confidence['classifier']}` trained on the run's data, held-out accuracy "
                          f"{confidence['classifier_test_accuracy']:.3f}, weights sha256 `{confidence['classifier_sha256']}`."]
    else:
        lines.append("No filter was applied.")
    source = (m["dataset"].get("provenance") or m["dataset"].get("path")).rstrip(".")
    lines += ["", "## Loading it", "", *modality.synth_loading(m["classes"] is not None), "", "## Provenance and licence", "",
              f"The model was trained on {source}. Samples of a generative model can reproduce its training {item}s, so "
              "treat this dataset under the terms of that data and share it only where they allow."]
    if any(f["name"] == "memorization" for f in m["filters"]):
        lines.append(f"Near-copies of training {item}s were removed by the memorization rule (Gu et al. 2023).")
    else:
        lines.append(f"No memorization filter was applied: some samples may be near-copies of training {item}s.")
    if report is not None:
        from difftrain.synth.report import report_markdown

        lines += ["", report_markdown(report).rstrip("\n")]
    return "\n".join(lines) + "\n"
