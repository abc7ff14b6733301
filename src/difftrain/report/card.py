"""The run report (README.md in the run directory): a pure function of the run's files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from difftrain import __version__, atomic
from difftrain.models import architecture, build_network
from difftrain.report.front_matter import front_matter
from difftrain.store.posthoc_ema import read_best
from difftrain.store.run import open_run
from difftrain.store.metrics_log import read_metrics


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, object]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in rows)])


# (title, record key, floor key): each metric beside the same metric for real data.
METRIC_ROWS = [("FID", "fid", "fid_floor"), ("KID", "kid", "kid_floor"), ("precision", "precision", "precision_floor"),
               ("recall", "recall", "recall_floor"), ("density", "density", "density_floor"), ("coverage", "coverage", "coverage_floor"),
               ("classification accuracy score", "cas", "cas_real"), ("agreement with requested labels or captions", "label_agreement", "label_agreement_floor"),
               ("memorized fraction", "memorized_fraction", None), ("NLL, bits/dim (held-out)", "nll_bits_per_dim", None)]


def _link(path: str | Path, run_dir: Path) -> str:
    """A path relative to the run directory when inside it, so the report's links survive a move."""
    p, r = Path(path).resolve(), run_dir.resolve()
    return str(p.relative_to(r)) if p.is_relative_to(r) else str(p)


def _evaluation(run_dir: Path, e: dict, during: list[dict], every_images: int, best_metric: str) -> list[str]:
    def floor_cell(floor: str | None) -> str:
        if not floor or floor not in e:
            return "-"
        spread = e.get(f"{floor}_std")
        return _fmt(e[floor]) + (f" ± {_fmt(spread, 2)}" if spread else "")

    rows = "\n".join(f"| {title} | {_fmt(e[key])} | {floor_cell(floor)} |" for title, key, floor in METRIC_ROWS if key in e)
    accuracy = e.get("extractor_test_accuracy")
    protocol = _table([
        ("features", f"{e.get('extractor', '-')} (sha256 {str(e.get('extractor_sha256', ''))[:12]})"
                     + (f", held-out accuracy {accuracy:.1%}" if isinstance(accuracy, float) else "")),
        ("samples / held-out images", f"{e.get('n_samples', 0):,} / {e.get('n_reference', 0):,}"),
        ("sampler", f"{e['sampler']}, {e['steps']} steps ({e['network_evaluations']} network evaluations), "
                    f"{e['schedule']} schedule, guidance {e['guidance']:g}, seed {e['seed']}") if "sampler" in e else ("sampler", "-"),
        ("checkpoint", f"{Path(e['checkpoint']).name} ({e['images']:,} images)")])
    parts = ["## Evaluation", "",
             "Samples are scored against held-out images. The floor is the same metric for real training images of "
             "the same count, averaged over several subsets (± their standard deviation): a perfect generator scores about "
             "the floor, within that spread (for CAS: the same classifier trained on real images).", "",
             "| metric | samples | floor |", "|---|---|---|", rows, "", protocol, ""]
    parts += [f"- warning: {w}" for w in e.get("warnings", [])] + ([""] if e.get("warnings") else [])
    best = [r for r in during if r.get("best")]
    if best:
        b = best[-1]
        metric = best_metric if best_metric in b else None
        parts += [f"Evaluated during training every {every_images:,} images on {b.get('n_samples', '?')} samples; "
                  f"the best checkpoint ({b['images']:,} images{f', {metric} {_fmt(b[metric])}' if metric else ''}) is kept in "
                  "`checkpoints/best`.", ""]
    for name, title in (("metrics-vs-images.png", "metrics over training"), ("metrics-vs-steps.png", "metrics against sampling steps"),
                        ("metrics-vs-guidance.png", "metrics against the guidance weight")):
        if (run_dir / "eval" / name).is_file():
            parts += [f"![{title}](eval/{name})", ""]
    grid = Path(e.get("samples_file", "")).with_suffix(".png")
    if grid.is_file():
        parts += [f"![evaluation samples]({_link(grid, run_dir)})", ""]
    if e.get("memorization_png"):
        parts += ["Closest samples to training images (sample left, nearest training image right):", "",
                  f"![memorization]({_link(e['memorization_png'], run_dir)})", ""]
    return parts


