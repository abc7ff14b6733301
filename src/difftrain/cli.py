"""The `difftrain` command: thin verbs that parse, validate and call the library."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from difftrain.progress import Progress, status, stderr_console
from difftrain.errors import UserError
from difftrain.config import PRESETS

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Train, sample and evaluate diffusion models end to end.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect datasets.")
app.add_typer(data_app, name="data")
rate_app = typer.Typer(no_args_is_help=True, help="Human ratings in the browser: runs compared in pairs, real or "
                       "generated (HYPE), faithfulness; rankings with 95% intervals (docs/rate.md).")
app.add_typer(rate_app, name="rate")
console = stderr_console()
out = Console()


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


@data_app.command("prepare", epilog="Examples: `difftrain data prepare ./my_images --out data/mine --resolution 32 --channels 3`  \n"
                                    "`difftrain data prepare points.csv --kind points --label-column label --out data/points`  \n"
                                    "`difftrain data prepare prices.csv --kind timeseries --window 24 --out data/stocks`  \n"
                                    "`difftrain data prepare tinyshakespeare.txt --kind text --tokenizer char --out data/shakespeare`  \n"
                                    "`difftrain data prepare ./photos --captions ./photos/metadata.jsonl --out data/cap`")
def data_prepare(
    source: str = typer.Argument(..., help="'digits' (built in), a folder of images (class subfolders = labels), a folder/file of MNIST-style IDX files, "
                                 "a segmentation folder: images/ and masks/ with matching names (masks: class-index PNGs), "
                                 "optional labels.csv (file,label) and mask_classes.txt (docs/segmentation.md); "
                                 "or points: a CSV/Parquet table of numeric columns, or a built-in set (moons, circles, swissroll, "
                                 "gaussians25, gaussian_mixture); or series (--kind timeseries): a CSV/Parquet/.npy file of "
                                 "numeric columns, or a built-in set (sines, co2, sunspots, macrodata); or tables (--kind tabular): a CSV/Parquet "
                                 "file of mixed numeric and categorical columns, or a built-in table (wine, breast_cancer, adult_like); or text "
                                 "(--kind text): a UTF-8 text file, JSON lines (.jsonl, with --field and --label-field), or the built-in generated sums."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to create for the prepared dataset."),
    kind: Optional[str] = typer.Option(None, help="image, segmentation, points, timeseries, tabular or text; default: what the source is (a "
                                       "series set's name: timeseries; a built-in table's name: tabular; a table or a point set's name: points; anything else: images)."),
    label_column: Optional[str] = typer.Option(None, help="Points: the column of class labels (the others are the coordinates)."),
    columns: Optional[str] = typer.Option(None, help="Points: the coordinate columns, comma-separated (default: all but the label)."),
    n: Optional[int] = typer.Option(None, help="Points: how many points a built-in set draws (default 10,000); sines: how many windows."),
    window: Optional[int] = typer.Option(None, help="Series: steps per window (default 24)."),
    stride: Optional[int] = typer.Option(None, help="Series: steps between the starts of consecutive windows (default 1)."),
    time_column: Optional[str] = typer.Option(None, "--time-column", help="Series: the column of timestamps (parsed, checked increasing)."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Series: the column naming each row's series (many series in one file)."),
    scaling: Optional[str] = typer.Option(None, help="Series: per-channel scaling fitted on the training split, minmax (default) or standard."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Series: keep empty or NaN cells as gaps (trains imputation "
                                       "around them) instead of refusing the file."),
    target: Optional[str] = typer.Option(None, help="Tables: the column to predict; a categorical target becomes the class labels "
                                         "(sample --where target=value)."),
    types: Optional[str] = typer.Option(None, help="Tables: column types where inference is wrong, e.g. zip=categorical,age=integer "
                                        "(numeric, integer, categorical, boolean, datetime), or a .json/.yaml schema file "
                                        "(column: type; a prepared manifest.json works too)."),
    na_values: Optional[str] = typer.Option(None, "--na-values", help="Tables: further cell texts that mean missing, comma-separated (e.g. '?')."),
    max_categories: Optional[int] = typer.Option(None, "--max-categories", help="Tables: refuse a categorical column with "
                                                 "more distinct values than this (default 1000; an id or free text?)."),
    test_file: Optional[Path] = typer.Option(None, "--test-file", help="Tables: held-out rows from this file (the source's own "
                                             "test split, e.g. adult.test) instead of --test-fraction."),
    tokenizer: Optional[str] = typer.Option(None, help="Text: char (the text's distinct characters, default), byte (UTF-8 bytes) "
                                            "or bpe:N (a byte-level BPE of N tokens trained here on the training text)."),
    block: Optional[int] = typer.Option(None, help="Text: tokens per training sequence (default 256)."),
    field: Optional[str] = typer.Option(None, help="Text from JSON lines (.jsonl): the key holding each document's text (default text)."),
    label_field: Optional[str] = typer.Option(None, "--label-field", help="Text from JSON lines: the key holding each document's "
                                              "class (topic, sentiment...): one document per block, class-conditional training."),
    resolution: Optional[int] = typer.Option(None, help="Square output size; default: the images' own size when they all share it."),
    channels: Optional[int] = typer.Option(None, help="1 (grayscale) or 3 (RGB); default: the source's."),
    fit: Optional[str] = typer.Option(None, help="Images: how to make them square, 'crop' (center crop, default) or 'pad'."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many images."),
    classes: Optional[str] = typer.Option(None, help="Keep only these classes, comma-separated names (e.g. 0,1,2,3,4); relabelled in this order."),
    class_names: Optional[str] = typer.Option(None, "--class-names", help="Images: names for the classes, in label "
                                              "order (after --classes): comma-separated, or a file with one per line; "
                                              "used in grids, reports, --class, synth folders and exports."),
    captions: Optional[Path] = typer.Option(None, help="Images: a JSON-lines file of {\"file_name\", \"text\"} (Hugging Face "
                                            "imagefolder's metadata.jsonl): each image's caption, for text-to-image."),
    test_fraction: Optional[float] = typer.Option(None, help="Fraction held out for evaluation (default 0.1; tables 0.2); "
                                                  "ignored when the source has its own test split."),
    seed: int = typer.Option(0, help="Seed of the train/test split."),
    strict: bool = typer.Option(False, help="Fail if any input file is rejected."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
) -> None:
    """Validate a source and write it once as arrays + manifest.json; the source is never modified."""
    from difftrain.data import describe_dataset
    from difftrain.modalities import prepare

    given = dict(resolution=resolution, channels=channels, fit=fit, limit=limit, label_column=label_column, n=n,
                 classes=[c.strip() for c in classes.split(",")] if classes else None, class_names=class_names,
                 columns=[c.strip() for c in columns.split(",")] if columns else None,
                 window=window, stride=stride, time_column=time_column, id_column=id_column, scaling=scaling,
                 allow_missing=allow_missing, target=target, types=types, test_file=test_file, test_fraction=test_fraction,
                 max_categories=max_categories, captions=captions, tokenizer=tokenizer, block=block, field=field, label_field=label_field,
                 na_values=[v.strip() for v in na_values.split(",")] if na_values else None)
    # Only what was given, so each kind keeps its own defaults and refuses options it does not take.
    ds = prepare(source, out_dir, kind=kind, seed=seed, strict=strict, overwrite=overwrite,
                 **{k: v for k, v in given.items() if v is not None and v is not False})
    rejected = ds.manifest.get("rejected", [])
    for note in ds.manifest.get("warnings", []):
        _warn(note)
    for item in rejected:
        _warn(f"rejected {item.get('path') or 'row ' + str(item.get('row'))}: {item['reason']}")
    _print_info(describe_dataset(ds))
    console.print(f"prepared {out_dir} ({len(rejected)} input(s) rejected)")


PROCESSES_HELP = ("Run on N processes of this machine through `accelerate launch` (one per GPU, or CPU cores "
                  "shared out); for several machines use `accelerate launch -m difftrain ...` (docs/scale.md).")


def _new_run_folder(out_dir: Path, cfg) -> bool:
    """A new run's folder and its config as given, from the command's first second (`ls`, TensorBoard, `difftrain
    runs`); the trainer writes the config it settles on over it. Whether this command made the folder."""
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    from difftrain.config import save_config

    try:
        out_dir.mkdir(parents=True)
    except FileExistsError:
        return False
    save_config(cfg, out_dir / "config.yaml")
    return True


def _in_processes(processes: int, device: str) -> None:
    """With --processes N > 1, run this command again under `accelerate launch` and exit with its code."""
    if processes > 1:
        from difftrain.launch import relaunch

        raise typer.Exit(relaunch(processes, device=device))


def _config(preset: Optional[str], file: Optional[Path], overrides: list[str], data: Optional[str], base=None):
    """The config of a verb: preset, file and `key=value` overrides (over `base`), then --data."""
    from difftrain.config import load_config

    cfg = load_config(preset, file, list(overrides), base=base)
    if data:
        # Set directly, not as an override: a path is no YAML value ("2024", "no", "#x").
        cfg.data.path = data
    return cfg


def _explicit_keys(overrides: list[str], file: Optional[Path]) -> set[str]:
    """The setting keys the user named (key=value arguments and the YAML file's), e.g. {"model.unet.channels"}."""
    import yaml

    keys = {arg.split("=", 1)[0].strip() for arg in overrides if "=" in arg}

    from pydantic import BaseModel

    from difftrain.config import Config

    def walk(node: dict, section: type[BaseModel], prefix: str) -> None:
        for key, value in node.items():
            # Sections (and per-architecture subsections) hold settings; a setting whose value is a mapping is one key.
            field = section.model_fields.get(key)
            inner = field.annotation if field is not None else None
            if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(value, inner, f"{prefix}{key}.")
            else:
                keys.add(f"{prefix}{key}")

    if file and file.is_file():
        loaded = yaml.safe_load(file.read_text())
        if isinstance(loaded, dict):
            walk(loaded, Config, "")
    return keys


def _print_info(info: dict) -> None:
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        table.add_row(Text(key, style="bold"), Text(json.dumps(value) if isinstance(value, (dict, list)) else str(value)))
    out.print(table)


@data_app.command("info", epilog="Example: `difftrain data info data/mine --json`")
def data_info(path: Path = typer.Argument(..., help="A prepared dataset folder."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Summarise a prepared dataset."""
    from difftrain.data import describe_dataset, load_dataset

    info = describe_dataset(load_dataset(path))
    print(json.dumps(info, indent=2)) if as_json else _print_info(info)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
             epilog="Examples: `difftrain train --preset digits --out runs/digits train.duration_images=20000`  \n"
                    "`difftrain train --preset mnist --data data/mnist --out runs/mnist`  \n"
                    "`difftrain train --out runs/digits --resume`  \n"
                    "`difftrain train --preset autoencoder --data data/cap --out runs/vae`, then "
                    "`difftrain train --preset text2image --data data/cap --latent runs/vae --out runs/ldm`  \n"
                    "`difftrain train --preset text2image --data data/cap --text-encoder models/clip-text --out runs/clip`  \n"
                    "`difftrain train --preset mnist --data data/mnist --out runs/mnist --processes 2` (GPUs or CPU cores)")
def train(
    ctx: typer.Context,
    preset: Optional[str] = typer.Option(None, help=f"Start from a preset: {', '.join(PRESETS)}."),
    config: Optional[Path] = typer.Option(None, help="YAML config file (applied over the preset)."),
    data: Optional[str] = typer.Option(None, help="Prepared dataset folder (sets data.path)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<preset>-<time>)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest valid checkpoint."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    auto_batch: bool = typer.Option(False, "--auto-batch", help="First find the largest micro-batch that fits in memory "
                                    "(as `difftrain doctor` does) and set train.accumulation to keep the batch size."),
    init: Optional[str] = typer.Option(None, help="Start from these weights: a run, a checkpoint folder, a diffusers "
                                       "pipeline/UNet folder, or a text-to-image pipeline folder (Stable Diffusion's "
                                       "layout, e.g. from `difftrain export`); the network and formulation come from it "
                                       "(finetune.init)."),
    replay: Optional[float] = typer.Option(None, help="With --init RUN: this fraction of every batch is the run's own "
                                           "training data, against forgetting (finetune.replay)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="With --init: start even if some weights do not fit "
                                       "the network (they are reported)."),
    processes: int = typer.Option(1, "--processes", min=1, help=PROCESSES_HELP),
    latent: Optional[str] = typer.Option(None, help="Latent diffusion: diffuse in the latent space of this autoencoder "
                                         "run (`--preset autoencoder`) or checkpoint, or of a diffusers AutoencoderKL "
                                         "folder (or a pipeline's vae/); the images are encoded once (model.latent)."),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="Captioned images: a local pretrained text "
                                               "model folder (transformers format with its tokenizer, e.g. a CLIPTextModel), "
                                               "frozen, instead of a caption encoder trained from scratch (model.text_encoder)."),
) -> None:
    """Train a diffusion model, from scratch or from --init weights; extra `key=value` arguments override
    config fields (see `difftrain config`), e.g. finetune.lora_rank=8 or finetune.train_only=[up_blocks]."""
    from difftrain.config import read_config

    if resume and out_dir is None:
        raise UserError("--resume needs --out RUN, the run to continue")
    if resume and init:
        raise UserError("--init starts a new run from weights; --resume continues RUN from its own checkpoint: pass one of them")
    if resume and latent:
        raise UserError("--latent chooses a new run's latent space; a resumed run keeps its own (RUN/autoencoder.safetensors): "
                        "leave --latent out with --resume")
    flags = [f"finetune.replay={replay}"] * (replay is not None) + ["finetune.allow_partial=true"] * allow_partial
    # Absolute, so that a run started elsewhere still finds them.
    flags += [f"model.{key}={Path(value).resolve()}" for key, value in (("latent", latent), ("text_encoder", text_encoder)) if value]
    base = None
    if resume and ((out_dir / "config.yaml").is_file() or (out_dir / "checkpoints").is_dir()):
        base = read_config(out_dir / "config.yaml")
    elif resume:  # stopped before its first save (a kill in its first seconds): nothing to continue, so start it
        _warn(f"{out_dir} holds no run to resume yet (it was stopped before it saved anything): starting it")
    cfg = _config(preset, config, [*ctx.args, *flags], data, base=base)
    several = processes > 1 or "LOCAL_RANK" in os.environ
    if out_dir is None and several:
        raise UserError("training in several processes needs --out RUN, so that every process writes the same run")
    if auto_batch and several:
        raise UserError("--auto-batch measures one process; with several, run `difftrain doctor` first and set "
                        "train.accumulation from its fit")
    _in_processes(processes, cfg.train.device)
    source = None
    if not resume and (init or cfg.finetune.init):
        from difftrain.pretrained.source import config_for_source, open_pretrained

        # Absolute, so that resuming or replaying from another folder still finds it.
        cfg.finetune.init = str(Path(init or cfg.finetune.init).resolve())
        source = open_pretrained(cfg.finetune.init, warn=_warn)
        cfg = config_for_source(cfg, source, explicit=_explicit_keys(ctx.args, config))
    if cfg.finetune.replay_data:
        cfg.finetune.replay_data = str(Path(cfg.finetune.replay_data).resolve())
    if auto_batch:
        _apply_auto_batch(cfg, preset)
    if out_dir is None:
        import time

        out_dir = Path("runs") / f"{preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Before the libraries of training load (seconds): a new run's folder, and the first line, at once.
    made = not resume and _new_run_folder(out_dir, cfg)
    console.print(f"{'resuming' if resume else 'starting'} {out_dir} (data {cfg.data.path}"
                  + (f", preset {preset}" if preset else "") + "): loading the training libraries", highlight=False)
    from difftrain.training.trainer import train as run_training

    try:
        result = run_training(cfg, out_dir, resume=resume, progress=progress, console=console, source=source)
    except UserError:
        if made and [p.name for p in out_dir.iterdir()] == ["config.yaml"]:  # refused before it began: nothing left
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: checkpoints already written stay valid; continue with "
                      f"`difftrain train --out {out_dir} --resume`")
        raise typer.Exit(130) from None
    from accelerate import PartialState

    from difftrain.report.card import write_report

    if PartialState().is_main_process:
        console.print(f"trained {result.images:,} images in {result.seconds:.0f} s ({result.images_per_second:.0f} img/s), "
                      f"final loss {result.final_loss:.4f}, {result.nonfinite_steps} non-finite step(s) skipped")
        console.print(f"report: {write_report(out_dir)}")
        out.print(str(out_dir))


@app.command(epilog="Examples: `difftrain sample runs/digits --n 100 --out samples.npz --sampler dpmpp_2m --steps 20 --guidance 1.5`  \n"
                     "`difftrain sample runs/stocks --context recent.csv --horizon 24 --n 100 --out forecast.npz`  \n"
                     "`difftrain sample runs/stocks --impute gappy.csv --out filled.csv`  \n"
                     "`difftrain sample runs/cap --prompt 'a 3 to the left of a 7' --n 16 --guidance 3 --out s.npz`")
def sample(
    run: Path = typer.Argument(..., help="Run directory."),
    n: int = typer.Option(100, "--n", min=1, help="Number of samples."),
    out_file: Path = typer.Option(..., "--out", help="Samples file to write (.npz; tables also .csv or .parquet); a PNG "
                                  "preview is written beside it."),
    sampler: Optional[str] = typer.Option(None, help="heun, euler, dpmpp_2m, ddim or ddpm (default: the run's config)."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: the run's config)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance weight; 1 = none."),
    temperature: Optional[float] = typer.Option(None, help="Text: divide the log-probabilities by this before each draw "
                                                "(below 1: likelier, less varied text; default: sample.temperature, 1)."),
    class_label: Optional[int] = typer.Option(None, "--class", help="Sample only this class index (default: balanced over classes)."),
    where: Optional[List[str]] = typer.Option(None, help="Tables: only rows with this column value, COLUMN=VALUE (e.g. "
                                              "'income=>50K'; numbers also <, <=, >, >=); repeat for several. On the "
                                              "target it conditions the model, on other columns it keeps the rows that match."),
    seed: int = typer.Option(0, help="Seed of the noise."),
    checkpoint: str = typer.Option("latest", help="'latest' or a checkpoint folder."),
    raw_weights: bool = typer.Option(False, "--raw-weights", help="Use the raw weights instead of the EMA."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    processes: int = typer.Option(1, "--processes", min=1, help=PROCESSES_HELP),
    context: Optional[Path] = typer.Option(None, help="Series: forecast after this file's last rows (CSV/Parquet/.npy of the "
                                           "run's columns); --n paths, with quantiles, into --out (.npz)."),
    horizon: Optional[int] = typer.Option(None, min=1, help="Series: steps to forecast after --context (context + horizon = window)."),
    impute: Optional[Path] = typer.Option(None, help="Series: fill this file's empty or NaN cells; --out .csv (the table, filled "
                                          "with the median of --n draws) or .npz (with every draw)."),
    prompt: Optional[str] = typer.Option(None, help="Text: every sample starts with this text. Captioned images: the caption "
                                         "every sample is drawn for."),
    infill: Optional[str] = typer.Option(None, help="Text: a template after --prompt, [MASK] one token to generate and "
                                         "[MASK]{k} k of them, e.g. '[MASK]{40} thou art'; the rest of the block is generated."),
    length: Optional[int] = typer.Option(None, min=1, help="Text: tokens per sample (default: the model's block); longer "
                                         "texts grow half a block at a time, each block conditioned on the text before."),
) -> None:
    """Generate samples into the samples file: images uint8 (N,H,W,C), points float32 (N,D) or series float32 (N,L,C),
    labels int64 (N,), JSON meta; series runs also forecast (--context, --horizon) and impute (--impute)."""
    if context is not None or impute is not None or horizon is not None:
        return _sample_observed(run, n, out_file, context, horizon, impute, sampler, steps, seed, checkpoint, device)
    if (prompt is not None and not _has_captions(run)) or infill is not None or length is not None:
        return _sample_given_text(run, n, out_file, prompt, infill, length, class_label, guidance, temperature, sampler,
                                  steps, seed, checkpoint, device)
    _in_processes(processes, device)
    from difftrain.distributed import own_images
    from difftrain.evaluation.run_eval import sample_run
    from difftrain.store.run import open_run

    from difftrain.sampling import check_fits_in_memory

    r = open_run(run)
    check_fits_in_memory(n, r.modality)
    keep = None
    if where:
        if class_label is not None:
            raise UserError("--where and --class both pick rows: give one")
        class_label, keep = r.modality.where(list(where), r.class_names)
    if class_label is not None and not 0 <= class_label < r.num_classes:
        raise UserError(f"--class {class_label}: " + (f"choose 0..{r.num_classes - 1}" if r.num_classes else "the model is unconditional"))
    spec = r.sampling_spec(seed, sampler=sampler, steps=steps, guidance=guidance, temperature=temperature)
    state, dev = _join_launch(device)
    with Progress(console=console, disable=not state.is_main_process) as bar:
        # this process's share of n; with --where on a plain column, as many as it takes
        task = bar.add_task("sample", total=own_images(n, r.config.sample.batch_size) if keep is None else None)
        result = sample_run(run, n, spec, out_file, checkpoint=checkpoint, class_label=class_label, ema=not raw_weights,
                            device=dev, progress=lambda k: bar.advance(task, k), warn=_warn, keep=keep,
                            keep_what=" and ".join(where or []), prompts=None if prompt is None else [prompt])
    if state.is_main_process:
        shared = f", in {state.num_processes} processes" if state.num_processes > 1 else ""
        console.print(f"{n} samples, {spec.network_evaluations} network evaluations each{shared}, from {result['meta']['checkpoint']}")
        if "where" in result["meta"]:
            w = result["meta"]["where"]
            console.print(f"kept the first {n} of the {w['drawn']} drawn with {w['conditions']} ({w['rate']:.1%} matched)")
        out.print(str(out_file))


def _has_captions(run: Path) -> bool:
    """Whether the run's data is captioned images (--prompt is then a caption, not the start of a text)."""
    from difftrain.store.run import open_run

    return open_run(run).modality.captions is not None


def _sample_given_text(run: Path, n: int, out_file: Path, prompt: Optional[str], infill: Optional[str], length: Optional[int],
                       class_label: Optional[int], guidance: Optional[float], temperature: Optional[float],
                       sampler: Optional[str], steps: Optional[int],
                       seed: int, checkpoint: str, device: str) -> None:
    from difftrain.observed_sampling import complete_text, text_windows
    from difftrain.store.run import open_run

    r = open_run(run)
    spec = r.sampling_spec(seed, sampler=sampler, steps=steps, guidance=guidance, temperature=temperature)
    with Progress(console=console) as bar:
        task = bar.add_task("complete", total=n * text_windows(length or r.modality.shape[0], r.modality.shape[0]))
        result = complete_text(run, prompt, infill, n, spec, out_file, length=length, class_label=class_label,
                               checkpoint=checkpoint, device=_device(device), progress=lambda k: bar.advance(task, k),
                               warn=_warn)
    console.print(f"{n} sample(s), {result['meta']['generated_tokens']} token(s) generated in each, every given one kept")
    out.print(str(out_file))


def _sample_observed(run: Path, n: int, out_file: Path, context: Optional[Path], horizon: Optional[int], impute: Optional[Path],
                     sampler: Optional[str], steps: Optional[int], seed: int, checkpoint: str, device: str) -> None:
    from difftrain.observed_sampling import forecast, impute as impute_file
    from difftrain.store.run import open_run

    if (context is None) == (impute is None):
        raise UserError("give either --context FILE (with --horizon) to forecast, or --impute FILE to fill gaps")
    if context is not None and horizon is None:
        raise UserError("--context needs --horizon: the steps to forecast")
    if impute is not None and horizon is not None:
        raise UserError("--horizon is for --context (forecasting); --impute fills the file's own gaps")
    spec = open_run(run).sampling_spec(seed, sampler=sampler, steps=steps)
    dev = _device(device)
    with Progress(console=console) as bar:
        task = bar.add_task("forecast" if context else "impute", total=None)
        advance = lambda k: bar.advance(task, k)  # noqa: E731
        if context is not None:
            result = forecast(run, context, horizon, n, spec, out_file, checkpoint=checkpoint, device=dev, progress=advance, warn=_warn)
            console.print(f"{n} paths of {horizon} steps after the last rows of {context}; quantiles "
                          f"{', '.join(f'{q:g}' for q in result['meta']['quantile_levels'])} in {out_file}")
        else:
            result = impute_file(run, impute, n, spec, out_file, checkpoint=checkpoint, device=dev, progress=advance, warn=_warn)
            console.print(f"filled {result['meta']['filled_cells']} cell(s) of {impute} in {result['meta']['gappy_windows']} "
                          f"window(s), each the median of {n} draw(s)")
    out.print(str(out_file))


@app.command(epilog="Example: `difftrain export runs/digits --out digits-diffusers`, then in Python "
             "`DiffusionPipeline.from_pretrained('digits-diffusers')`")
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write."),
    format: str = typer.Option("diffusers", "--format", help="Only 'diffusers': model_index.json, unet/ and scheduler/."),
    checkpoint: str = typer.Option("latest", help="'latest', 'best' or a checkpoint folder."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
) -> None:
    """Write a checkpoint (EMA weights, LoRA merged in) as a diffusers pipeline folder; `train --init` reads it back."""
    from difftrain.pretrained.export import export_run

    if format != "diffusers":
        raise UserError(f"--format {format} is not supported; the one format is 'diffusers'")
    path = export_run(run, out_dir, checkpoint=checkpoint, overwrite=overwrite, warn=_warn)
    console.print(f"exported to {path}: load it with DiffusionPipeline.from_pretrained({str(path)!r}); see its README.md")
    out.print(str(path))


@app.command(epilog="Examples: `difftrain synth runs/digits --out synth/digits --per-class 100 --filter memorization,dedup,confidence:0.9`  \n"
                    "`difftrain synth runs/digits --out synth/digits --per-class 100 --classes 3,5 --sampler dpmpp_2m --steps 20 --guidance 1.5`  \n"
                    "`difftrain synth runs/unlabelled --out synth/u --n 500 --processes 2` (an unconditional model)")
def synth(
    run: Path = typer.Argument(..., help="Run directory."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write (class subfolders of PNGs, labels.csv, manifest.json, README.md); "
                                 "running the same command again continues an interrupted one."),
    per_class: Optional[int] = typer.Option(None, "--per-class", min=1, help="Images to keep of each class (class-conditional models)."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Images to keep in all (unconditional models)."),
    classes: Optional[str] = typer.Option(None, help="Only these classes, comma-separated names (default: all the model's)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance weight; 1 = none (default: the run's config, "
                                             "or 2 for a run trained with data.unlabelled and configured without guidance)."),
    temperature: Optional[float] = typer.Option(None, help="Text: divide the log-probabilities by this before each draw "
                                                "(below 1: likelier, less varied text; default: sample.temperature, 1)."),
    sampler: Optional[str] = typer.Option(None, help="heun, euler, dpmpp_2m, ddim or ddpm (default: the run's config)."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: the run's config)."),
    filters: Optional[str] = typer.Option(None, "--filter", help="Comma list, applied in this order: memorization[:R] (near-copies of "
                                          "training images, ratio R = 1/3), dedup[:D] (duplicates closer than pixel L2 D; default "
                                          "0.02 x sqrt(pixel values)), confidence[:T] (a classifier of the run's labelled data gives "
                                          "the intended class a probability below T = 0.9; images: a ResNet trained to convergence). Rejected samples are replaced."),
    checkpoint: Optional[str] = typer.Option(None, help="'latest' (the default), 'best' or a checkpoint folder."),
    seed: int = typer.Option(0, help="Seed of the noise."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Samples per batch (default: the run's sample.batch_size)."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    processes: int = typer.Option(1, "--processes", min=1, help=PROCESSES_HELP),
    optimize_for: Optional[str] = typer.Option(None, "--optimize-for", help="utility: first choose the guidance, checkpoint, "
                                               "confidence filter and count per class (at most --per-class) by a "
                                               "classifier's accuracy on real training images held back (docs/synth.md)."),
    overwrite: bool = typer.Option(False, help="Start --out again (only a folder written by `difftrain synth` is replaced)."),
    report: bool = typer.Option(True, help="Write the utility and privacy report (needs the run's training data)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's summary as JSON."),
) -> None:
    """Generate a labelled synthetic dataset: PNG files a classifier (or segmenter) trains on, with the provenance of
    every file and filters against copies, duplicates and off-class samples (docs/synth.md)."""
    _in_processes(processes, device)
    from difftrain.store.run import open_run
    from difftrain.synth.generate import synth_spec, synthesize

    if optimize_for is not None and guidance is not None:
        raise UserError("--optimize-for utility chooses the guidance: leave --guidance out")
    spec = synth_spec(open_run(run), seed, sampler=sampler, steps=steps, guidance=guidance, temperature=temperature)
    state, dev = _join_launch(device)
    try:
        with Progress(console=console, disable=not state.is_main_process) as bar:
            task = bar.add_task("synth: kept", total=None)
            manifest = synthesize(run, out_dir, per_class=per_class, n=n, spec=spec, filters=filters, checkpoint=checkpoint,
                                  classes=[c.strip() for c in classes.split(",")] if classes else None,
                                  batch_size=batch_size, device=dev, overwrite=overwrite, report=report,
                                  optimize_for=optimize_for,
                                  progress=lambda kept, total: bar.update(task, completed=kept, total=total),
                                  report_progress=lambda stage: bar.update(task, description=stage), warn=_warn)
    except KeyboardInterrupt:
        if state.is_main_process:
            console.print(f"[yellow]interrupted[/]: the files written so far stay; run the same command again to continue {out_dir}")
        raise typer.Exit(130) from None
    if state.is_main_process:
        _print_synth(manifest, out_dir, state.num_processes, as_json)


def _print_synth(manifest: dict, out_dir: Path, num_processes: int, as_json: bool) -> None:
    if as_json:
        summary = {key: manifest[key] for key in ("totals", "counts", "filters", "checkpoint", "search", "report")}
        print(json.dumps({"out": str(out_dir), **summary}, indent=2))
        return
    totals = manifest["totals"]
    removed = ", ".join(f"{name} {count}" for name, count in totals["removed"].items())
    shared = f", in {num_processes} processes" if num_processes > 1 else ""
    if manifest["search"]:
        search, chosen = manifest["search"], manifest["search"]["chosen"]
        confidence = "off" if chosen["confidence"] is None else f"{chosen['confidence']:g}"
        console.print(f"chosen for utility: guidance {chosen['guidance']:g}, {Path(chosen['checkpoint']).name}, confidence "
                      f"filter {confidence}, {chosen['per_class']} per class: held-back accuracy "
                      f"{search['chosen_trial']['accuracy']:.4f} against {search['real_only']['accuracy']:.4f} for the real "
                      f"images alone ({len(search['trials'])} trials; README.md lists them)")
    guided = f" at guidance {manifest['guidance']:g}" if manifest["guidance"] != 1 else ""
    console.print(f"kept {totals['kept']} of {totals['generated']} samples" + (f" (removed: {removed})" if removed else "")
                  + f"{shared}, from {manifest['checkpoint']}{guided}")
    out.print(str(out_dir))


def _join_launch(device: str):
    """(accelerate's PartialState, this process's device). Under `accelerate launch` it joins the other
    processes: without a GPU accelerate must be told to join CPU processes (gloo); with one, it joins
    them through the GPUs, and each process samples on its own GPU (cuda:1 for the second)."""
    import torch
    from accelerate import PartialState

    from difftrain.distributed import WAIT_FOR_MAIN, leave_at_exit

    dev = _device(device)
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=WAIT_FOR_MAIN)
    if state.num_processes > 1:
        leave_at_exit()
        if dev == state.device.type:
            dev = str(state.device)
    return state, dev


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is usable here; use --device cpu")
    return name


@app.command("eval", epilog="Examples: `difftrain eval runs/digits`  \n"
                             "`difftrain eval runs/digits --checkpoints all --sampler dpmpp_2m --steps 5,10,20,50 --metrics fid,kid,pr`  \n"
                             "`difftrain eval --samples other_tool.npz --data data/digits --json`  \n"
                             "`difftrain eval runs/cap --prompts prompts.txt --guidance 1,2,4` (a guidance sweep)  \n"
                             "`difftrain eval runs/vae` (an autoencoder: PSNR, SSIM, rFID)  \n"
                             "`difftrain eval runs/mnist --ema-length 0.03,0.05,0.08,0.12` (post-hoc EMA)")
def evaluate(
    run: Optional[Path] = typer.Argument(None, help="Run directory (or pass --samples and --data instead)."),
    samples: Optional[Path] = typer.Option(None, help="Evaluate this samples file (.npz: images uint8 (N,H,W,C) or points float32 (N,D), optional labels) instead of a run."),
    data: Optional[Path] = typer.Option(None, help="Prepared dataset to score against (default for a run: its own)."),
    checkpoints: str = typer.Option("latest", help="'latest', 'best' (kept by evaluation during training), 'all' or a checkpoint folder."),
    sampler: Optional[str] = typer.Option(None, help="heun, euler, dpmpp_2m, ddim or ddpm (default: the run's config)."),
    steps: Optional[str] = typer.Option(None, help="Sampling steps, one or a comma list such as 5,10,20,50 (default: the run's config)."),
    n: Optional[int] = typer.Option(None, "--n", min=10, help="Samples per evaluation (default: eval.n_samples)."),
    metrics: Optional[str] = typer.Option(None, help="Comma list of fid, kid, pr, dist, cas, mem, nll; text also judge (default: eval.metrics)."),
    guidance: Optional[str] = typer.Option(None, help="Guidance weight, one or a comma list such as 1,2,4: a sweep of "
                                           "quality against prompt or label following (RUN/eval/metrics-vs-guidance.png)."),
    prompts: Optional[Path] = typer.Option(None, help="Captioned images: a text file of prompts, one per line, to sample "
                                           "for (default: the held-out captions); prompt following is scored when each "
                                           "is the caption of training images of one class."),
    temperature: Optional[float] = typer.Option(None, help="Text: divide the log-probabilities by this before each draw "
                                                "(below 1: likelier, less varied text; default: sample.temperature, 1)."),
    ema_length: Optional[str] = typer.Option(None, "--ema-length", help="Post-hoc EMA: score each checkpoint at these "
                                             "EMA lengths (sigma_rel, a comma list such as 0.03,0.05,0.08,0.12), "
                                             "reconstructed from a run trained with train.posthoc_ema; the best is kept "
                                             "in RUN/posthoc/best.json, each as RUN/posthoc/ckpt-...-ema-LENGTH/."),
    seed: int = typer.Option(0, help="Seed of the noise and of the real-image subset of the floors."),
    extractor: Optional[str] = typer.Option(None, help="Feature space: domain, inception or a TorchScript file (default: eval.extractor)."),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="Local file of the standard FID Inception-v3 weights."),
    nll_images: Optional[int] = typer.Option(None, "--nll-images", min=1, help="Held-out images for nll (default: eval.nll_images); "
                                             "each costs 2 x eval.nll_steps network evaluations with gradients."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    processes: int = typer.Option(1, "--processes", min=1, help=PROCESSES_HELP),
) -> None:
    """Score samples against held-out data: FID, KID, precision/recall/density/coverage (each next to its
    real-data floor), classification accuracy score, memorization and likelihood. A run's results are
    appended to its metrics.jsonl and plotted in RUN/eval/."""
    _in_processes(processes, device)
    from difftrain.evaluation.run_eval import evaluate_run, evaluate_samples_file

    state, dev = _join_launch(device)
    main = state.is_main_process
    if samples is not None:
        if run is not None or data is None:
            raise UserError("--samples FILE needs --data DIR (a prepared dataset) and no run directory")
        # These make samples; a samples file already holds them.
        ignored = [name for name, value in (("--checkpoints", checkpoints != "latest"), ("--sampler", sampler), ("--steps", steps),
                                            ("--n", n), ("--guidance", guidance), ("--temperature", temperature),
                                            ("--ema-length", ema_length)) if value]
        if ignored:
            raise UserError(f"{', '.join(ignored)}: these choose how a run is sampled; a --samples file is scored as it is")
        if not main:
            return  # nothing to share out: the main process scores the file
        with status("evaluating samples", console):
            records = [evaluate_samples_file(samples, data, metrics=metrics, seed=seed, extractor=extractor,
                                             inception_weights=inception_weights, device=dev)]
    else:
        if run is None:
            raise UserError("give a run directory, or --samples FILE --data DIR")
        from difftrain.report.card import write_report

        step_list = _int_list(steps, "--steps") if steps else None
        guidances = _float_list(guidance, "--guidance") if guidance else None
        ema_lengths = _float_list(ema_length, "--ema-length") if ema_length else None
        with Progress(console=console, transient=True, disable=not main) as bar:
            # Images this process sampled, over all checkpoints and step counts.
            task = bar.add_task("sampling (then scoring)", total=None)
            records = evaluate_run(run, checkpoints=checkpoints, steps=step_list, sampler=sampler, guidance=guidances,
                                   temperature=temperature, n=n,
                                   metrics=metrics, seed=seed, extractor=extractor, inception_weights=inception_weights,
                                   data=data, nll_images=nll_images, device=dev, progress=lambda k: bar.advance(task, k),
                                   warn=_warn, say=lambda message: console.print(message),
                                   prompts=None if prompts is None else _read_prompts(prompts), ema_lengths=ema_lengths)
        if not main:
            return  # the main process writes the report and prints
        if state.num_processes > 1:
            console.print(f"sampled in {state.num_processes} processes")
        write_report(run)
    if as_json:
        print(json.dumps(records, indent=2))  # always a list, one record per evaluation
        return
    _print_eval(records)


def _read_prompts(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompts {path}: cannot read it ({e}); give a UTF-8 text file, one prompt per line") from None
    if not any(lines):
        raise UserError(f"--prompts {path}: no prompts in it; write one per line")
    return [line for line in lines if line]


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {text}: give whole numbers separated by commas, e.g. 5,10,20,50") from None
    if not values or min(values) < 1:
        raise UserError(f"{option} {text}: every value must be at least 1")
    return values


def _float_list(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {text}: give numbers separated by commas, e.g. 1,2,4") from None
    if not values:
        raise UserError(f"{option} {text}: give at least one number")
    return values


def _eval_rows(records: list[dict], shown: dict, cell) -> Table:
    """Several evaluations: a column each (images, sampler, steps, n), then a floor column per sample count."""
    from rich import box

    floors = {r.get("n_samples"): r for r in records if any(floor and floor in r for _, floor in shown.values())}
    table = Table("metric", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for r in records:
        images = f"{r['images']:,}" if isinstance(r.get("images"), int) else "-"
        guided = f"\ng={r['guidance']:g}" if isinstance(r.get("guidance"), (int, float)) else ""
        guided += f"\nEMA {r['ema_length']:g}" if r.get("ema_length") is not None else ""
        table.add_column(f"{images}\n{r.get('sampler', '-')}\n{r.get('steps', '-')} steps{guided}\nn={r.get('n_samples')}", justify="right")
    for n_samples in floors:
        table.add_column(f"floor\nreal\ndata\nn={n_samples}", justify="right", style="dim")
    for title, (key, floor) in shown.items():
        table.add_row(title, *(cell(r.get(key)) for r in records), *(cell(r.get(floor)) if floor else "" for r in floors.values()))
    return table


def _print_tasks(r: dict, cell) -> None:
    """Forecasting and imputation scores beside the baselines measured in the same run."""
    from rich import box

    rows = [(f"forecast, {r['forecast_horizon']} steps", "forecast", ("var", "naive"))] if "forecast_crps" in r else []
    rows += [(f"impute, {r['impute_fraction']:.0%} hidden", "impute", (None, "interp"))] if "impute_crps" in r else []
    if not rows:
        return
    table = Table("task", "score", "model", "VAR", "naive / interpolation", box=box.SIMPLE_HEAD,
                  title=f"{r.get('forecast_windows') or r.get('impute_windows')} held-out windows, {r.get('forecast_paths') or r.get('impute_paths')} paths each")
    for title, prefix, (var, simple) in rows:
        for score in ("crps", "mae", "mse"):
            table.add_row(title if score == "crps" else "", score.upper(), cell(r.get(f"{prefix}_{score}")),
                          cell(r.get(f"{prefix}_{score}_{var}")) if var else "", cell(r.get(f"{prefix}_{score}_{simple}")))
    out.print(table)


def _print_eval(records: list[dict]) -> None:
    """The metrics beside their floors (the same metrics for real data), the extractor, the warnings."""
    from rich import box

    if "psnr" in records[0]:  # an autoencoder's reconstructions
        table = Table("checkpoint", "PSNR dB", "(resized)", "SSIM", "(resized)", "rFID", "(floor)", box=box.SIMPLE_HEAD,
                      title=f"reconstructions of {records[0]['n_reconstructed']:,} held-out images; baselines: resized to "
                            "the latent's size and back, and the real images")
        for r in records:
            table.add_row(Path(r["checkpoint"]).name, *(f"{r[k]:.4g}" if k in r else "-" for k in
                                                         ("psnr", "psnr_resize", "ssim", "ssim_resize", "rfid", "rfid_floor")))
        out.print(table)
        for warning in dict.fromkeys(w for r in records for w in r.get("warnings", [])):
            _warn(warning)
        return
    columns = {"FID": ("fid", "fid_floor"), "KID": ("kid", "kid_floor"), "precision": ("precision", "precision_floor"),
               "recall": ("recall", "recall_floor"), "density": ("density", "density_floor"), "coverage": ("coverage", "coverage_floor"),
               "sliced Wasserstein": ("sliced_wasserstein", "sliced_wasserstein_floor"),
               "energy distance": ("energy_distance", "energy_distance_floor"),
               "discriminative": ("discriminative", "discriminative_floor"), "predictive": ("predictive", "predictive_floor"),
               "correlational": ("correlational", "correlational_floor"),
               "CAS": ("cas", "cas_real"), "label agreement": ("label_agreement", "label_agreement_floor"),
               "memorized": ("memorized_fraction", "memorized_fraction_floor"),
               "NLL bits/dim": ("nll_bits_per_dim", None)}
    named = {key for keys in columns.values() for key in keys}
    for r in records:  # a modality's own scores (tables: column shape error...) beside their floors, by their keys
        for key, value in r.items():
            if isinstance(value, (int, float)) and f"{key}_floor" in r and key not in named:
                columns[key.replace("_", " ")] = (key, f"{key}_floor")
                named.add(key)
    shown = {title: keys for title, keys in columns.items() if any(isinstance(r.get(keys[0]), (int, float)) for r in records)}

    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, (int, float)) else "-"

    if len(records) == 1:  # one evaluation: a metric per row, beside its floor and the floor's spread
        r = records[0]
        table = Table("metric", "samples", "floor (real data)", box=box.SIMPLE_HEAD,
                      title=f"{r.get('sampler', '-')}, {r.get('steps', '-')} steps, {r.get('n_samples')} samples")
        for title, (key, floor) in shown.items():
            spread = r.get(f"{floor}_std") if floor else None
            table.add_row(title, cell(r.get(key)), (cell(r.get(floor)) if floor else "") + (f" ± {spread:.2g}" if spread else ""))
        out.print(table)
    else:
        out.print(_eval_rows(records, shown, cell))
    for r in records:
        _print_tasks(r, cell)
    first = records[0]
    if first.get("extractor"):
        accuracy = first.get("extractor_test_accuracy")
        out.print(f"features: {first['extractor']} (weights sha256 {first['extractor_sha256'][:12]})"
                  + (f", held-out accuracy {accuracy:.1%}" if isinstance(accuracy, float) else "")
                  + f"; {first.get('n_reference', '?')} held-out images; seed {first.get('eval_seed', 0)}")
    for warning in dict.fromkeys(w for r in records for w in r.get("warnings", [])):
        _warn(warning)
    for png in dict.fromkeys(r["memorization_png"] for r in records if r.get("memorization_png")):
        console.print(f"closest sample/training pairs: {png}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
             epilog="Example: `difftrain demo --out runs/demo --images 20000 eval.n_samples=500`")
def demo(
    ctx: typer.Context,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/demo-<time>)."),
    images: Optional[int] = typer.Option(None, help="Training images (default: the digits preset's 55,000)."),
) -> None:
    """Train a class-conditional model on the built-in digits, sample every class, evaluate, write a report.

    Extra `key=value` arguments override the digits preset (see `difftrain config --preset digits`).
    """
    from difftrain.demo import run_demo

    path = run_demo(out_dir, images, console, overrides=list(ctx.args))
    out.print(str(path))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
             epilog="Examples: `difftrain sweep --preset digits --trials 40 --budget-images 30000 --out sweeps/digits`  \n"
                    "`difftrain sweep --preset digits --space sweep.yaml --out sweeps/digits` (space, objective, pruner: "
                    "docs/sweep.md)  \n"
                    "`difftrain sweep --resume sweeps/digits --workers 2` (more workers, or more `--trials`)  \n"
                    "`difftrain sweep show sweeps/digits`, then `difftrain train --config sweeps/digits/best.yaml --out runs/best`  \n"
                    "`difftrain sweep --lr-range --preset digits --out sweeps/lr` (a learning-rate range test)")
def sweep(
    ctx: typer.Context,
    preset: Optional[str] = typer.Option(None, help=f"Start from a preset: {', '.join(PRESETS)}."),
    config: Optional[Path] = typer.Option(None, help="YAML config file (applied over the preset)."),
    data: Optional[str] = typer.Option(None, help="Prepared dataset folder (sets data.path)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="The sweep folder (default sweeps/<preset>-<time>)."),
    space: Optional[Path] = typer.Option(None, help="sweep.yaml: the parameters, objective(s), sampler and pruner "
                                         "(default: learning rate, batch, EMA length, noise levels, dropout and width "
                                         "around the config's own, FID, TPE, median pruning)."),
    trials: Optional[int] = typer.Option(None, min=1, help="Trials in the study (default 20; with --resume, the new total)."),
    budget_images: Optional[int] = typer.Option(None, "--budget-images", min=1, help="Training images per trial "
                                                "(default: the config's train.duration_images)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the sweep in this folder: trials a killed worker left "
                                          "unfinished resume from their checkpoints, then new ones up to --trials."),
    workers: int = typer.Option(1, min=1, help="Worker processes sharing the study (each with its share of the CPU threads)."),
    seed: int = typer.Option(0, help="Seed of the sampler."),
    auto_batch: bool = typer.Option(False, "--auto-batch", help="Fit every trial's micro-batch in memory as "
                                    "`difftrain doctor` measures it (train.accumulation keeps its batch size)."),
    lr_range: bool = typer.Option(False, "--lr-range", help="Instead of a study: a learning-rate range test of the "
                                  "config, loss against an exponentially growing rate, and the rate it suggests."),
    lr_steps: int = typer.Option(200, "--lr-steps", min=10, help="--lr-range: steps, from 1e-6 to 1."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    as_json: bool = typer.Option(False, "--json", help="`sweep show`: print the summary as JSON."),
    worker: Optional[int] = typer.Option(None, hidden=True, help="Internal: run as worker N of --workers."),
) -> None:
    """Search hyperparameters with Optuna: each trial is an ordinary run, scored and pruned on the evaluation during
    training, in a study (SQLite) that survives a kill. `difftrain sweep show DIR` writes the leaderboard, importances,
    plots and best.yaml. Extra `key=value` arguments override the config of every trial."""
    args = list(ctx.args)
    if args[:1] == ["show"]:
        if len(args) != 2:
            raise UserError("usage: difftrain sweep show SWEEP_FOLDER")
        return _sweep_show(Path(args[1]), as_json)
    for arg in args:
        if "=" not in arg:
            raise UserError(f"unexpected argument {arg!r}: `difftrain sweep show DIR` shows a sweep, other arguments are "
                            "key=value overrides")
    from difftrain.sweep import study as sweeps

    if lr_range:
        return _lr_range(preset, config, args, data, out_dir, lr_steps, progress)
    if resume is not None:
        given = [name for name, value in (("--preset", preset), ("--config", config), ("--data", data), ("--space", space),
                                          ("--budget-images", budget_images), ("--out", out_dir)) if value] + args
        if given:
            raise UserError(f"--resume {resume} goes on with the sweep's own settings (sweep.json): leave out {', '.join(given)}")
        out_dir = resume
        spec = sweeps.SweepSpec.load(out_dir)
        if trials is not None and worker is None:
            spec.trials = trials
            spec.save(out_dir)
    else:
        if out_dir is None:
            import time

            out_dir = Path("sweeps") / f"{preset or 'sweep'}-{time.strftime('%Y%m%d-%H%M%S')}"
        base = _config(preset, config, args, data)
        spec = sweeps.SweepSpec(budget_images=budget_images or base.train.duration_images or
                                base.train.duration_steps * base.train.batch_size, trials=trials or 20, space={},
                                preset=preset, config_file=str(config.resolve()) if config else None, overrides=args,
                                data=str(Path(data).resolve()) if data and Path(data).exists() else data, seed=seed,
                                auto_batch=auto_batch)
        spec = sweeps.start(out_dir, spec, space)
        console.print(f"sweep {out_dir}: {spec.trials} trials of {spec.budget_images:,} training images, objective "
                      f"{', '.join(spec.parsed_space().objectives)}, parameters {', '.join(spec.space['params'])}")
    if worker is not None:  # one of several worker processes
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
        sweeps.run_worker(out_dir, console=console, progress=False, worker=worker)
        return
    if workers > 1:
        _sweep_workers(out_dir, workers)
    else:
        sweeps.run_worker(out_dir, console=console, progress=progress)
    _sweep_show(out_dir, False)
    out.print(str(out_dir))


def _sweep_workers(out_dir: Path, workers: int) -> None:
    """Run `workers` worker processes on the study and wait for them all."""
    import subprocess

    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    console.print(f"{workers} workers on {out_dir}, {threads} thread(s) each")
    procs = [subprocess.Popen([sys.executable, "-m", "difftrain", "sweep", "--resume", str(out_dir), "--worker", str(i),
                               "--workers", str(workers)], env=env) for i in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    if any(codes):
        raise UserError(f"a sweep worker stopped with exit code {max(codes)}; its trial resumes with "
                        f"`difftrain sweep --resume {out_dir}`")


def _sweep_show(out_dir: Path, as_json: bool) -> None:
    from difftrain.sweep.show import summarize, write_outputs

    summary = summarize(out_dir)
    files = write_outputs(out_dir, summary)
    if as_json:
        out.print_json(json.dumps({**summary.__dict__, "files": files}))
        return
    table = Table(title=f"{out_dir}: {len(summary.rows)} trials, {summary.compute_images:,} training images in all")
    for column in ("rank", "trial", "state", *summary.objectives, "images", "settings"):
        table.add_column(column, overflow="fold")
    from difftrain.sweep.space import describe

    for rank, r in enumerate(summary.rows[:20], 1):
        values = r["values"] or [r["last_reported"]] + [None] * (len(summary.objectives) - 1)
        state = r["state"] + (" *" if r["trial"] in summary.best else "")
        table.add_row(str(rank), str(r["trial"]), state, *("" if v is None else f"{v:.4g}" for v in values),
                      f"{r['images']:,}", r["reason"] or describe(r["params"]))
    out.print(table)
    if len(summary.rows) > 20:
        out.print(f"... and {len(summary.rows) - 20} more in {out_dir / 'leaderboard.csv'}")
    out.print(("* the Pareto front" if len(summary.objectives) > 1 else "* the best trial")
              + "; pruned and failed trials show their last reported value or their reason")
    if summary.importances:
        out.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.importances.items()))
    out.print(f"wrote {', '.join(files)} in {out_dir}")
    if "best.yaml" in files:
        out.print(f"train the best: difftrain train --config {out_dir / 'best.yaml'} --out runs/best")


def _lr_range(preset, config, args, data, out_dir, steps, progress) -> None:
    from difftrain.sweep.lr_range import lr_range_test

    cfg = _config(preset, config, args, data)
    if out_dir is None:
        import time

        out_dir = Path("sweeps") / f"lr-range-{time.strftime('%Y%m%d-%H%M%S')}"
    result = lr_range_test(cfg, out_dir, steps=steps, console=console, progress=progress)
    if result["lr"] is None:
        raise UserError(f"the loss was not finite from the first steps (see {out_dir / 'metrics.jsonl'}): check the data "
                        "and train.mixed_precision")
    console.print(f"lr range: loss lowest at lr {result['lr_at_minimum']:.3g}, falling fastest at {result['lr_steepest']:.3g}"
                  + (f", diverged at {result['diverged_at']:.3g}" if result["diverged_at"] else "")
                  + f"; suggested optim.lr={result['lr']:.3g} (plot: {out_dir / 'lr-range.png'})")
    out.print(f"optim.lr={result['lr']:.3g}")


@rate_app.command("create", context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
                  epilog="Examples: `difftrain rate create --runs runs/a runs/b runs/c --real data/mnist --n 200 --out ratings/study1`  \n"
                         "`difftrain rate create --runs runs/cap --prompts prompts.txt --likert --out ratings/cap`")
def rate_create(
    ctx: typer.Context,
    runs: List[Path] = typer.Option(..., "--runs", help="The runs to rate (two or more to rank them): `--runs A B C`."),
    out_dir: Path = typer.Option(..., "--out", help="A new folder for the study."),
    real: Optional[Path] = typer.Option(None, help="Prepared dataset of real items (default: the first run's dataset)."),
    n: int = typer.Option(200, help="Samples drawn from each run (as many real items are drawn per run)."),
    raters: int = typer.Option(5, help="Raters: one private link each (`rate serve` prints them)."),
    per_rater: int = typer.Option(100, "--per-rater", help="Trials each rater is asked (attention checks included)."),
    prompts: Optional[Path] = typer.Option(None, help="Captioned runs: a text file, one prompt per line, to draw from."),
    likert: bool = typer.Option(False, help="Also ask how faithful each sample is to its class or prompt (1-5)."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: each run's sample.steps)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance (default: each run's sample.guidance)."),
    seed: int = typer.Option(0, help="Seed of the samples, the real items drawn and the trials shared by all raters."),
) -> None:
    """Sample the runs and write a rating study: pairs of runs on the same class or prompt, real-or-generated
    judgements, attention checks; one token per rater."""
    from difftrain.rate.create import create_study

    extra = [Path(a) for a in ctx.args]
    if any(str(a).startswith("-") for a in extra):
        raise UserError(f"unknown option {next(a for a in extra if str(a).startswith('-'))}; see `difftrain rate create --help`")
    with Progress(console=console, transient=True) as bar:
        record = create_study(out_dir, [*runs, *extra], real=real, n=n, raters=raters, per_rater=per_rater,
                              prompts=_read_prompts(prompts) if prompts else None, likert=likert, steps=steps,
                              guidance=guidance, seed=seed, say=console.print,
                              progress=lambda name, total: _advance(bar, f"sample {name}", total))
    console.print(f"{sum(record['trials'].values())} trials ({', '.join(f'{v} {k}' for k, v in record['trials'].items() if v)}), "
                  f"{raters} raters; next: `difftrain rate serve {out_dir}`")
    out.print(str(out_dir))


def _advance(bar: Progress, what: str, total: int):
    task = bar.add_task(what, total=total)
    return lambda k: bar.advance(task, k)


@rate_app.command("serve", epilog="Example: `difftrain rate serve ratings/study1 --port 8000` (`--host 0.0.0.0` to reach it from other machines)")
def rate_serve(
    study: Path = typer.Argument(..., help="A study folder made by `difftrain rate create`."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port."),
    add_raters: int = typer.Option(0, "--add-raters", min=0, help="First add this many raters (new links)."),
    quota: Optional[int] = typer.Option(None, min=1, help="Trials per rater (default: the study's --per-rater)."),
) -> None:
    """Serve the rating page; prints one private link per rater. Stop with Ctrl-C: every acknowledged vote is kept."""
    from difftrain.rate import store
    from difftrain.rate.serve import check_port, links, serve

    db = store.connect(study)
    check_port(host, port)
    if add_raters:
        store.add_raters(study, db, add_raters)
    db.close()
    for name, link in links(study, host, port):
        out.print(f"{name}: {link}", soft_wrap=True)
    console.print(f"serving {study} on http://{host}:{port} (Ctrl-C stops; then `difftrain rate results {study}`)")
    serve(study, host, port, quota)


@rate_app.command("results", epilog="Example: `difftrain rate results ratings/study1` (writes results.md, results.json, "
                  "ranking.png, win-rates.png; each run's human-ratings.json for its report)")
def rate_results(
    study: Path = typer.Argument(..., help="A study folder made by `difftrain rate create`."),
    min_attention: float = typer.Option(0.8, "--min-attention", min=0, max=1, help="Raters below this share of correct "
                                        "attention checks are excluded (and listed)."),
    rounds: int = typer.Option(1000, min=100, help="Bootstrap rounds of the 95% intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Rank the runs (Bradley-Terry with bootstrap 95% intervals), HYPE error rates, rater agreement and attention."""
    from difftrain.rate.results import write_results

    r = write_results(study, min_attention=min_attention, rounds=rounds)
    if as_json:
        out.print_json(json.dumps(r))
        return
    table = Table(title=f"{r['votes_kept']} of {r['votes']} votes kept")
    for column in ("rank", "run", "score [95%]", "HYPE error [95%]"):
        table.add_column(column)
    for name in r["runs"]:
        b = next((x for x in r["bradley_terry"] if x["run"] == name), None)
        h = r["hype"].get(name)
        table.add_row(str(b["rank"]) if b else "-", name, f"{b['score']:+.2f} [{b['low']:+.2f}, {b['high']:+.2f}]" if b else "-",
                      f"{h['error_rate']:.2f} [{h['low']:.2f}, {h['high']:.2f}]" if h else "-")
    out.print(table)
    if r["excluded_raters"]:
        console.print(f"excluded (attention below {min_attention:.0%}): {', '.join(r['excluded_raters'])}")
    out.print(str(study / "results.md"))


@app.command("runs", epilog="Examples: `difftrain runs`  \n`difftrain runs experiments/ --json`")
def list_runs(
    folder: Path = typer.Argument(Path("runs"), help="The folder that holds the runs (searched at any depth)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """List the runs under FOLDER: their data, preset, images trained of the goal, best evaluation beside its
    real-data floor, and state (running, with its process; finished; resumable; stopped before any checkpoint)."""
    from rich import box

    from difftrain.report.runs import find_runs, run_row

    rows = [run_row(path, folder) for path in find_runs(folder)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"no runs under {folder} (a run is a folder with config.yaml and dataset.json)")
        return
    table = Table("run", "data", "preset", "images", "best evaluation (floor)", "state", box=box.SIMPLE_HEAD)
    for r in rows:
        if "images" not in r:
            table.add_row(r["run"], "", "", "", "", r["state"])
            continue
        best = "-" if r["best"] is None else f"{r['metric']} {r['best']:.4g}" + (
            f" ({r['floor']:.4g})" if isinstance(r["floor"], (int, float)) else "")
        table.add_row(r["run"], r["data"], r["preset"] or "-", f"{r['images']:,} / {r['goal']:,}", best, r["state"])
    out.print(table)


@app.command("report", epilog="Example: `difftrain report runs/digits --html`, then open runs/digits/report.html")
def report(
    run: Path = typer.Argument(..., help="Run directory."),
    html: bool = typer.Option(False, "--html", help="Also write RUN/report.html: one self-contained page (pictures "
                              "inlined) that opens offline in a browser."),
) -> None:
    """Write the run's report again from its files: RUN/README.md (a model card the Hugging Face Hub reads), and with
    --html a page to share."""
    from difftrain.report.card import write_report

    out.print(str(write_report(run)))
    if html:
        from difftrain.report.html import write_html

        out.print(str(write_html(run)))


@app.command("compare", epilog="Example: `difftrain compare runs/digits runs/digits-vp --out compare/`")
def compare(
    runs: List[Path] = typer.Argument(..., help="Two or more run directories."),
    out_dir: Path = typer.Option(Path("compare"), "--out", help="Folder for compare.md, compare.json, compare.png, samples.png."),
) -> None:
    """Put runs side by side: their latest evaluations in one table and one plot, each metric beside its floor, only
    when like for like (same features, sample count, sampler; otherwise a note says what differs), and their latest
    samples in one picture."""
    from rich import box

    from difftrain.evaluation.plots import PLOTTED
    from difftrain.report.compare import metric_cell, write_comparison

    c = write_comparison(runs, out_dir)
    for note in c["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    if c["metrics"]:
        scored = [r for r in c["runs"] if r["evaluation"]]
        table = Table("metric (floor)", *[r["name"] for r in scored], box=box.SIMPLE_HEAD)
        for key in c["metrics"]:
            table.add_row(PLOTTED[key], *[metric_cell(r["evaluation"], key) for r in scored])
        out.print(table)
    out.print(str(out_dir / "compare.md"))


@app.command("config", epilog="Example: `difftrain config --preset digits`")
def show_config(
    preset: Optional[str] = typer.Option(None, help="Show this preset's values."),
    config: Optional[Path] = typer.Option(None, help="Show this YAML file's values."),
) -> None:
    """List every config field with its value and description."""
    from difftrain.config import describe_fields, load_config

    cfg = load_config(preset, config).model_dump(mode="json")
    fields = describe_fields()
    table = Table()
    table.add_column("key", min_width=max(len(key) for key, _, _ in fields))  # keys are what users type: never cut them
    table.add_column("value")
    table.add_column("description")
    for key, _default, desc in fields:
        node = cfg
        for part in key.split("."):
            node = node[part]
        table.add_row(key, Text(json.dumps(node)), desc)  # Text: "[false, true]" is not markup
    out.print(table)


def _apply_auto_batch(cfg, preset: Optional[str]) -> None:
    """Set train.accumulation so that the micro-batch fits in memory, measured by real steps."""
    from difftrain.hardware.verdicts import fit_accumulation

    with status("auto-batch: measuring memory at growing micro-batches", console):
        message = fit_accumulation(cfg, preset)
    console.print(f"auto-batch: {message}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
             epilog="Examples: `difftrain doctor --preset digits`  \n"
                    "`difftrain doctor --preset mnist --data data/mnist --out runs/mnist --memory-budget 8 --json`")
def doctor(
    ctx: typer.Context,
    preset: Optional[str] = typer.Option(None, help="Check this preset: digits, mnist, points."),
    config: Optional[Path] = typer.Option(None, help="YAML config file (applied over the preset)."),
    data: Optional[str] = typer.Option(None, help="Prepared dataset folder (sets data.path)."),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Where the run will write (its free disk is checked)."),
    memory_budget: Optional[float] = typer.Option(None, "--memory-budget", min=0.001,
                                                  help="GB the run may use (default: free GPU memory x 0.9; on CPU available RAM x 0.8)."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as one JSON object."),
) -> None:
    """Check the machine and fit the config before training: environment, a probe of real training steps
    (peak memory, speed, predicted time and disk), the largest micro-batch that fits, and PASS/WARN/FAIL
    verdicts with fixes. Exit code 1 when any check fails. Extra `key=value` arguments override config fields.
    """
    from difftrain.hardware.doctor import run_doctor

    cfg = _config(preset, config, ctx.args, data)
    budget = int(memory_budget * 2**30) if memory_budget else None
    if as_json:
        report = run_doctor(cfg, out_dir, preset=preset, memory_budget=budget)
        print(json.dumps(report.to_json(), indent=2))
    else:
        with status("doctor: probing the config with real training steps", console):
            report = run_doctor(cfg, out_dir, preset=preset, memory_budget=budget)
        _print_doctor(report)
    if not report.ok:
        raise typer.Exit(1)


def _print_doctor(report) -> None:
    from difftrain.hardware.verdicts import duration, size

    env, probe, fit = report.environment, report.probe, report.fit
    info = {"os": env.os, "python": env.python, "torch": f"{env.torch} (CUDA {env.cuda.torch_cuda_version}, cuDNN {env.cuda.cudnn_version})",
            "accelerate / diffusers": f"{env.accelerate} / {env.diffusers}",
            "cpu": f"{env.cpu_model}, {env.cpu_cores} cores, {env.torch_threads} torch threads",
            "ram": f"{size(env.ram_available_bytes)} available of {size(env.ram_total_bytes)}",
            "disk": f"{size(env.disk.free_bytes)} free at {env.disk.checked}"}
    for gpu in env.gpus:
        info[f"cuda:{gpu.index}"] = (f"{gpu.name}, {size(gpu.free_memory_bytes)} free of {size(gpu.total_memory_bytes)}, capability "
                                     f"{gpu.capability}, bf16 {gpu.bf16}, fp16 {gpu.fp16}, tf32 {gpu.tf32}")
    if env.distributed.world_size > 1:
        info["distributed"] = f"rank {env.distributed.rank} of {env.distributed.world_size}"
    if probe:
        info.update({"probe": f"{probe.parameters:,} parameters on {probe.device} ({probe.precision} mixed precision), {probe.data}",
                     "speed": f"{probe.images_per_second:,.0f} images/s; {duration(probe.predicted_wall_seconds)} for {probe.duration_images:,} images",
                     "checkpoint": f"{size(probe.checkpoint_bytes)} each, {size(probe.disk_needed_bytes)} for {probe.checkpoints_on_disk}",
                     "sampling": f"{probe.sample_seconds_per_image * 1000:.1f} ms per image"})
    if fit:
        info["memory by micro-batch"] = ", ".join(f"{r.micro_batch}: {size(r.peak_bytes) if r.peak_bytes is not None else 'out of memory' if r.out_of_memory else 'not run'}"
                                                  for r in fit.by_batch)
    _print_info(info)
    colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
    for v in report.verdicts:  # Text: messages hold config values such as "[16, 32]", which are not markup
        out.print(Text.assemble((v.status, colour[v.status]), f" {v.check}: {v.message}" + (f"\n     fix: {v.fix}" if v.fix else "")))
    out.print(f"({report.seconds:.0f} s)")


def main() -> None:
    # One CPU thread per process under a multi-process launch, so processes do not thrash.
    if "LOCAL_RANK" in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        app()
    except UserError as e:
        _fail(str(e))
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        # A full disk, a read-only or forbidden folder: atomic writes left the last complete files as they were.
        where = f" {e.filename}" if e.filename else ""
        _fail(f"cannot write{where}: {e.strerror}. What was complete before is intact: free space (or make the folder "
              "writable, or choose another --out), then run the same command again (a training with --resume)")


WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _fail(message: str) -> None:
    rank = os.environ.get("RANK", "0")  # under a multi-process launch each process reports its own
    console.print(f"[red]error{'' if rank == '0' else f' (process {rank})'}:[/] {message}", highlight=False)
    sys.exit(2)


if __name__ == "__main__":
    main()
