"""`difftrain demo`: the whole path on the built-in digits in a few CPU minutes."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from difftrain.config import load_config
from difftrain.evaluation.run_eval import evaluate_run
from difftrain.progress import status, stderr_console
from difftrain.report.card import write_report
from difftrain.training.trainer import train


def run_demo(out: Path | None = None, images: int | None = None, console: Console | None = None,
             overrides: list[str] = ()) -> Path:
    """Prepare digits, train a class-conditional model, sample every class, evaluate, report."""
    console = console or stderr_console()
    out = Path(out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    config = load_config("digits", overrides=[*overrides, *([f"train.duration_images={images}"] if images else [])])
    console.rule("[bold]1/3 train (built-in digits, class-conditional)")
    result = train(config, out, console=console)
    console.print(f"trained {result.images:,} images in {result.seconds:.0f} s ({result.images_per_second:.0f} img/s)")
    console.rule("[bold]2/3 sample and evaluate")
    with status("sampling every class and scoring the samples", console):
        record = evaluate_run(out, warn=lambda m: console.print(f"[yellow]{m}"))[0]
    console.print(f"FID {record['fid']:.3f} (real-data floor {record['fid_floor']:.3f}), KID {record['kid']:.4f} "
                  f"(floor {record['kid_floor']:.4f}), precision {record['precision']:.2f} / recall {record['recall']:.2f}, "
                  f"classification accuracy score {record['cas']:.1%} (real data {record['cas_real']:.1%}), "
                  f"memorized {record['memorized_fraction']:.1%}, "
                  f"{record['network_evaluations']} network evaluations per sample")
    console.rule("[bold]3/3 report")
    report = write_report(out)
    console.print(f"report: {report}\nsamples: {out / 'samples'}")
    return out
