"""`difftrain rate serve` under load: many raters at once on the loopback interface. Prints one JSON line.

Starts the server on a copy of a study without its votes (the study itself is left as it was), adds raters until there
are `--raters`,
and lets each answer `--votes` trials as fast as the server allows, all at once. Then counts what the database holds:
every acknowledged vote must be stored exactly once. Latency is per vote (POST /api/vote), acknowledgement included.

    python benchmarks/rate_load.py --study ratings/study1 --raters 50 --votes 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

import common
from difftrain.rate.store import token_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(study: Path, port: int, *extra: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """`difftrain rate serve` in a process of its own, once it answers (tests/test_rate.py uses it too)."""
    server = subprocess.Popen([sys.executable, "-m", "difftrain", "rate", "serve", str(study), "--port", str(port), *extra],
                              stdout=stdout, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return server
        except httpx.TransportError:
            if server.poll() is not None:
                raise RuntimeError(f"rate serve stopped:\n{server.stderr.read()}") from None
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("rate serve did not answer within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, required=True, help="A folder made by `difftrain rate create`.")
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--votes", type=int, default=10, help="Trials each rater answers.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rate-load-")) / "study"
    shutil.copytree(args.study, work)
    with sqlite3.connect(work / "ratings.db") as db:  # every rater starts afresh on the copy
        db.execute("DELETE FROM votes")
        db.execute("DELETE FROM assignments")
    db.close()
    existing = len(json.loads((work / "raters.json").read_text()))
    port = free_port()
    server = start_server(work, port, "--add-raters", str(max(0, args.raters - existing)), "--quota", str(args.votes))
    tokens = [r["token"] for r in json.loads((work / "raters.json").read_text())][: args.raters]
    latencies, acknowledged, refused = [], [], []
    lock = threading.Lock()

    def rater(token: str) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"X-Rater-Token": token}) as client:
            while not (trial := client.get("/api/next").json())["done"]:
                start = time.perf_counter()
                response = client.post("/api/vote", json={"position": trial["position"], "answer": trial["answers"][0]})
                with lock:
                    latencies.append(time.perf_counter() - start)
                    (acknowledged if response.status_code == 200 else refused).append((token, trial["position"]))

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(len(tokens)) as pool:
            list(pool.map(rater, tokens, timeout=600))
    finally:
        server.terminate()
        server.wait()
    seconds = time.perf_counter() - start
    db = sqlite3.connect(work / "ratings.db")
    # Duplicates: two votes of one rater on one trial (the primary key already stops two on one position).
    stored, distinct = db.execute("""SELECT COUNT(*), COUNT(DISTINCT v.rater || ':' || a.trial) FROM votes v
                                     JOIN assignments a ON a.rater = v.rater AND a.position = v.position""").fetchone()
    rater_of = {h: i for i, h in db.execute("SELECT id, token_hash FROM raters")}
    kept = set(db.execute("SELECT rater, position FROM votes").fetchall())
    lost = sum((rater_of[token_hash(t)], p) not in kept for t, p in set(acknowledged))
    trials_per_rater = sorted({n for (n,) in db.execute("SELECT COUNT(DISTINCT trial) FROM assignments GROUP BY rater")})
    db.close()
    shutil.rmtree(work.parent)
    ms = np.array(latencies) * 1000
    common.emit({"benchmark": "rate_load", "raters": len(tokens), "votes_each": args.votes, "acknowledged": len(acknowledged),
                 "refused": len(refused), "stored": stored, "duplicates": stored - distinct,
                 "lost": lost,
                 "trials_per_rater": trials_per_rater, "seconds": round(seconds, 2), "votes_per_s": round(stored / seconds, 1),
                 "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
                                "max": round(float(ms.max()), 1)}})


if __name__ == "__main__":
    main()
