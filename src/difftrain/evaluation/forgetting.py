"""What a continued training forgot: the source model and the result, scored on the source's
data (before and after), and the result on the new data, with one protocol for all three.

    RUN/forgetting.json    the three evaluations and the change on the old data
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from difftrain import atomic
from difftrain.data import PreparedDataset, load_dataset
from difftrain.evaluation.run_eval import evaluate_denoiser, extractor_for
from difftrain.progress import stderr_console
from difftrain.store.run import Run, label_map, open_run, source_run
from difftrain.store.checkpoint import open_checkpoint
from difftrain.store.metrics_log import MetricsLog

# Headline numbers of each evaluation, in the order the report shows them.
SHOWN = ("fid", "kid", "precision", "recall", "cas")


def _score(run: Run, checkpoint_path: Path, ds: PreparedDataset, extractor, config, metrics: list[str], device) -> dict[str, Any]:
    denoiser = run.denoiser(open_checkpoint(checkpoint_path), device=device)
    to_model = label_map(ds.class_names, run.class_names, str(ds.path)) if run.num_classes else None
    record = evaluate_denoiser(denoiser, ds, extractor, config, n=config.eval.n_samples, metrics=metrics,
                               to_model=to_model, device=device, modality=run.modality)
    return {"checkpoint": str(checkpoint_path), **record}


def _unread_captions(run: Run, old_ds: PreparedDataset) -> str | None:
    """Why this captioned run cannot read the old data's held-out captions (None: it can, or it reads none)."""
    if not run.captioned or old_ds.test_captions is None:
        return None
    texts = old_ds.modality.captions.decode(old_ds.test_captions)
    unread = sorted(set("".join(texts)) - set(run.modality.captions.tokenizer.vocab))
    if unread:
        return (f"the old data's captions hold {', '.join(map(repr, unread[:10]))}, which the new data's captions lack, "
                "so this model cannot read them (fine-tune on captions that use them to measure it)")
    longest = max(map(len, texts))
    if longest > run.modality.captions.length:
        return (f"the old data's captions run to {longest} characters, longer than the new data's "
                f"{run.modality.captions.length}, so this model cannot read them")
    return None


def forgetting_report(run_dir: Path, new_ds: PreparedDataset, log: MetricsLog, *, device="cpu",
                      console: Console | None = None) -> dict[str, Any] | None:
    """Score the --init run's checkpoint and this run's latest on the old data, and this run on the new data.

    Nothing to do (None) when the source is not a difftrain run or its data is gone.
    """
    console = console or stderr_console()
    run = open_run(run_dir)
    fc = run.config.finetune
    source = source_run(fc.init) if fc.init else None
    init = json.loads((run_dir / "init.json").read_text()) if (run_dir / "init.json").is_file() else {}
    if source is None or not init.get("checkpoint"):
        console.print("forgetting not measured: the source is not a difftrain run, so there is no old data to score")
        return None
    old_path = Path(fc.replay_data or source.dataset["path"])
    if not (old_path / "manifest.json").is_file() or not Path(init["checkpoint"]).is_dir():
        console.print(f"[yellow]warning:[/] forgetting not measured: {old_path} or {init['checkpoint']} is gone")
        return None
    old_ds = load_dataset(old_path)
    unread = _unread_captions(run, old_ds)
    if not unread and tuple(old_ds.modality.shape) != tuple(run.modality.shape):
        unread = f"the old data's items are {tuple(old_ds.modality.shape)}, this model draws {tuple(run.modality.shape)}"
    if unread:
        console.print(f"[yellow]warning:[/] forgetting not measured: {unread}")
        return None
    config = run.config
    labelled = run.num_classes and old_ds.num_classes and new_ds.num_classes
    metrics = [m for m in config.eval.metrics if m in ("fid", "kid", "pr", "cas") and (m != "cas" or labelled)]
    latest = run.checkpoint("latest").path
    console.print(f"measuring forgetting on {old_path} ({config.eval.n_samples} samples per evaluation)")
    old_features = extractor_for(old_ds, config.eval, metrics, device=device)
    report = {
        "source": init.get("origin"), "old_data": str(old_path.resolve()), "new_data": str(Path(new_ds.path).resolve()),
        "samples": config.eval.n_samples,
        "old_before": _score(source, Path(init["checkpoint"]), old_ds, old_features, config, metrics, device),
        "old_after": _score(run, latest, old_ds, old_features, config, metrics, device),
        "new_after": _score(run, latest, new_ds, extractor_for(new_ds, config.eval, metrics, device=device), config, metrics, device),
    }
    report["old_change"] = {k: report["old_after"][k] - report["old_before"][k] for k in SHOWN if k in report["old_before"]}
    atomic.write_json(run_dir / "forgetting.json", report)
    flat = {"event": "forgetting", "images": open_checkpoint(latest).images}
    for part in ("old_before", "old_after", "new_after"):
        flat.update({f"{part}_{k}": report[part][k] for k in SHOWN if k in report[part]})
    log.write(flat)
    for line in forgetting_lines(report):
        console.print(line)
    return report


def forgetting_lines(report: dict[str, Any]) -> list[str]:
    """The report as a few lines: each metric on the old data before -> after, and on the new data."""
    lines = []
    for k in SHOWN:
        if k in report["old_before"]:
            lines.append(f"{k}: old data {report['old_before'][k]:.4g} -> {report['old_after'][k]:.4g} "
                         f"({report['old_change'][k]:+.4g}); new data {report['new_after'][k]:.4g}")
    return lines
