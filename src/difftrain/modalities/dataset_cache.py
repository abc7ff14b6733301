"""Networks trained on a prepared dataset once and cached beside it (`classifier/` in the dataset's folder).

The evaluation's feature classifier and the confidence filter's judge are both minutes of training on a large dataset,
needed again by every evaluation or synth run of it: the first use trains (saying what, with progress) and saves the
weights with a JSON of what they are; later uses load them. A key of the dataset's identity and the recipe names the
files, so a changed dataset or recipe trains anew instead of reusing stale weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import nn

from difftrain import atomic
from difftrain.hashing import sha256_file
from difftrain.modalities.deferred import defer_if_asked
from difftrain.progress import Progress, stderr_console

Train = Callable[[Callable[[int, int], None]], tuple[nn.Module, dict[str, Any]]]


def load_or_train(ds, stem: str, recipe: list, model: nn.Module, train: Train, what: str, how: str, *,
                  converges: bool = False) -> tuple[nn.Module, dict]:
    """`model` (an untrained network of the right shape) with the cached weights of `stem` for this dataset and
    `recipe`, or `train(progress)`'s network, saved there first. `train` returns the network and the JSON-able facts
    kept with it (its held-out accuracy, ...); `what` names it and `how` says how long it trains, in the message shown
    first. `progress(done, steps)` counts its steps towards `steps`, or towards a cap that early stopping ends long
    before when it `converges` (then no bar fills towards it and no time left is guessed from it). The returned facts
    always hold `weights_sha256`, which identifies the weights in manifests."""
    folder = Path(ds.path) / "classifier"
    key = hashlib.sha256(json.dumps([ds.manifest.get("source", {}).get("sha256"), ds.manifest.get("count"), *recipe])
                         .encode()).hexdigest()[:12]
    weights, meta_file = folder / f"{stem}-{key}.safetensors", folder / f"{stem}-{key}.json"
    if weights.is_file() and meta_file.is_file():
        model.load_state_dict(load_file(weights))
        return model.eval(), json.loads(meta_file.read_text())
    defer_if_asked(what)
    # Minutes on a large dataset, before anything else can be scored: say what it is, once per dataset, with progress.
    console = stderr_console()
    console.print(f"training {what} on the images of {ds.path} ({how}; once per dataset, cached in {folder})",
                  highlight=False)
    if converges:
        columns = (TextColumn(what), BarColumn(), TextColumn("{task.completed:,} steps, until {task.fields[until]}"),
                   TimeElapsedColumn())
    else:
        columns = (TextColumn(what), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} steps"),
                   TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=None, **({"until": "the validation score stalls"} if converges else {}))

        def progress(done: int, steps: int) -> None:
            if converges:
                bar.update(task, completed=done, until=f"the validation score stalls (at most {steps:,})")
            else:
                bar.update(task, completed=done, total=steps)

        model, meta = train(progress)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    try:
        with atomic.atomic_file(weights) as tmp:
            save_file(state, tmp)
        meta["weights_sha256"] = sha256_file(weights)
        atomic.write_json(meta_file, meta)
    except OSError:
        # A read-only dataset folder: use the network without caching it, identified by its weights.
        meta["weights_sha256"] = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    return model.eval(), meta
