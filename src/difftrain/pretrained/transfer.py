"""Put a source's weights into a new network, with a report of what fitted.

Classes are matched by name. The model's label space is the source's classes followed by
the new data's classes it lacks, so a continued model can still draw the old ones. A new
class's embedding row starts as a copy of the "no label" row: the new class begins as the
source's unconditional model and moves from there. A model without class embedding that
becomes conditional gets a zero embedding, so at the start every label gives exactly the
source's output.

A run's own caption encoder has one embedding row per character of its captions; the new data's
characters are matched by character too, and one the source never read starts at the mean of
the source's rows. Caption positions beyond the source's caption length keep their initial values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from difftrain.errors import UserError
from difftrain.models import CLASS_ROWS as CLASS_ROW_MODULES
from difftrain.models.caption_encoder import CAPTION_POSITIONS, CHARACTER_ROWS
from difftrain.pretrained.source import Pretrained

CLASS_ROWS = tuple(f"{module}.weight" for module in CLASS_ROW_MODULES.values())


def label_space(source: Pretrained | None, *datasets: list[str]) -> list[str]:
    """Class names of the model: the source's named classes, then every dataset's new ones, in order."""
    names = list(source.class_names or []) if source is not None else []
    for class_names in datasets:
        names += [n for n in class_names if n not in names]
    return names


@dataclass
class LoadReport:
    matched: list[str] = field(default_factory=list)  # copied as they are (the class embedding is counted apart)
    missing: list[str] = field(default_factory=list)  # in the network, not in the source: left at their initial values
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the network: dropped
    reshaped: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, source shape, network shape): dropped
    classes: str = ""  # how the class embedding was carried over
    captions: str = ""  # how the caption encoder's characters and positions were carried over

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.reshaped)

    def lines(self) -> list[str]:
        out = [f"matched {len(self.matched)} tensors, missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
               f"shape-mismatched {len(self.reshaped)}"]
        out += [f"  missing (left at initial values): {name}" for name in self.missing[:10]]
        out += [f"  unexpected (dropped): {name}" for name in self.unexpected[:10]]
        out += [f"  shape-mismatched (dropped): {name} {tuple(a)} -> {tuple(b)}" for name, a, b in self.reshaped[:10]]
        more = len(self.missing) + len(self.unexpected) + len(self.reshaped) - 30
        if more > 0:
            out.append(f"  ... and {more} more")
        if self.classes:
            out.append(f"classes: {self.classes}")
        if self.captions:
            out.append(f"captions: {self.captions}")
        return out

    def as_dict(self) -> dict:
        return {"matched": len(self.matched), "missing": self.missing, "unexpected": self.unexpected,
                "reshaped": [[n, list(a), list(b)] for n, a, b in self.reshaped], "classes": self.classes,
                "captions": self.captions}


def class_rows(source: Pretrained, model_classes: list[str], target: torch.Tensor,
               name: str = CLASS_ROWS[0]) -> tuple[torch.Tensor, str]:
    """The network's class-embedding rows `name` (one per model class, then "no label") made from the source's."""
    rows = source.weights.get(name)
    if rows is None:
        return torch.zeros_like(target), "the source is unconditional: a zero class embedding, so every label starts as the source"
    if rows.shape[1:] != target.shape[1:]:
        return rows, "the source's class embedding has another width (reported as shape-mismatched)"
    rows = rows.to(target.dtype)
    if source.has_null_label:
        named, null = rows[:-1], rows[-1]
    else:  # a foreign model: its rows are classes; the mean stands in for "no label"
        named, null = rows, rows.mean(0)
    # Unnamed rows (a foreign model) are the model's first classes, in order: matched by index.
    names = source.class_names or model_classes[:len(named)]
    if source.class_names and len(names) != len(named):
        raise UserError(f"the source names {len(names)} classes but has {len(named)} class-embedding rows")
    out = null.expand(len(model_classes) + 1, -1).clone()
    kept = [c for c in model_classes if c in names]
    for i, name in enumerate(model_classes):
        if name in names:
            out[i] = named[names.index(name)]
    new = [c for c in model_classes if c not in names]
    note = f"{len(kept)} kept" + (f", {len(new)} new ({', '.join(new[:10])}) starting as the unconditional model" if new else "")
    if not source.class_names:
        note += "; the source's classes are unnamed, so they are matched by index"
        if len(named) > len(model_classes):
            note += f" ({len(named) - len(model_classes)} source row(s) beyond your classes dropped)"
    return out, note


def character_rows(source: Pretrained, characters: list[str], target: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The caption encoder's embedding rows for the model's `characters` (padding included, as ""), from the source's
    rows of the same characters; a character the source never read starts at the mean of its rows."""
    rows = source.weights[CHARACTER_ROWS]
    if rows.shape[1:] != target.shape[1:]:
        return rows, "the source's caption encoder has another width (reported as shape-mismatched)"
    index = {c: i for i, c in enumerate(source.caption_characters)}
    out = rows.to(target.dtype).mean(0).expand_as(target).clone()
    for i, c in enumerate(characters):
        if c in index:
            out[i] = rows[index[c]]
    new = [c for c in characters if c not in index]
    return out, f"{len(characters) - len(new)} characters kept" + (
        f", {len(new)} new ({''.join(new)!r}) starting at the mean of the source's" if new else "")