def _reconstruction(e: dict) -> list[str]:
    """An autoencoder's evaluation (evaluation/reconstruction.py)."""
    rows = [f"| PSNR, dB | {_fmt(e['psnr'])} | {_fmt(e['psnr_resize'])} (resized to the latent's size and back) |",
            f"| SSIM | {_fmt(e['ssim'])} | {_fmt(e['ssim_resize'])} (resized to the latent's size and back) |"]
    if "rfid" in e:
        rows.append(f"| rFID | {_fmt(e['rfid'])} | {_fmt(e['rfid_floor'])} (floor: the real images themselves) |")
    return ["## Evaluation", "", f"Reconstructions of {e['n_reconstructed']:,} held-out images (rFID: of the floor pool's "
            f"training images, against the held-out ones), checkpoint {Path(e['checkpoint']).name}.", "",
            "| metric | reconstructions | baseline |", "|---|---|---|", *rows, ""]


def _starting_point(run_dir: Path, fc) -> list[str]:
    """Where a fine-tuned run started (init.json), what it replayed, and what it forgot (forgetting.json)."""
    init = _read_json(run_dir / "init.json")
    if not init:
        return []
    parts = ["## Starting point", "", _table([
        ("initialised from", init["origin"]),
        ("weights", f"{init['matched']:,} tensors matched; missing {len(init['missing'])}, unexpected {len(init['unexpected'])}, "
                    f"shape-mismatched {len(init['reshaped'])}"),
        ("classes", init.get("classes") or "-"),
        ("trained parameters", f"{init['trainable_parameters']:,} of {init['parameters']:,}"
                               + (f" (LoRA rank {fc.lora_rank})" if fc.lora_rank else "")
                               + (f", only {', '.join(fc.train_only)}" if fc.train_only else "")),
        ("replay", f"{fc.replay:.0%} of every batch from {fc.replay_data or 'the data of the source run'}" if fc.replay else "none"),
    ]), ""]
    forgetting = _read_json(run_dir / "forgetting.json")
    if forgetting:
        from difftrain.evaluation.forgetting import SHOWN

        rows = [f"| {k} | {_fmt(forgetting['old_before'][k])} | {_fmt(forgetting['old_after'][k])} | "
                f"{forgetting['old_change'][k]:+.4g} | {_fmt(forgetting['new_after'][k])} |" for k in SHOWN if k in forgetting["old_before"]]
        parts += [f"Forgetting: the starting model and this one on the old data ({forgetting['old_data']}), and this one on the "
                  f"new data, {forgetting['samples']:,} samples each.", "",
                  "| metric | old data, before | old data, after | change | new data |", "|---|---|---|---|---|", *rows, ""]
    return parts


def _human_ratings(h: dict | None) -> list[str]:
    """`difftrain rate results` wrote human-ratings.json: this run's rank, HYPE error and faithfulness in that study."""
    if not h:
        return []
    lines = ["## Human ratings", "", f"From the rating study `{h['study']}` ({h['votes_kept']} votes kept; "
             f"`difftrain rate results` there has the full table).", ""]
    rows = []
    if h.get("ranking"):
        b = h["ranking"]
        rows.append(("Bradley-Terry rank", f"{b['rank']} of {h['of']}: score {b['score']:+.3f} "
                     f"(95% interval [{b['low']:+.3f}, {b['high']:+.3f}], {b['votes']} votes; log-odds, mean 0)"))
        rows += [(f"against {o['run']}", f"score {o['score']:+.3f} [{o['low']:+.3f}, {o['high']:+.3f}]") for o in h.get("others", [])]
    if h.get("hype"):
        x = h["hype"]
        rows.append(("HYPE error rate (0.5: people cannot tell)", f"{x['error_rate']:.3f} [{x['low']:.3f}, {x['high']:.3f}]; "
                     f"generated judged real {x['fooled']:.3f}"))
    if h.get("likert"):
        x = h["likert"]
        rows.append(("faithfulness, 1-5", f"{x['mean']:.2f} [{x['low']:.2f}, {x['high']:.2f}] ({x['ratings']} ratings)"))
    return lines + [_table(rows), ""] if rows else []


