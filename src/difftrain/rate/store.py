"""A rating study's SQLite database: the items shown, the trials, the raters (by token hash) and their votes.

WAL mode with synchronous=FULL: a vote is on disk before the server acknowledges it, so a server killed mid-study
keeps every acknowledged vote, and many raters read while one writes. Tokens are stored only as SHA-256 hashes; the
tokens themselves live in raters.json (readable by the study's owner only), which `rate serve` prints as links.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from pathlib import Path

from difftrain import atomic
from difftrain.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, file TEXT NOT NULL, source TEXT NOT NULL, condition TEXT);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, a INTEGER NOT NULL REFERENCES items, b INTEGER REFERENCES items,
    condition TEXT, shared INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS raters (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, token_hash TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    rater INTEGER NOT NULL REFERENCES raters, position INTEGER NOT NULL, trial INTEGER NOT NULL REFERENCES trials,
    swap INTEGER NOT NULL, PRIMARY KEY (rater, position), UNIQUE (rater, trial));
CREATE TABLE IF NOT EXISTS votes (
    rater INTEGER NOT NULL, position INTEGER NOT NULL, answer TEXT NOT NULL, ms INTEGER, at REAL NOT NULL,
    PRIMARY KEY (rater, position), FOREIGN KEY (rater, position) REFERENCES assignments (rater, position));
"""

# What each kind of trial asks, and the answers it takes. Pairs and attention checks look alike to a rater.
KINDS = {
    "pair": ("left", "right"),
    "attention": ("left", "right"),
    "real_fake": ("real", "generated"),
    "likert": ("1", "2", "3", "4", "5"),
}


def database(study: Path) -> Path:
    return study / "ratings.db"


def connect(study: Path, *, create: bool = False) -> sqlite3.Connection:
    path = database(study)
    if not create and not path.is_file():
        raise UserError(f"{study} is not a rating study ({path.name} is missing): make one with "
                        f"`difftrain rate create --runs RUN_A RUN_B --out {study}`")
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    if create:
        db.executescript(SCHEMA)
    return db


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_raters(study: Path, db: sqlite3.Connection, count: int) -> list[dict]:
    """`count` new raters with fresh tokens; raters.json (mode 600) gains them."""
    tokens_file = study / "raters.json"
    raters = json.loads(tokens_file.read_text()) if tokens_file.is_file() else []
    first = db.execute("SELECT COUNT(*) FROM raters").fetchone()[0] + 1
    new = [{"name": f"rater-{first + i}", "token": secrets.token_urlsafe(18)} for i in range(count)]
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO raters (name, token_hash) VALUES (?, ?)", [(r["name"], token_hash(r["token"])) for r in new])
    db.execute("COMMIT")
    atomic.write_text(tokens_file, json.dumps(raters + new, indent=2) + "\n")
    tokens_file.chmod(0o600)
    return new


def read_meta(db: sqlite3.Connection) -> dict:
    return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
