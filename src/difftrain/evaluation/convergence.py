"""Training a downstream model to convergence, as a practitioner would: score a validation split every `every`
steps, cut the learning rate when the score stalls (ReduceLROnPlateau), stop after `patience` checks without a
gain (or at `max_steps`), and keep the weights of the best check.

The utility reports' judges (modalities/image_judge.py, modalities/segmenter.py) train this way, so a gain or
loss from synthetic data is measured with models trained as well as their data allows, not cut off at a budget.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Converged:
    steps: int  # optimizer steps taken
    best_step: int  # the step whose weights were kept
    best_score: float  # the validation score there
    stopped: str  # "patience", "max_steps" or "min_lr"
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation score) of every check

    def as_dict(self) -> dict:
        return {"steps": self.steps, "best_step": self.best_step, "best_validation": self.best_score, "stopped": self.stopped}


def check_schedule(items: int, batch: int, max_steps: int | None = None) -> tuple[int, int]:
    """(max_steps, every) of the judges' recipe for `items` training items in batches of `batch`: a check once an
    epoch, but at least 50 steps apart (a small set is not checked after every step), and a cap that early stopping
    ends long before (None: the larger of 60 epochs and 3,000 steps)."""
    epoch = max(1, math.ceil(items / batch))
    max_steps = max_steps or max(60 * epoch, 3000)
    return max_steps, min(max(epoch, 50), max_steps)


def train_to_convergence(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], None],
                         validate: Callable[[], float], *, max_steps: int, every: int, patience: int = 5,
                         plateau: int = 2, factor: float = 0.3, min_lr: float = 1e-5) -> Converged:
    """Call `step()` (one optimizer step) until `validate()` (higher is better) has not improved for `patience` checks,
    the learning rate has fallen below `min_lr`, or `max_steps`; `model` ends with its best check's weights."""
    if max_steps < 1 or every < 1:
        raise ValueError(f"max_steps ({max_steps}) and every ({every}) must be at least 1")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=plateau)
    best_score, best_step, best_state = float("-inf"), 0, None
    history, since_best, stopped, taken = [], 0, "max_steps", 0
    while taken < max_steps:
        model.train()
        for _ in range(min(every, max_steps - taken)):
            step()
            taken += 1
        model.eval()
        score = float(validate())
        history.append((taken, score))
        if score > best_score:
            best_score, best_step, best_state, since_best = score, taken, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
        scheduler.step(score)
        if since_best >= patience:
            stopped = "patience"
            break
        if optimizer.param_groups[0]["lr"] < min_lr:
            stopped = "min_lr"
            break
    model.load_state_dict(best_state)
    model.eval()
    return Converged(taken, best_step, best_score, stopped, history)
