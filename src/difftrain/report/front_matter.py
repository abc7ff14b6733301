"""The run README's model-card metadata: the YAML front matter the Hugging Face Hub reads (license, tags, datasets,
metrics, and a model-index with the final evaluation's numbers), so a run folder pushed to the Hub is described there."""

from __future__ import annotations

import re

import yaml


# Licences named in a dataset's provenance text, as the Hub's identifiers; anything else is "other".
LICENSES = {r"CC BY 4\.0|CC-BY-4\.0": "cc-by-4.0", r"CC BY-SA 4\.0|CC-BY-SA-4\.0": "cc-by-sa-4.0", r"\bCC0\b": "cc0-1.0",
            r"\bMIT\b": "mit", r"Apache[- ]2\.0": "apache-2.0", r"BSD-3-Clause": "bsd-3-clause"}
# The final evaluation's numbers the model-index lists: (record key, metric type, name).
METRICS = [("fid", "fid", "FID"), ("kid", "kid", "KID"), ("precision", "precision", "precision"),
           ("recall", "recall", "recall"), ("cas", "accuracy", "classification accuracy score"),
           ("nll_bits_per_dim", "bits_per_dim", "NLL (bits/dim)")]


def license_of(provenance: str | None) -> str:
    found = [hub for pattern, hub in LICENSES.items() if re.search(pattern, provenance or "")]
    return found[0] if found else "other"


def front_matter(run, final: dict | None) -> str:
    """'---\\n<yaml>---\\n' for the run's README: what the Hub shows beside the card."""
    ds = run.dataset
    source = (ds.get("source") or {}).get("path") or ds["path"]
    dataset = source.removeprefix("builtin:").rstrip("/").split("/")[-1]
    task = "text-to-image" if run.captioned else run.modality.hub_pipeline_tag
    tags = ["difftrain", "diffusion", run.modality.kind,
            "text-conditional" if run.captioned else "class-conditional" if run.num_classes else "unconditional",
            *(["latent-diffusion"] if run.config.model.latent else []), *(["autoencoder"] if run.is_autoencoder else [])]
    meta: dict = {"library_name": "difftrain", "license": license_of(ds.get("provenance")), "tags": tags,
                  "datasets": [dataset]}
    if task:
        meta["pipeline_tag"] = task
    scored = [(key, kind, name) for key, kind, name in METRICS if isinstance((final or {}).get(key), (int, float))]
    if scored:
        setup = f"{final.get('n_samples', '?')} samples, {final.get('sampler', '?')} {final.get('steps', '?')} steps"
        meta["metrics"] = [kind for _, kind, _ in scored]
        meta["model-index"] = [{"name": run.path.name, "results": [{
            "task": {"type": task or "other", "name": f"{run.modality.kind} generation"},
            "dataset": {"name": dataset, "type": dataset},
            "metrics": [{"type": kind, "value": float(final[key]), "name": f"{name} ({setup})",
                         **({"args": {"real_data_floor": float(final[f"{key}_floor"])}}
                            if isinstance(final.get(f"{key}_floor"), float) else {})}
                        for key, kind, name in scored]}]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"
