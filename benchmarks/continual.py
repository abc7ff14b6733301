"""Fine-tuning and continual learning on MNIST: pre-train on digits 0-4, then learn 5-9.

Four runs of `difftrain train --preset mnist`, each in its own process, one after another:

    pretrain   digits 0-4 from scratch, --pretrain-images
    scratch    digits 5-9 from scratch, --images
    finetune   digits 5-9 from the pretrain run (--init), no replay, --images
    replay     the same with --replay FRACTION of every batch drawn from digits 0-4

Every run is evaluated during training (FID on digits 5-9, --during-n samples, every --eval-every
images). "Fine-tuning pays" is the fraction of the scratch run's training images that the
fine-tuned run needs to reach the scratch run's final FID (and, for every FID the scratch run
passed on the way, the images each run needed to reach it). The runs from the pretrain run end with
their forgetting report (FID, precision/recall and CAS on digits 0-4 before and after, and on 5-9).
Prints one JSON line.

Run:
    python benchmarks/continual.py --mnist ../shared/data/mnist --work /tmp/continual \
        --pretrain-images 100000 --images 60000 --eval-every 10000 --replay 0.25
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common


def difftrain(*args) -> float:
    """Run the CLI as a user would; its seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from difftrain.cli import main; main()", *map(str, args)], check=True)
    return time.perf_counter() - start


def fid_curve(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["images"], r["fid"]) for r in records if r.get("during_training") and "fid" in r]


def images_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((images for images, fid in curve if fid <= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", required=True, help="folder of the MNIST IDX files")
    p.add_argument("--work", required=True, help="folder for the datasets and runs (kept; finished runs are reused)")
    p.add_argument("--pretrain-images", type=int, default=100_000)
    p.add_argument("--images", type=int, default=60_000, help="training images of each run on digits 5-9")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--during-n", type=int, default=500, help="samples per evaluation during training")
    p.add_argument("--forgetting-n", type=int, default=1000, help="samples per evaluation of the forgetting report")
    p.add_argument("--replay", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    work = Path(args.work)
    data = {}
    for name, classes in (("old", "0,1,2,3,4"), ("new", "5,6,7,8,9")):
        data[name] = work / f"mnist-{classes.replace(',', '')}"
        if not (data[name] / "manifest.json").is_file():
            difftrain("data", "prepare", args.mnist, "--classes", classes, "--out", data[name])

    common_settings = [f"eval.every_images={args.eval_every}", f"eval.during_n={args.during_n}",
                       f"eval.n_samples={args.forgetting_n}", "eval.metrics=[fid,pr,cas]",
                       f"train.checkpoint_every_images={args.eval_every}", f"train.threads={args.threads}", "--no-progress"]
    runs = {
        "pretrain": (data["old"], args.pretrain_images, []),
        "scratch": (data["new"], args.images, []),
        "finetune": (data["new"], args.images, ["--init", work / "pretrain"]),
        "replay": (data["new"], args.images, ["--init", work / "pretrain", "--replay", args.replay]),
    }
    # Wall time of each run, kept beside them so that a rerun which reuses finished runs still reports it.
    times = work / "seconds.json"
    seconds = json.loads(times.read_text()) if times.is_file() else {}
    for name, (dataset, images, extra) in runs.items():
        run = work / name
        if (run / "README.md").is_file() or (name == "pretrain" and list((run / "checkpoints").glob("ckpt-*"))):
            continue  # finished before
        seconds[name] = difftrain("train", "--preset", "mnist", "--data", dataset, "--out", run, *extra,
                                  f"train.duration_images={images}", *common_settings)
        times.write_text(json.dumps(seconds))

    curves = {name: fid_curve(work / name) for name in runs if name != "pretrain"}
    # For every FID the scratch run reached: the images each run needed to reach it.
    to_reach = [{"fid": fid, **{name: images_to_reach(curve, fid) for name, curve in curves.items()}}
                for _, fid in curves["scratch"]]
    final = to_reach[-1]
    forgetting = {name: json.loads((work / name / "forgetting.json").read_text()) for name in runs if name not in ("pretrain", "scratch")}
    common.emit({
        "benchmark": "continual", "settings": vars(args), "seconds": seconds,
        "fid_on_new_during_training": curves,
        "images_to_reach_scratch_fids": to_reach,
        "finetune_fraction_of_scratch_images": final["finetune"] / final["scratch"] if final["finetune"] else None,
        "forgetting": {name: {part: {k: f[part][k] for k in ("fid", "precision", "recall", "cas") if k in f[part]}
                              for part in ("old_before", "old_after", "new_after")} for name, f in forgetting.items()},
    })


if __name__ == "__main__":
    main()
