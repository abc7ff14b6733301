"""`difftrain rate serve` under load: many raters at once on the loopback interface. Prints one JSON line.

Starts the server on a copy of a study without its votes (the study itself is left as it was), adds raters until there
are `--raters`,
and lets each answer `--votes` trials as fast as the server allows, all at once. Then counts what the database holds:
every acknowledged vote must be stored exactly once. Latency is per vote (POST /api/vote), acknowledgement included.

    python benchmarks/rate_load.py --study ratings/study1 --raters 50 --votes 10

With --kill-points N the server is killed (-9) N times under that load and started again: no acknowledged vote may be
lost or stored twice, and every rater must finish.

    python benchmarks/rate_load.py --study ratings/study1 --raters 20 --votes 100 --kill-points 20
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


def fresh_copy(study: Path) -> Path:
    """A copy of the study without its votes (every rater starts afresh; the study itself is left as it was)."""
    work = Path(tempfile.mkdtemp(prefix="rate-load-")) / "study"
    shutil.copytree(study, work)
    with sqlite3.connect(work / "ratings.db") as db:
        db.execute("DELETE FROM votes")
        db.execute("DELETE FROM assignments")
    db.close()
    return work


class Raters:
    """Raters voting as fast as the server answers, each until its quota is done or the server is gone."""

    def __init__(self, port: int, tokens: list[str]):
        self.port, self.tokens = port, tokens
        self.latencies, self.acknowledged, self.refused = [], [], []
        self._lock = threading.Lock()

    def rate(self, token: str) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60, headers={"X-Rater-Token": token}) as client:
            try:
                while not (trial := client.get("/api/next").json())["done"]:
                    start = time.perf_counter()
                    response = client.post("/api/vote", json={"position": trial["position"], "answer": trial["answers"][0]})
                    with self._lock:
                        self.latencies.append(time.perf_counter() - start)
                        (self.acknowledged if response.status_code == 200 else self.refused).append((token, trial["position"]))
            except (httpx.TransportError, ValueError):  # the server was killed under it (kill points)
                pass

    def run(self) -> None:
        with ThreadPoolExecutor(len(self.tokens)) as pool:
            list(pool.map(self.rate, self.tokens, timeout=600))


def tally(work: Path, acknowledged: list[tuple[str, int]]) -> dict:
    """What the database holds: votes stored, duplicated (two of one rater on one trial; the primary key already stops
    two on one position), and acknowledged but lost; and SQLite's own integrity check."""
    db = sqlite3.connect(work / "ratings.db")
    stored, distinct = db.execute("""SELECT COUNT(*), COUNT(DISTINCT v.rater || ':' || a.trial) FROM votes v
                                     JOIN assignments a ON a.rater = v.rater AND a.position = v.position""").fetchone()
    rater_of = {h: i for i, h in db.execute("SELECT id, token_hash FROM raters")}
    kept = set(db.execute("SELECT rater, position FROM votes").fetchall())
    lost = sum((rater_of[token_hash(t)], p) not in kept for t, p in set(acknowledged))
    trials_per_rater = sorted({n for (n,) in db.execute("SELECT COUNT(DISTINCT trial) FROM assignments GROUP BY rater")})
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    return {"stored": stored, "duplicates": stored - distinct, "lost": lost, "trials_per_rater": trials_per_rater,
            "integrity": integrity}


def load(args) -> None:
    work = fresh_copy(args.study)
    existing = len(json.loads((work / "raters.json").read_text()))
    port = free_port()
    server = start_server(work, port, "--add-raters", str(max(0, args.raters - existing)), "--quota", str(args.votes))
    raters = Raters(port, [r["token"] for r in json.loads((work / "raters.json").read_text())][: args.raters])
    start = time.perf_counter()
    try:
        raters.run()
    finally:
        server.terminate()
        server.wait()
    seconds = time.perf_counter() - start
    counts = tally(work, raters.acknowledged)
    shutil.rmtree(work.parent)
    ms = np.array(raters.latencies) * 1000
    common.emit({"benchmark": "rate_load", "raters": len(raters.tokens), "votes_each": args.votes,
                 "acknowledged": len(raters.acknowledged), "refused": len(raters.refused), **counts,
                 "seconds": round(seconds, 2), "votes_per_s": round(counts["stored"] / seconds, 1),
                 "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
                                "max": round(float(ms.max()), 1)}})


def kill_points(args) -> None:
    """`--kill-points N`: N times, the server is started, the raters vote at once, and the server is killed (-9) after a
    delay drawn over [0, --window] s from its start (its start-up included); started again, it must hold every vote it
    acknowledged, once, in a sound database. At the end the raters finish their quota."""
    import random

    rng = random.Random(args.seed)
    work = fresh_copy(args.study)
    existing = len(json.loads((work / "raters.json").read_text()))
    port = free_port()
    start_server(work, port, "--add-raters", str(max(0, args.raters - existing))).kill()
    tokens = [r["token"] for r in json.loads((work / "raters.json").read_text())][: args.raters]
    acknowledged, problems, killed, per_point = [], [], 0, []
    command = [sys.executable, "-m", "difftrain", "rate", "serve", str(work), "--port", str(port), "--quota", str(args.votes)]
    for point in range(args.kill_points):
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        raters = Raters(port, tokens)
        voting = threading.Thread(target=vote_once_up, args=(raters, server))
        voting.start()
        delay = rng.uniform(0, args.window)
        time.sleep(delay)
        killed += server.poll() is None
        server.kill()
        server.wait()
        voting.join()
        acknowledged += raters.acknowledged
        per_point.append(len(raters.acknowledged))
        counts = tally(work, acknowledged)
        problems += [f"point {point} ({delay:.2f} s): {k} {counts[k]}" for k in ("duplicates", "lost") if counts[k]]
        problems += [f"point {point}: integrity {counts['integrity']}"] if counts["integrity"] != "ok" else []
    under_kills = len(acknowledged)
    server = start_server(work, port, "--quota", str(args.votes))  # the raters finish their quota
    try:
        raters = Raters(port, tokens)
        raters.run()
    finally:
        server.terminate()
        server.wait()
    acknowledged += raters.acknowledged
    counts = tally(work, acknowledged)
    shutil.rmtree(work.parent)
    finished = counts["stored"] == args.votes * len(tokens)
    common.emit({"benchmark": "rate_kill_points", "raters": len(tokens), "votes_each": args.votes, "points": args.kill_points,
                 "killed_while_running": killed, "acknowledged_between_kills": under_kills, "acknowledged_per_point": per_point, "acknowledged": len(acknowledged), **counts, "every_rater_finished": finished,
                 "problems": problems + ([] if finished else [f"{counts['stored']} votes at the end, not {args.votes * len(tokens)}"])})


def vote_once_up(raters: Raters, server: subprocess.Popen) -> None:
    """The raters vote as soon as the server answers, unless it is killed first."""
    while server.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{raters.port}/", timeout=1)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        raters.run()
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, required=True, help="A folder made by `difftrain rate create`.")
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--votes", type=int, default=10, help="Trials each rater answers.")
    parser.add_argument("--kill-points", type=int, default=0, help="Instead: kill the server (-9) this many times under load.")
    parser.add_argument("--window", type=float, default=6.0, help="--kill-points: the kill delays' range from start, s.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (kill_points if args.kill_points else load)(args)


if __name__ == "__main__":
    main()
