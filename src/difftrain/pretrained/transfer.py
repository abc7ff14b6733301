"""Put a source's weights into a new network, with a report of what fitted.

Classes are matched by name. The model's label space is the source's classes followed by
the new data's classes it lacks, so a continued model can still draw the old ones. A new
class's embedding row starts as a copy of the "no label" row: the new class begins as the
source's unconditional model and moves from there. A model without class embedding that
becomes conditional gets a zero embedding, so at the start every label gives exactly the
source's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from difftrain.errors import UserError
from difftrain.pretrained.source import Pretrained

CLASS_ROWS = "class_embedding.weight"


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
        return out

    def as_dict(self) -> dict:
        return {"matched": len(self.matched), "missing": self.missing, "unexpected": self.unexpected,
                "reshaped": [[n, list(a), list(b)] for n, a, b in self.reshaped], "classes": self.classes}


def class_rows(source: Pretrained, model_classes: list[str], target: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The network's class-embedding rows (one per model class, then "no label") made from the source's."""
    rows = source.weights.get(CLASS_ROWS)
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


def transfer_weights(unet: torch.nn.Module, source: Pretrained, model_classes: list[str], allow_partial: bool = False) -> LoadReport:
    """Load `source` into `unet` (a UNet2DModel) where names and shapes agree; refuse to drop weights silently."""
    target = unet.state_dict()
    weights = dict(source.weights)
    if hasattr(unet, "_fix_state_dict_keys_on_load"):  # diffusers' renames of old attention weights (query -> to_q, ...)
        unet._fix_state_dict_keys_on_load(weights)
    report = LoadReport()
    if CLASS_ROWS in target:
        weights[CLASS_ROWS], report.classes = class_rows(source, model_classes, target[CLASS_ROWS])
    usable = {}
    for name, tensor in weights.items():
        if name not in target:
            report.unexpected.append(name)
        elif tensor.shape != target[name].shape:
            report.reshaped.append((name, tuple(tensor.shape), tuple(target[name].shape)))
        else:
            usable[name] = tensor
            if name != CLASS_ROWS or not report.classes:
                report.matched.append(name)
    report.missing = [name for name in target if name not in weights]
    if not report.complete and not allow_partial:
        if CLASS_ROWS in report.unexpected:
            report.unexpected[report.unexpected.index(CLASS_ROWS)] += (" (the source is class-conditional, this run is not: "
                                                                       "its data has no labels or model.conditional=false)")
        raise UserError(f"--init {source.origin} does not fit this network:\n  " + "\n  ".join(report.lines()) +
                        "\nUse the source's network and data shape, or pass --allow-partial "
                        "(finetune.allow_partial=true) to start anyway with only the matched weights.")
    unet.load_state_dict(usable, strict=False)
    return report
