"""The run report (README.md in the run directory): a pure function of the run's files."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from difftrain import __version__, atomic
from difftrain.run import open_run
from difftrain.training.metrics_log import read_metrics


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, object]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in rows)])


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/README.md from config.yaml, dataset.json, metrics.jsonl and samples/."""
    run_dir = Path(run_dir)
    run = open_run(run_dir)
    cfg = run.config
    records = read_metrics(run_dir)
    train_logs = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("event") == "eval"]
    grids = sorted((run_dir / "samples").glob("grid-*.png"))
    ds = run.dataset
    net = run.build_network()
    params = sum(p.numel() for p in net.parameters())

    parts = [f"# difftrain run `{run_dir.name}`", "",
             f"A {'class-conditional' if run.num_classes else 'unconditional'} diffusion model for "
             f"{ds['shape'][0]}x{ds['shape'][1]} images with {ds['shape'][2]} channel(s), trained with difftrain {__version__}.", ""]
    parts += ["## Data", "", _table([
        ("source", (ds.get("source") or {}).get("path", ds["path"])),
        ("prepared dataset", ds["path"]),
        ("training / held-out images", f"{ds['count']['train']:,} / {ds['count']['test']:,}" if ds.get("count") else "?"),
        ("classes", ", ".join(ds["class_names"]) if ds.get("class_names") else "none"),
        ("provenance", ds.get("provenance") or "-"),
    ]), ""]
    d = cfg.diffusion
    formulation = "EDM" if d.formulation == "edm" else f"VP/DDPM ({d.prediction}-prediction, {d.num_timesteps} steps, {d.beta_schedule} betas)"
    parts += ["## Model and training", "", _table([
        ("network", f"diffusers UNet2DModel, {params:,} parameters, channels {cfg.model.channels}"),
        ("formulation / loss weighting", f"{formulation} / {d.weighting}"),
        ("optimizer", f"{cfg.optim.name}, lr {cfg.optim.lr:g}, {cfg.optim.schedule} after {cfg.optim.warmup_images:,} warm-up images"),
        ("batch", f"{cfg.train.batch_size} ({cfg.train.accumulation} micro-batch(es))"),
        ("EMA half-life", f"{cfg.train.ema_halflife_images:,} images (ramp-up {cfg.train.ema_rampup})"),
        *([("training images / steps", f"{train_logs[-1]['images']:,} / {train_logs[-1]['step']:,}"),
           ("final loss", train_logs[-1]["loss"]),
           ("speed (last log window)", f"{train_logs[-1]['images_per_s']:.0f} images/s"),
           ("skipped non-finite steps", train_logs[-1]["nonfinite_steps"])] if train_logs else []),
    ]), ""]
    if grids:
        parts += ["## Samples", "", f"EMA weights, {cfg.sample.sampler} sampler, {cfg.sample.steps} steps, guidance {cfg.sample.guidance:g}"
                  + ("; one class per row." if run.num_classes else "."), "",
                  f"![samples after {grids[-1].stem.split('-')[-1].lstrip('0')} images](samples/{grids[-1].name})", ""]
        if len(grids) > 1:
            parts += ["Over training: " + ", ".join(f"[{int(g.stem.split('-')[-1]):,}](samples/{g.name})" for g in grids), ""]
    if evals:
        e = evals[-1]
        rows = [("Frechet distance, samples vs held-out", e["frechet_distance"]),
                ("Frechet distance, real training vs held-out (floor)", e["frechet_floor"])]
        if "label_agreement" in e:
            rows.append(("classifier agreement with requested labels", e["label_agreement"]))
        rows += [("feature classifier's held-out accuracy", e.get("classifier_test_accuracy")),
                 ("samples / held-out images", f"{e['n_samples']:,} / {e['n_reference']:,}"),
                 ("sampler", f"{e['sampler']}, {e['steps']} steps ({e['network_evaluations']} network evaluations), "
                             f"{e['schedule']} schedule, guidance {e['guidance']:g}, seed {e['seed']}"),
                 ("checkpoint", f"{Path(e['checkpoint']).name} ({e['images']:,} images)")]
        parts += ["## Evaluation", "",
                  "Distances are measured in the 64-d feature space of a small classifier trained on the prepared "
                  "dataset (Inception features are meaningless for small grayscale images). The floor is the same "
                  "distance for real training images: a perfect generator scores about the floor.", "", _table(rows), ""]
        grid = Path(e["samples_file"]).with_suffix(".png")
        if grid.is_file():
            parts += [f"![evaluation samples](samples/{grid.name})", ""]
    parts += ["## Reproduce", "", "```", f"difftrain train --config {run_dir / 'config.yaml'} --out NEW_RUN",
              f"difftrain sample {run_dir} --n 100 --out samples.npz", "```", "",
              "<details><summary>Full config</summary>", "", "```yaml",
              yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip(), "```", "</details>", "",
              f"_Report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._", ""]
    path = run_dir / "README.md"
    atomic.write_text(path, "\n".join(parts))
    return path