def caption_positions(rows: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The source's position rows for the model's caption length: cut, or followed by the target's initial rows."""
    if rows.shape[1:] != target.shape[1:] or rows.shape[0] == target.shape[0]:
        return rows, ""
    out = target.clone()
    n = min(len(rows), len(target))
    out[:n] = rows[:n]
    return out, f"captions of at most {len(target)} characters (the source read {len(rows)})"


def transfer_weights(unet: torch.nn.Module, source: Pretrained, model_classes: list[str], allow_partial: bool = False,
                     characters: list[str] | None = None) -> LoadReport:
    """Load `source` into `unet` (the network's core) where names and shapes agree; refuse to drop weights silently.
    `characters` are the model's caption characters, when its own caption encoder reads them."""
    target = unet.state_dict()
    weights = dict(source.weights)
    if hasattr(unet, "_fix_state_dict_keys_on_load"):  # diffusers' renames of old attention weights (query -> to_q, ...)
        unet._fix_state_dict_keys_on_load(weights)
    report = LoadReport()
    class_name = next((name for name in CLASS_ROWS if name in target), None)
    if class_name:
        weights[class_name], report.classes = class_rows(source, model_classes, target[class_name], class_name)
    rebuilt = {class_name} if report.classes else set()
    if CHARACTER_ROWS in target and CHARACTER_ROWS in weights and source.caption_characters and characters:
        weights[CHARACTER_ROWS], report.captions = character_rows(source, characters, target[CHARACTER_ROWS])
        rebuilt.add(CHARACTER_ROWS)
        if CAPTION_POSITIONS in weights and CAPTION_POSITIONS in target:
            weights[CAPTION_POSITIONS], lengths = caption_positions(weights[CAPTION_POSITIONS], target[CAPTION_POSITIONS])
            report.captions += f"; {lengths}" if lengths else ""
    usable = {}
    for name, tensor in weights.items():
        if name not in target:
            report.unexpected.append(name)
        elif tensor.shape != target[name].shape:
            report.reshaped.append((name, tuple(tensor.shape), tuple(target[name].shape)))
        else:
            usable[name] = tensor
            if name not in rebuilt:
                report.matched.append(name)
    report.missing = [name for name in target if name not in weights]
    if not report.complete and not allow_partial:
        for name in CLASS_ROWS:
            if name in report.unexpected:
                report.unexpected[report.unexpected.index(name)] += (" (the source is class-conditional, this run is "
                                                                     "not: its data has no labels or model.conditional=false)")
        raise UserError(f"--init {source.origin} does not fit this network:\n  " + "\n  ".join(report.lines()) +
                        "\nUse the source's network and data shape, or pass --allow-partial "
                        "(finetune.allow_partial=true) to start anyway with only the matched weights.")
    unet.load_state_dict(usable, strict=False)
    return report
