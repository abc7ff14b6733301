"""`difftrain rate create`: a rating study folder from runs and real data.

    ratings/study1/
        study.json     what was asked (runs, real data, n, sampler), for a reader
        ratings.db     items, trials, raters (token hashes), assignments and votes (store.py)
        raters.json    the raters' tokens (mode 600): `rate serve` prints one link each
        items/         one PNG per item under a random name, so nothing a rater can see names its source
        samples/       each run's samples as `difftrain sample` writes them

Trials, all drawn from the same conditions so that a choice compares models, not classes:
    pair        two runs' samples of the same class or prompt: "which is the better image of a 3?"
    real_fake   one image, real or generated (HYPE): "is this image real or generated?"
    attention   a real image against noise, asked as a pair: a rater who picks the noise is not paying attention
    likert      (--likert) one generated image with its class or prompt: "how faithful is it, 1-5?"
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from pathlib import Path
from typing import Callable

import numpy as np

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.rate import store

RESERVED = ("real", "noise")  # the sources of real items and attention checks' noise: no run is named so


def _names(runs: list[Path]) -> list[str]:
    names = [r.resolve().name for r in runs]
    names = [f"{n}-run" if n in RESERVED else n for n in names]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names, 1)]


def _item(db, study: Path, modality, data: np.ndarray, source: str, condition: str | None) -> int:
    file = f"items/{secrets.token_hex(8)}.png"
    modality.save_preview(data[None], study / file)
    return db.execute("INSERT INTO items (file, source, condition) VALUES (?, ?, ?)", (file, source, condition)).lastrowid


def _scrambled(item: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A real item's values in random places: noise with the item's own range and type, for any kind of data."""
    flat = item.reshape(-1).copy()
    rng.shuffle(flat)
    return flat.reshape(item.shape)


