"""Peak memory of `difftrain data prepare` on image folders of growing size: bounded, or growing with the data?

For each count, a folder of COUNT random-noise RGB PNGs (incompressible, SIZE x SIZE, 10 classes) is written once, then
`python -m difftrain data prepare` runs on it in a fresh process, whose peak resident memory (ru_maxrss) is read after
it ends. Prints one JSON line: per count, the data's size in memory, the peak, the seconds.

    python benchmarks/prepare_memory.py --out /tmp/prepare-memory --counts 5000 20000 40000 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def image_folder(root: Path, count: int, size: int) -> Path:
    folder = root / f"noise-{count}-{size}"
    if (folder / ".complete").is_file():
        return folder
    rng = np.random.default_rng(count)
    for i in range(count):
        cls = folder / str(i % 10)
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(cls / f"{i:07d}.png", compress_level=1)
    (folder / ".complete").touch()
    return folder


def peak_of(command: list[str]) -> tuple[float, float]:
    """(peak resident MiB, seconds) of `command` run in a child process; ru_maxrss of the children is the largest
    child's, so each measurement runs in its own grandchild through a wrapper process."""
    wrapper = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
               "print(json.dumps([r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    code, kib = json.loads(done.stdout.strip().splitlines()[-1])
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return kib / 1024, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--counts", type=int, nargs="+", default=[5000, 20000, 40000])
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for count in args.counts:
        folder = image_folder(out, count, args.size)
        target = out / f"prepared-{count}"
        peak, seconds = peak_of([sys.executable, "-m", "difftrain", "data", "prepare", str(folder), "--out", str(target),
                                 "--overwrite", "--test-fraction", "0.1"])
        rows.append({"images": count, "data_mib": count * args.size**2 * 3 / 2**20, "peak_rss_mib": round(peak, 1),
                     "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "prepare_memory", "settings": vars(args), "threads": os.environ.get("OMP_NUM_THREADS"),
                      "results": rows}))


if __name__ == "__main__":
    main()
