"""Forecasting and imputation with a run whose network is conditioned on observed values (series runs).

forecast: the last (window - horizon) rows of a context file are observed; the model draws `n` paths of the next
`horizon` steps. The .npz holds the paths, their quantiles and the context, in the data's units.
impute: every NaN or empty cell of a file is filled, window by window; each filled value is the median of `n` draws
(the .npz form also keeps the draws and the 5% / 95% quantiles). The source file is only read.
"""

from __future__ import annotations

import math

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.sampling import SamplingSpec, generate, spec_meta, write_samples
from difftrain.store.run import Run, open_run

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _observing_run(run_dir: str | Path, what: str) -> Run:
    run = open_run(run_dir)
    if not run.modality.observable:
        raise UserError(f"--{what} needs a run of time series; {run_dir} makes {run.modality.kind} data")
    if not run.config.model.observe:
        raise UserError(f"{run_dir} was trained without observed values (model.observe={{}}), so it only generates: "
                        "train with the default model.observe to forecast and impute")
    return run


def _read(run: Run, path: str | Path, allow_missing: bool):
    """The file's series with the run's channels (and its time column, when the training file had one and this has it)."""
    from difftrain.data.series_sources import read_series_table

    columns = run.modality.spec["columns"]
    options = (run.dataset.get("source") or {})
    time_column = options.get("time_column")
    try:
        return read_series_table(path, columns=columns, time_column=time_column, allow_missing=allow_missing)
    except UserError as e:
        if time_column and f"'{time_column}'" in str(e):  # the time column is optional here
            return read_series_table(path, columns=columns, allow_missing=allow_missing)
        raise


def _meta(run: Run, ckpt, spec: SamplingSpec, **extra) -> dict[str, Any]:
    return {"kind": run.modality.kind, "run": str(run.path.resolve()), "checkpoint": str(ckpt.path.resolve()),
            "images_seen": ckpt.images, **({"columns": run.modality.spec["columns"]} if "columns" in run.modality.spec else {}),
            **spec_meta(spec), **extra,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays, meta=np.array(json.dumps(meta)))
    atomic.write_bytes(path, buf.getvalue())


def forecast(run_dir: str | Path, context_file: str | Path, horizon: int, n: int, spec: SamplingSpec, out: str | Path, *,
             checkpoint: str = "latest", device="cpu", progress=None, warn=print) -> dict[str, Any]:
    """`n` sample paths of the `horizon` steps after the context file's last row; writes `out` (.npz) and a PNG."""
    out = Path(out)
    if out.suffix != ".npz":
        raise UserError(f"--out {out}: a forecast is written as .npz (paths, quantiles, context)")
    run = _observing_run(run_dir, "context")
    length, channels = run.modality.shape
    if not 1 <= horizon < length:
        raise UserError(f"--horizon {horizon}: this run's windows are {length} steps, so the horizon must be 1..{length - 1} "
                        f"(context + horizon = window; prepare longer windows to see further)")
    table = _read(run, context_file, allow_missing=True)
    if len(table.series) != 1:
        raise UserError(f"{context_file} holds {len(table.series)} series; give the context of one series per file")
    history = table.series[0]
    need = length - horizon
    if len(history) < need:
        raise UserError(f"{context_file} has {len(history)} rows; --horizon {horizon} with {length}-step windows needs the last "
                        f"{need} (or a longer --horizon)")
    context = history[-need:].astype(np.float32)
    known = np.full((n, length, channels), np.nan, np.float32)
    known[:, :need] = context
    ckpt = run.checkpoint(checkpoint, warn)
    denoiser = run.denoiser(ckpt, device=device)
    import torch

    with torch.inference_mode():
        drawn = generate(denoiser, run.modality, n, None, spec, batch_size=run.config.sample.batch_size, device=device,
                         progress=progress, known=known)
    paths = drawn[:, need:]
    bands = np.quantile(paths.astype(np.float64), QUANTILES, axis=0).astype(np.float32)
    meta = _meta(run, ckpt, spec, context_file=str(Path(context_file).resolve()), horizon=horizon, paths=n,
                 quantile_levels=list(QUANTILES))
    _write_npz(out, {"paths": paths, "quantiles": bands, "quantile_levels": np.asarray(QUANTILES, np.float32),
                     "context": context}, meta)
    run.modality.save_forecast(context, bands, out.with_suffix(".png"))
    return {"paths": paths, "quantiles": bands, "meta": meta}


def _cover(length: int, window: int) -> list[int]:
    """Starts of windows that cover 0..length-1: back to back, the last one ending at the end."""
    starts = list(range(0, length - window + 1, window))
    return starts if starts[-1] == length - window else [*starts, length - window]