def _posthoc_ema(run_dir: Path) -> list[str]:
    """`eval --ema-length` wrote RUN/posthoc/best.json: the EMA lengths tried and the best."""
    best = read_best(run_dir)
    if not best:
        return []
    metric = best["metric"].upper()
    rows = [(f"EMA length {r['ema_length']:g}" + (" (best)" if r["ema_length"] == best["best_ema_length"] else ""),
             f"{metric} {_fmt(r[best['metric']])} at {r['images']:,} images") for r in best["sweep"]]
    return ["## Post-hoc EMA", "", f"EMA lengths (sigma_rel) reconstructed after training from the stored profiles "
            f"(`difftrain eval RUN --ema-length ...`); the best, {best['best_ema_length']:g}, is the checkpoint folder "
            f"`{_link(best['checkpoint'], run_dir)}`.", "", _table(rows), ""]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


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
    net = build_network(cfg.model, run.modality, run.num_classes)
    params = sum(p.numel() for p in net.parameters())
    arch = architecture(cfg.model, run.modality)

    shape = "x".join(map(str, run.sample_shape))
    what = (f"An autoencoder (a latent space for `difftrain train --latent {run_dir}`) for {run.modality.kind} data of shape {shape}"
            if run.is_autoencoder else
            f"A {'caption-conditional' if run.captioned else 'class-conditional' if run.num_classes else 'unconditional'} "
            f"{'latent ' if cfg.model.latent else ''}diffusion model for {run.modality.kind} data of shape {shape}"
            + (f", in the latent space of {cfg.model.latent}" if cfg.model.latent else ""))
    parts = [f"# difftrain run `{run_dir.name}`", "", f"{what}, trained with difftrain {__version__}.", ""]
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
        ("network", f"{arch} ({type(net).__name__}), {params:,} parameters: {cfg.model.section(arch).model_dump(exclude_defaults=True) or 'defaults'}"),
        *([("loss", f"L1 reconstruction + {cfg.model.autoencoder.kl_weight:g} x KL")] if run.is_autoencoder else
          [("formulation / loss weighting", f"{formulation} / {d.weighting}")]),
        *([("latent", f"{'x'.join(map(str, run.modality.model_shape))}, scaled by {run.modality.scale:.4g}")]
          if cfg.model.latent else []),
        ("optimizer", f"{cfg.optim.name}, lr {cfg.optim.lr:g}, {cfg.optim.schedule} after {cfg.optim.warmup_images:,} warm-up images"),
        ("batch", f"{cfg.train.batch_size} ({cfg.train.accumulation} micro-batch(es))"),
        ("EMA half-life", f"{cfg.train.ema_halflife_images:,} images (ramp-up {cfg.train.ema_rampup})"),
        *([("training images / steps", f"{train_logs[-1]['images']:,} / {train_logs[-1]['step']:,}"),
           ("final loss", train_logs[-1]["loss"]),
           ("speed (last log window)", f"{train_logs[-1]['images_per_s']:.0f} images/s"),
           ("skipped non-finite steps", train_logs[-1]["nonfinite_steps"])] if train_logs else []),
    ]), ""]
    if grids and run.is_autoencoder:
        parts += ["## Reconstructions", "", "Held-out images (left) and the EMA's reconstructions of them (right).", "",
                  f"![reconstructions after {grids[-1].stem.split('-')[-1].lstrip('0')} images](samples/{grids[-1].name})", ""]
    elif grids:
        parts += ["## Samples", "", f"EMA weights, {cfg.sample.sampler} sampler, {cfg.sample.steps} steps, guidance {cfg.sample.guidance:g}"
                  + ("; one class per row." if run.num_classes else "; one caption per row." if run.captioned else "."), "",
                  f"![samples after {grids[-1].stem.split('-')[-1].lstrip('0')} images](samples/{grids[-1].name})", ""]
        if len(grids) > 1:
            parts += ["Over training: " + ", ".join(f"[{int(g.stem.split('-')[-1]):,}](samples/{g.name})" for g in grids), ""]
    parts += _starting_point(run_dir, cfg.finetune)
    final = [r for r in evals if not r.get("during_training") and r.get("ema_length") is None]
    if final and run.is_autoencoder:
        parts += _reconstruction(final[-1])
    elif final:
        parts += _evaluation(run_dir, final[-1], [r for r in evals if r.get("during_training")], cfg.eval.every_images,
                             cfg.eval.best_metric)
    parts += _posthoc_ema(run_dir)
    parts += _human_ratings(_read_json(run_dir / "human-ratings.json"))
    parts += ["## Reproduce", "", "```", f"difftrain train --config {run_dir / 'config.yaml'} --out NEW_RUN",
              f"difftrain eval {run_dir}" if run.is_autoencoder else f"difftrain sample {run_dir} --n 100 --out samples.npz",
              "```", "",
              "<details><summary>Full config</summary>", "", "```yaml",
              yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip(), "```", "</details>", "",
              f"_Report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._", ""]
    path = run_dir / "README.md"
    atomic.write_text(path, front_matter(run, final[-1] if final else None) + "\n" + "\n".join(parts))
    return path