def create_study(out: Path, runs: list[Path], *, real: Path | None = None, n: int = 200, raters: int = 5, per_rater: int = 100,
                 prompts: list[str] | None = None, likert: bool = False, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, say: Callable[[str], None] = print,
                 progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict:
    """Sample `n` items from each run, draw `n` real items, write the trials; returns study.json's record."""
    from difftrain.data import load_dataset
    from difftrain.evaluation.run_eval import sample_run
    from difftrain.store.run import open_run

    if not runs:
        raise UserError("--runs: give at least one run (two or more to compare them)")
    if n < 2:
        raise UserError(f"--n {n}: give at least 2 samples per run")
    if per_rater < 1:
        raise UserError(f"--per-rater {per_rater}: each rater needs at least one trial")
    if raters < 1:
        raise UserError(f"--raters {raters}: at least one rater is needed")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty: choose a new folder for the study")
    opened = [open_run(r) for r in runs]
    first = opened[0]
    for r, path in zip(opened[1:], runs[1:]):
        if not r.modality.same_data(first.modality):
            raise UserError(f"{path} generates {r.modality.spec_summary()}, {runs[0]} {first.modality.spec_summary()}: "
                            "the runs of a study must make the same kind of data")
        if r.class_names != first.class_names:
            raise UserError(f"{path} has classes {r.class_names}, {runs[0]} {first.class_names}: compare runs "
                            "trained on the same classes")
    captioned = [r.captioned for r in opened]
    if any(captioned) and not all(captioned):
        raise UserError("some runs follow captions and some do not: compare runs with the same conditioning")
    if captioned[0] and not prompts:
        raise UserError("these runs follow captions: give --prompts FILE (one prompt per line) to draw them from")
    if likert and not (captioned[0] or first.num_classes):
        raise UserError("--likert asks how well a sample matches its class or prompt; these runs are unconditional")
    if prompts and not captioned[0]:
        raise UserError("--prompts is for runs trained on captioned images; these runs are conditioned on "
                        + ("classes" if first.num_classes else "nothing"))
    real = Path(real) if real else Path(first.dataset["path"])
    data = load_dataset(real)
    if not data.modality.same_data(first.modality):
        raise UserError(f"--real {real} holds {data.modality.spec_summary()}, the runs make "
                        f"{first.modality.spec_summary()}: give the runs' prepared dataset")
    if first.num_classes and not prompts and data.class_names != first.class_names:
        raise UserError(f"--real {real} has classes {data.class_names}, the runs {first.class_names}: give the runs' "
                        "prepared dataset (its classes name the pairs' and attention checks' questions)")
    rng = np.random.default_rng(seed)
    names = _names(runs)

    # Built beside --out and renamed into place when complete: an interrupted create leaves no half-made study.
    with atomic.atomic_directory(out, overwrite=True) as tmp:  # --out is absent or an empty folder
        (tmp / "items").mkdir()
        (tmp / "samples").mkdir()
        db = store.connect(tmp, create=True)
        db.execute("BEGIN IMMEDIATE")

        # Generated items: the first half of each run's samples for pairs (and faithfulness), keyed by their condition
        # (the class name, the prompt, or None), the second half judged real or generated. A rater never sees an image
        # twice (serve.py), and apart these pools do not compete for a rater's trials.
        generated: dict[str, dict[str | None, list[int]]] = {}
        judged: list[int] = []
        for run_dir, run, name in zip(runs, opened, names):
            say(f"sampling {n} items from {run_dir} ({name})")
            spec = run.sampling_spec(seed, steps=steps, guidance=guidance)
            result = sample_run(run_dir, n, spec, tmp / "samples" / f"{name}.npz", prompts=prompts,
                                progress=progress(name, n) if progress else None, warn=say)
            labels = result["labels"]
            by_condition = generated.setdefault(name, {})
            for i, item in enumerate(result["images"]):
                condition = (prompts[i % len(prompts)] if prompts else
                             run.class_names[labels[i]] if labels is not None else None)
                made = _item(db, tmp, run.modality, item, name, condition)
                if i < n // 2:
                    by_condition.setdefault(condition, []).append(made)
                else:
                    judged.append(made)

        # As many real items as generated ones are judged, so that "real" and "generated" are equally likely answers
        # (HYPE); more for the attention checks: enough for one in every 10 trials of a rater (serve.py).
        checks = max(4, -(-per_rater // 10))
        wanted = len(judged) + checks
        say(f"drawing {wanted} real items from {real}")
        # Held-out items first, then training items if there are too few.
        pool = np.concatenate([data.test_data, data.train_data])
        pool_labels = (np.concatenate([data.test_labels, data.train_labels]) if data.test_labels is not None
                       and data.train_labels is not None else None)
        held_out = len(data.test_data)
        order = np.concatenate([rng.permutation(held_out), held_out + rng.permutation(len(data.train_data))])
        real_items, attention_items = [], []
        for k, i in enumerate(order[:wanted]):
            # A captioned study's attention check asks about a prompt, as its pairs do.
            condition = (prompts[k % len(prompts)] if prompts else
                         data.class_names[pool_labels[i]] if pool_labels is not None else None)
            real_items.append(_item(db, tmp, data.modality, pool[i], "real", None if prompts else condition))
            attention_items.append((real_items[-1], condition, pool[i]))

        trials: list[tuple] = []
        for a, b in itertools.combinations(names, 2):
            for condition in generated[a]:
                trials += [("pair", x, y, condition) for x, y in zip(generated[a][condition], generated[b].get(condition, []))]
        trials += [("real_fake", x, None, None) for x in judged + real_items[:len(judged)]]
        for item, condition, values in attention_items[len(judged):]:
            trials.append(("attention", item, _item(db, tmp, data.modality, _scrambled(values, rng), "noise", condition), condition))
        if likert:
            trials += [("likert", x, None, c) for name in names for c, items in generated[name].items() if c for x in items]
        pairs = [i for i, t in enumerate(trials) if t[0] == "pair"]
        # As many shared pairs as a rater has shared positions (one in every 10), so that every rater sees them all.
        shared = set(rng.choice(pairs, min(len(pairs), max(1, per_rater // 10)), replace=False).tolist()) if pairs else set()
        db.executemany("INSERT INTO trials (kind, a, b, condition, shared) VALUES (?, ?, ?, ?, ?)",
                       [(*t, int(i in shared)) for i, t in enumerate(trials)])
        record = {"runs": [str(r.resolve()) for r in runs], "names": names, "real": str(real.resolve()), "n": n,
                  "prompts": prompts, "likert": likert, "per_rater": per_rater, "seed": seed, "sampling": {"steps": steps, "guidance": guidance},
                  "kind": first.modality.kind, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "trials": {kind: sum(t[0] == kind for t in trials) for kind in store.KINDS}}
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in record.items()])
        db.execute("COMMIT")
        store.add_raters(tmp, db, raters)
        db.close()
        atomic.write_json(tmp / "study.json", record)
    return record