def impute(run_dir: str | Path, gappy_file: str | Path, n: int, spec: SamplingSpec, out: str | Path, *, checkpoint: str = "latest",
           device="cpu", progress=None, warn=print) -> dict[str, Any]:
    """Fill every gap of the file with the median of `n` draws; `out` is a .csv (the file's table, gaps filled) or .npz
    (filled series, draws and quantiles of each gappy window)."""
    out = Path(out)
    if out.suffix not in (".csv", ".npz"):
        raise UserError(f"--out {out}: imputed series are written as .csv (the table, filled) or .npz (with every draw)")
    run = _observing_run(run_dir, "impute")
    length, channels = run.modality.shape
    table = _read(run, gappy_file, allow_missing=True)
    windows, where = [], []
    for i, series in enumerate(table.series):
        if len(series) < length:
            raise UserError(f"{gappy_file}: series {table.ids[i] or i} has {len(series)} rows; this run imputes windows of "
                            f"{length} steps, so each series needs at least {length}")
        for start in _cover(len(series), length):
            window = series[start:start + length]
            if np.isnan(window).any():
                windows.append(window.astype(np.float32))
                where.append((i, start))
    gaps = int(sum(np.isnan(s).sum() for s in table.series))
    if not gaps:
        warn(f"{gappy_file} has no empty or NaN cell: nothing to impute; writing it unchanged")
    ckpt = run.checkpoint(checkpoint, warn)
    drawn = np.zeros((0, n, length, channels), np.float32)
    if windows:
        import torch

        known = np.repeat(np.stack(windows), n, axis=0)
        with torch.inference_mode():
            drawn = generate(run.denoiser(ckpt, device=device), run.modality, len(known), None, spec,
                             batch_size=run.config.sample.batch_size, device=device, progress=progress,
                             known=known).reshape(len(windows), n, length, channels)
    median = np.median(drawn, axis=1)
    filled = [s.copy() for s in table.series]
    for (i, start), values in zip(where, median, strict=True):
        part = filled[i][start:start + length]
        gap = np.isnan(part)  # a value filled by an earlier window stays: windows overlap only at a series' end
        part[gap] = values[gap]
    meta = _meta(run, ckpt, spec, source=str(Path(gappy_file).resolve()), draws=n, filled_cells=gaps,
                 gappy_windows=len(windows))
    if out.suffix == ".npz":
        _write_npz(out, {"filled": np.concatenate(filled).astype(np.float32), "series_lengths": np.asarray([len(s) for s in filled]),
                         "draws": drawn, "quantiles": np.quantile(drawn, QUANTILES, axis=1).astype(np.float32),
                         "quantile_levels": np.asarray(QUANTILES, np.float32),
                         "window_starts": np.asarray(where, np.int64).reshape(-1, 2)}, meta)
    else:
        _write_table(gappy_file, table, filled, run.modality.spec["columns"], out)
    return {"filled": filled, "meta": meta}


def _write_table(source: str | Path, table, filled: list[np.ndarray], columns: list[str], out: Path) -> None:
    """The source's table with its value columns filled (every other column, and the row order, as they were)."""
    import pandas as pd

    source = Path(source)
    if source.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(source)
    elif source.suffix.lower() == ".npy":
        frame = pd.DataFrame(np.concatenate(filled), columns=columns)
    else:
        frame = pd.read_csv(source, sep=None, engine="python")
    if source.suffix.lower() != ".npy":
        id_column = table.source.get("id_column")
        groups = frame.groupby(id_column, sort=False).indices if id_column else {"": np.arange(len(frame))}
        for key, series in zip(table.ids, filled, strict=True):
            rows = groups[next(k for k in groups if str(k) == str(key))] if id_column else groups[""]
            frame.loc[frame.index[rows], columns] = series
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.10g")
    atomic.write_text(out, buf.getvalue())


def text_windows(length: int, block: int) -> int:
    """Blocks drawn for `length` tokens: the first, then one per half block beyond it."""
    return 1 + math.ceil(max(0, length - block) / (block // 2))


def complete_text(run_dir: str | Path, prompt: str | None, infill: str | None, n: int, spec: SamplingSpec, out: str | Path, *,
                  length: int | None = None, class_label: int | None = None, checkpoint: str = "latest", device="cpu",
                  progress=None, warn=print) -> dict[str, Any]:
    """`n` texts of `length` tokens (default: the block) after a prompt and/or an infilling template (text runs), of
    one class when `class_label` is given; every given token is kept as it is.

    Longer than a block, a text grows half a block at a time, each new block conditioned on the last half block so far
    (semi-autoregressive, as block-wise masked-diffusion samplers extend past the trained length); shorter, it is the
    beginning of a block.
    """
    run = open_run(run_dir)
    block = run.modality.shape[0]
    known = run.modality.given(prompt, infill)
    length = length or block
    given = int(np.flatnonzero(known >= 0).max()) + 1 if (known >= 0).any() else 0
    if length < given:
        raise UserError(f"--length {length} is shorter than the {given} tokens of --prompt and --infill: lengthen it")
    if class_label is not None and not 0 <= class_label < run.num_classes:
        raise UserError(f"--class {class_label}: " + (f"choose 0..{run.num_classes - 1}" if run.num_classes else "the model is unconditional"))
    ckpt = run.checkpoint(checkpoint, warn)
    denoiser = run.denoiser(ckpt, device=device)
    batch = run.config.sample.batch_size
    labels = None if class_label is None else np.full(n, class_label, np.int64)
    import torch

    def draw(window: np.ndarray, index: int) -> np.ndarray:
        # Each block draws its own random numbers: its batches are numbered after the earlier blocks'.
        return generate(denoiser, run.modality, n, labels, spec, batch_size=batch, device=device, progress=progress,
                        known=window, first_batch=index * math.ceil(n / batch))

    with torch.inference_mode():
        drawn = draw(np.repeat(known[None], n, axis=0), 0)
        half = block // 2
        for index in range(1, text_windows(length, block)):
            window = np.concatenate([drawn[:, -(block - half):], np.full((n, half), -1, np.int32)], axis=1)
            drawn = np.concatenate([drawn, draw(window, index)[:, block - half:]], axis=1)
    drawn = drawn[:, :length]
    meta = _meta(run, ckpt, spec, prompt=prompt, infill=infill, length=length, class_label=class_label,
                 generated_tokens=int((known[:length] < 0).sum()) + max(0, length - block))
    write_samples(out, run.modality, drawn, labels, meta)
    return {"samples": drawn, "meta": meta}
