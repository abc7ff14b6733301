"""The end of a synthetic dataset: manifest.json (the provenance of every file), labels.csv, the report and the card."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.sampling import SamplingSpec, spec_meta
from difftrain.synth.plan import MAX_ATTEMPTS, shortfall
from difftrain.synth.state import KIND
from difftrain.synth.report import DCR_PNG, PAIRS_PNG
from difftrain.synth.writer import write_labels

if TYPE_CHECKING:
    from difftrain.synth.generate import Synthesis

FORMAT_VERSION = 1


def build_manifest(job: "Synthesis", settings: dict[str, Any], ckpt, spec: SamplingSpec,
                   search: dict[str, Any] | None = None) -> dict[str, Any]:
    run = job.run
    removed = Counter(r["filter"] for r in job.rejected)
    short = shortfall(job.targets, job.kept)
    counts = [{"class": name, "label": None if name is None else run.class_names.index(name), "requested": target,
               "generated": generated, "kept": kept, "shortfall": missing}
              for name, target, generated, kept, missing in zip(job.classes, job.targets, job.generated, job.kept, short,
                                                               strict=True)]
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "task": job.modality.synth_task,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": settings["run"],
        "dataset": {key: run.dataset.get(key) for key in ("path", "source", "provenance")},
        "checkpoint": settings["checkpoint"],
        "images_seen": ckpt.images,
        "weights": settings["weights"],
        "weights_sha256": settings["weights_sha256"],
        **spec_meta(spec),
        "batch_size": settings["batch_size"],
        "modality": job.modality.spec,
        **job.modality.synth_manifest_fields(),
        "class_names": run.class_names,  # label i is class_names[i], as in the run's training data
        "classes": settings["classes"],
        "per_class": settings["per_class"],
        "n": settings["n"],
        "max_attempts": f"{MAX_ATTEMPTS}x the request per class",
        "filters": [{**f, **job.judge.info.get(f["name"], {}), "removed": removed[f["name"]]} for f in settings["filters"]],
        "totals": {"generated": sum(job.generated), "kept": len(job.files),
                   "removed": {f["name"]: removed[f["name"]] for f in settings["filters"]}, "surplus": job.surplus,
                   "shortfall": {"all" if name is None else name: missing for name, missing in zip(job.classes, short)}},
        "counts": counts,
        "search": search,  # --optimize-for: what was tried and chosen (synth/search.py)
        "report": None,
        "files": job.files,
        "rejected": job.rejected,
    }


def _report(job: "Synthesis", seed: int, report_progress, warn, options: dict[str, Any]) -> dict | None:
    """B's utility and privacy report on the kept samples, when the run's training data is there."""
    run = job.run
    path = Path(run.dataset["path"])
    if not path.is_dir():
        warn(f"no report: the run's training data {path} is gone (the dataset itself is complete)")
        return None
    if not job.files:
        warn("no report: no sample was kept")
        return None
    from difftrain.data import load_dataset
    from difftrain.synth.report import write_report

    real = load_dataset(path)
    images = job.kept_arrays()
    labels = None
    if run.num_classes:
        known = np.asarray([f["class"] in real.class_names for f in job.files])
        if not known.all():
            missing = sorted({f["class"] for f in job.files} - set(real.class_names))
            warn(f"report: class(es) {', '.join(missing)} are not in {path}: the report leaves their samples out")
            images = images[known]
        labels = np.asarray([real.class_names.index(f["class"]) for f in job.files if f["class"] in real.class_names],
                            dtype=np.int64)
    if not len(images):
        warn(f"no report: none of the kept samples is of a class of {path}")
        return None
    progress = None if report_progress is None else (lambda stage: report_progress(f"report: {stage}"))
    return write_report(job.out, real, images, labels, seed=seed, progress=progress, **options)


def finish(job: "Synthesis", settings: dict[str, Any], ckpt, spec: SamplingSpec, *, report: bool = True,
           search: dict[str, Any] | None = None, report_progress=None, report_options: dict[str, Any] | None = None,
           warn=print) -> dict[str, Any]:
    """Write labels.csv, the modality's own files (mask_classes.txt, points.csv), manifest.json and README.md, then the
    report (and both again with it);
    return the manifest. The dataset is complete and described before the report, which may fail or be stopped."""
    from difftrain.synth.card import dataset_card

    out = job.out
    manifest = build_manifest(job, settings, ckpt, spec, search)
    for row in (c for c in manifest["counts"] if c["shortfall"]):
        warn(f"{'class ' + row['class'] if row['class'] is not None else 'the run'}: kept {row['kept']} of {row['requested']} "
             f"after {row['generated']} samples ({MAX_ATTEMPTS}x the request); the filters rejected the rest "
             "(see manifest.json `rejected`)")
    if job.run.num_classes and job.modality.synth_labels_csv:
        write_labels(out, job.files)
    job.modality.synth_finish(out, job.files, job.kept_arrays())
    remove_strays(out, job.files, job.modality.synth_globs, warn)
    atomic.write_json(out / "manifest.json", manifest)
    atomic.write_text(out / "README.md", dataset_card(manifest, None))
    if not report:
        return manifest
    try:
        summary = _report(job, spec.seed, report_progress, warn, report_options or {})
    except UserError as e:
        warn(f"no report: {e}")
        return manifest
    if summary is not None:
        manifest["report"] = summary.get("files")
        atomic.write_json(out / "manifest.json", manifest)
        atomic.write_text(out / "README.md", dataset_card(manifest, summary))
    return manifest


def remove_strays(out: Path, files: list[dict[str, Any]], globs: tuple[str, ...], warn) -> None:
    """Delete sample files of ours (the modality's `globs`) that no file entry names: a batch interrupted after writing,
    drawn again on resume (on a GPU, with other rounding) and judged otherwise. The manifest then describes every file."""
    named = {f[key] for f in files for key in ("file", "mask") if f.get(key)}
    found = {p for pattern in globs for p in (out.rglob(pattern) if pattern.startswith("*") else out.glob(pattern))}
    strays = [p for p in sorted(found) if p.relative_to(out).as_posix() not in named
              and not p.relative_to(out).parts[0].startswith(".") and p.name not in (DCR_PNG, PAIRS_PNG)]
    for path in strays:
        path.unlink()
    if strays:
        warn(f"removed {len(strays)} file(s) of an interrupted batch that was drawn again differently")
