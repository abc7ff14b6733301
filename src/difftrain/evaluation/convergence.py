"""Training a downstream model to convergence, as a practitioner would: score a validation split every `every`
steps, cut the learning rate when the score stalls (ReduceLROnPlateau), stop after `patience` checks without a
gain (or at `max_steps`), and keep the weights of the best check at or after `min_steps`.

Why a floor: a small validation split (14 digits at 10% of the built-in digits) saturates within the first checks,
every image right and the label-smoothed cross-entropy near its floor, so its best check can be an undertrained model
(seen: judges kept at step 50 scored 0.93-0.95 on the test digits where trained ones scored 0.97).

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


def check_schedule(items: int, batch: int, max_steps: int | None = None) -> tuple[int, int, int]:
    """(max_steps, every, min_steps) of the judges' recipe for `items` training items in batches of `batch`: a check
    once an epoch, but at least 50 steps apart (a small set is not checked after every step), a cap that early
    stopping ends long before (None: the larger of 60 epochs and 3,000 steps), and a floor of 10 checks (500 steps or
    10 epochs, at most the cap) before which nothing stops or is kept."""
    epoch = max(1, math.ceil(items / batch))
    max_steps = max_steps or max(60 * epoch, 3000)
    every = min(max(epoch, 50), max_steps)
    return max_steps, every, min(10 * every, max_steps)


def train_to_convergence(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], None],
                         validate: Callable[[], float], *, max_steps: int, every: int, min_steps: int = 0,
                         patience: int = 5, plateau: int = 2, factor: float = 0.3, min_lr: float = 1e-5) -> Converged:
    """Call `step()` (one optimizer step) until `validate()` (higher is better) has not improved for `patience` checks,
    the learning rate has fallen below `min_lr`, or `max_steps`, but not before `min_steps`; `model` ends with the
    weights of its best check at or after `min_steps` (the learning rate follows every check)."""
    if max_steps < 1 or every < 1:
        raise ValueError(f"max_steps ({max_steps}) and every ({every}) must be at least 1")
    min_steps = min(min_steps, max_steps)
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
        scheduler.step(score)
        if taken < min_steps:
            continue
        if score > best_score:
            best_score, best_step, best_state, since_best = score, taken, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
        if since_best >= patience:
            stopped = "patience"
            break
        if optimizer.param_groups[0]["lr"] < min_lr:
            stopped = "min_lr"
            break
    model.load_state_dict(best_state)
    model.eval()
    return Converged(taken, best_step, best_score, stopped, history)
