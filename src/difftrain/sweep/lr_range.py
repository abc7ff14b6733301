"""The learning-rate range test (Smith 2017): a short run whose learning rate grows exponentially each step; the loss
against the rate shows where training is fastest and where it diverges. A quick first answer before a sweep."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

from difftrain.progress import Progress
from difftrain import atomic
from difftrain.config import Config


def lr_schedule(low: float, high: float, steps: int) -> list[float]:
    """`steps` rates from `low` to `high`, evenly spaced in log."""
    return [low * (high / low) ** (i / max(steps - 1, 1)) for i in range(steps)]


def smoothed(losses: list[float], beta: float = 0.9) -> list[float]:
    """The exponential moving average of the losses, bias-corrected (as Adam corrects its moments)."""
    out, average = [], 0.0
    for i, loss in enumerate(losses, 1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def suggest(lrs: list[float], losses: list[float]) -> dict:
    """The rate at the smoothed loss's minimum, a tenth of it (the suggestion: still descending, far from divergence),
    and the rate where the smoothed loss falls fastest per decade."""
    curve = smoothed(losses)
    lowest = min(range(len(curve)), key=curve.__getitem__)
    slopes = [(curve[i + 1] - curve[i]) / math.log10(lrs[i + 1] / lrs[i]) for i in range(lowest)] if lowest else []
    steepest = min(range(len(slopes)), key=slopes.__getitem__) if slopes else 0
    return {"lr": lrs[lowest] / 10, "lr_at_minimum": lrs[lowest], "lr_steepest": lrs[steepest],
            "minimum_loss": curve[lowest]}


def lr_range_test(config: Config, run_dir: Path, *, low: float = 1e-6, high: float = 1.0, steps: int = 200,
                  console: Console, progress: bool = True) -> dict:
    """Train `steps` steps of `config` in `run_dir` at rates from `low` to `high`; stop early once the loss diverges
    (4x its smoothed minimum, or not finite). Writes lr-range.json and lr-range.png there."""
    from difftrain.training.trainer import setup

    config = config.model_copy(deep=True)
    config.eval.every_images = 0  # nothing to evaluate: only the loss matters here
    config.optim.warmup_images = 0  # the schedule here is the test's own
    state = setup(config, run_dir, progress=progress, console=console)
    t, batch = state.trainee, config.train.batch_size
    lrs, losses = [], []
    bar = Progress(TextColumn("[bold]lr range"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TextColumn("lr {task.fields[lr]}"), TimeRemainingColumn(), console=console, disable=not progress)
    t.net.train()
    try:
        with bar:
            task = bar.add_task("lr", total=steps, lr="-")
            for lr in lr_schedule(low, high, steps):
                for group in t.optimizer.param_groups:
                    group["lr"] = lr
                loss, _, applied = t.step(state.images)
                state.images += batch
                value = float(loss) / batch if bool(applied) else math.inf
                lrs.append(lr)
                losses.append(value)
                state.log.write({"images": state.images, "lr": lr, "loss": value, "event": "lr_range"})
                bar.update(task, advance=1, lr=f"{lr:.2e}")
                finite = [x for x in losses if math.isfinite(x)]
                if not math.isfinite(value) or (len(finite) > 10 and smoothed(finite)[-1] > 4 * min(smoothed(finite))):
                    break
    finally:
        state.log.close()
    finite = [i for i, x in enumerate(losses) if math.isfinite(x)]
    result = {"steps": len(losses), "low": low, "high": high, "batch_size": batch, "lrs": [lrs[i] for i in finite],
              "losses": [losses[i] for i in finite], "diverged_at": lrs[-1] if len(losses) < steps else None}
    result.update(suggest(result["lrs"], result["losses"]) if len(finite) > 1 else {"lr": None})
    atomic.write_json(run_dir / "lr-range.json", result)
    if len(finite) > 1:
        _plot(result, run_dir / "lr-range.png")
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result["lrs"], result["losses"], color="0.75", lw=0.8, label="loss per step")
    ax.plot(result["lrs"], smoothed(result["losses"]), color="C0", label="smoothed")
    ax.axvline(result["lr"], color="C2", ls="--", label=f"suggested lr {result['lr']:.2g}")
    ax.axvline(result["lr_at_minimum"], color="C3", ls=":", label=f"minimum at {result['lr_at_minimum']:.2g}")
    ax.set_xscale("log")
    top = max(smoothed(result["losses"])[:5] + [result["minimum_loss"] * 2])
    ax.set_ylim(0, top * 1.2)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"learning-rate range test (batch {result['batch_size']})")
    ax.legend()
    fig.tight_layout()
    atomic.write_figure(fig, path)
