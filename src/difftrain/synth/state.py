"""The progress state of a synthetic dataset in OUT/.synth (hidden, so `data prepare OUT` skips it):

    OUT/.synth/settings.json          what was asked; continuing needs the same
    OUT/.synth/batches/000012.json    one record per processed batch (its kept files, its rejections), written after its files
    OUT/.synth/search.json            --optimize-for utility: what the search tried and chose, with what it was asked

Running the same command again replays the records and draws only the batches that have none, so an
interrupted run ends with the files of an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from difftrain import atomic
from difftrain.errors import UserError

STATE = ".synth"
SEARCH = "search.json"
KIND = "difftrain-synthetic-dataset"  # manifest.json "kind": marks a folder `synth` may replace

# The option that sets each setting, for the error that refuses a resume with other settings.
OPTIONS = {"run": "RUN", "checkpoint": "--checkpoint", "weights_sha256": "--checkpoint (its weights changed)",
           "weights": "the weights (EMA or raw)", "sampler": "--sampler", "steps": "--steps",
           "schedule": "the run's sample.schedule", "guidance": "--guidance", "seed": "--seed", "classes": "--classes",
           "per_class": "--per-class", "n": "--n", "filters": "--filter", "batch_size": "--batch-size",
           "device": "--device (CPU and GPU draw different numbers)", "optimized_for": "--optimize-for"}


def is_synth_folder(out: Path) -> bool:
    if (out / STATE / "settings.json").is_file() or (out / STATE / SEARCH).is_file():
        return True
    try:
        return json.loads((out / "manifest.json").read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{OPTIONS.get(key, key)} was {json.dumps(old.get(key))}, now {json.dumps(new.get(key))}"
            for key in dict.fromkeys([*old, *new]) if old.get(key) != new.get(key)]


def _check_out(out: Path) -> bool:
    """Whether OUT holds anything; refuses a file, and a folder that `synth` did not write."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()):
        if not is_synth_folder(out):
            raise UserError(f"--out {out} exists and is not a folder written by `difftrain synth`, so nothing in it is "
                            "replaced or added to; choose another --out")
        return True
    return False


def start_again(out: Path) -> None:
    """--overwrite: remove OUT when `synth` wrote it (refused otherwise)."""
    if _check_out(Path(out)):
        shutil.rmtree(out)


def open_state(out: Path, settings: dict[str, Any], overwrite: bool = False) -> list[dict[str, Any]]:
    """Start OUT, or continue it with the same settings; the batch records written so far, in batch order."""
    out = Path(out)
    if overwrite:
        start_again(out)
    started = out / STATE / "settings.json"
    if _check_out(out):
        if started.is_file():
            try:
                old = json.loads(started.read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read {started} ({e}): pass --overwrite to start {out} again") from None
            differ = _differences(old, settings)
            if differ:
                raise UserError(f"--out {out} was started with other settings ({'; '.join(differ)}): to continue it, run the "
                                "same command as before; pass --overwrite to start it again with these; or choose another --out")
            return read_records(out)
        if not (out / STATE / SEARCH).is_file():  # a search alone is a start with nothing drawn yet
            raise UserError(f"--out {out} holds a synthetic dataset without its progress state ({STATE}/): pass --overwrite "
                            "to make it again, or choose another --out")
    atomic.write_json(started, settings)
    return []


def read_search(out: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The search's result kept in OUT when it was asked the same `request`, else None."""
    try:
        kept = json.loads((Path(out) / STATE / SEARCH).read_text())
    except (OSError, ValueError):
        return None
    return kept.get("result") if kept.get("request") == request else None


def write_search(out: Path, request: dict[str, Any], result: dict[str, Any]) -> None:
    _check_out(Path(out))
    atomic.write_json(Path(out) / STATE / SEARCH, {"request": request, "result": result})


def record_file(out: Path, batch: int) -> Path:
    return Path(out) / STATE / "batches" / f"{batch:06d}.json"


def write_record(out: Path, record: dict[str, Any]) -> None:
    atomic.write_json(record_file(out, record["batch"]), record)


def read_records(out: Path) -> list[dict[str, Any]]:
    records = []
    for batch, file in enumerate(sorted((Path(out) / STATE / "batches").glob("*.json"))):
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {file} ({e}): pass --overwrite to start {out} again") from None
        if record.get("batch") != batch:
            raise UserError(f"{file}: batch {batch} is missing or misplaced in the progress state; pass --overwrite to "
                            f"start {out} again")
        records.append(record)
    return records
