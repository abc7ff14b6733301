"""The dataset card (OUT/README.md) of a synthetic dataset: a pure function of its manifest and report."""

from __future__ import annotations

from pathlib import Path

from difftrain.modalities import modality_for

NAMES = {"memorization": "near-copies of training {item}s", "dedup": "exact and near duplicates among the kept samples",
         "confidence": "samples the confidence classifier does not see as their class"}
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
    if m.get("search"):
        lines += ["", *search_markdown(m["search"], item)]
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


def search_markdown(search: dict, item: str) -> list[str]:
    """The section on how `--optimize-for utility` chose the settings: every trial beside the real-only baseline."""
    selection, chosen = search["selection"], search["chosen"]
    lines = ["## How the settings were chosen (`--optimize-for utility`)", "",
             f"The judge ({search['judge']}) trained on {selection['real_training_items']} real training {item}s alone and "
             f"with each candidate synthetic set, stopping early on {selection['stopping_items']} others, and was scored on "
             f"{selection['items']} more held back from both (a stratified {selection['share']:g} of the run's training "
             f"{item}s, seed {selection['seed']}); ties go to the lower cross-entropy. One setting at a time, each stage "
             "starting from the best so far.", "",
             "| stage | checkpoint | guidance | confidence filter | per class | synthetic | accuracy | cross-entropy |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for t in [search["real_only"], *search["trials"]]:
        chosen_mark = " **(chosen)**" if t is not search["real_only"] and all(t[k] == chosen[k] for k in chosen) else ""
        confidence = "off" if t["confidence"] is None else f"{t['confidence']:g}"
        cells = ("–", "–", "–", "0") if t["per_class"] == 0 else (
            f"`{Path(t['checkpoint']).name}`", f"{t['guidance']:g}", confidence, str(t["per_class"]))
        lines.append(f"| {t['stage']}{chosen_mark} | " + " | ".join(cells) +
                     f" | {t['synthetic_items']} | {t['accuracy']:.4f} | {t['cross_entropy']:.4f} |")
    verdict = "beat" if search["helps"] else "did not beat (in accuracy)"
    lines += ["", f"On the held-back {item}s the chosen set {verdict} the real {item}s alone "
                  f"({search['chosen_trial']['accuracy']:.4f} against {search['real_only']['accuracy']:.4f}). "
                  "The report below measures it again on the test split, which the search never saw."]
    return lines
