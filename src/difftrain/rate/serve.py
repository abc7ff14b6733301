"""`difftrain rate serve`: the rating page and its API (FastAPI over the study's SQLite database).

Every API call carries the rater's token (the `t` query parameter of their link, or an X-Rater-Token header); no
token, no access, and a token reaches only its own trials. The API never says where an item came from: a trial is
served as its question, its answers and URLs of its items by position in the rater's own sequence.

Trials are handed out one at a time, as the rater asks: the trial the fewest raters have seen yet that this rater has
not, at random among those (an image judged real or generated is in no other trial: create.py), its two sides
balanced for each rater (as many first items on the left as on the right). In every block of 10 positions, one at
a random place is an attention check (a real item against noise) and another one of the trials shared by all raters
(for their agreement). A vote is committed before it is acknowledged.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from pydantic import BaseModel, Field

from difftrain.errors import UserError
from difftrain.rate import store
from difftrain.rate.page import PAGE

BLOCK = 10  # positions per block: one attention check and one shared trial in each, at random places


def special_positions(rater: int, block: int) -> tuple[int, int]:
    """The positions of the attention check and of the shared trial in a rater's block: fixed per rater and block
    (a reload changes nothing), unpredictable to the rater."""
    attention, shared = random.Random(f"{rater}:{block}").sample(range(BLOCK), 2)
    return block * BLOCK + attention, block * BLOCK + shared


def question(kind: str, condition: str | None, prompts: bool) -> str:
    if kind == "real_fake":
        return "Is this image real or generated?"
    if kind == "likert":
        return f"How well does this image match “{condition}”? (1: not at all, 5: perfectly)"
    if condition is None:
        return "Which image looks more real?"
    return f"Which image better matches “{condition}”?" if prompts else f"Which is the better image of “{condition}”?"


def _pick(db: sqlite3.Connection, rater: int, where: str, most_seen: bool = False) -> int | None:
    """A trial matching `where` that the rater has not seen: the least seen by all raters (the most seen: shared
    trials, so that raters overlap), at random among those."""
    row = db.execute(
        f"""SELECT t.id FROM trials t LEFT JOIN (SELECT trial, COUNT(*) AS seen FROM assignments GROUP BY trial) s
            ON s.trial = t.id WHERE {where} AND t.id NOT IN (SELECT trial FROM assignments WHERE rater = ?)
            ORDER BY COALESCE(s.seen, 0) {'DESC' if most_seen else 'ASC'}, RANDOM() LIMIT 1""", (rater,)).fetchone()
    return row[0] if row else None


def next_assignment(db: sqlite3.Connection, rater: int, quota: int) -> tuple[int, int, int] | None:
    """(position, trial, swap) the rater answers next: their open one, else a new one; None when they are done."""
    db.execute("BEGIN IMMEDIATE")
    try:
        got = _assign(db, rater, quota)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return got


def _assign(db: sqlite3.Connection, rater: int, quota: int) -> tuple[int, int, int] | None:
    row = db.execute("""SELECT a.position, a.trial, a.swap FROM assignments a WHERE a.rater = ? AND NOT EXISTS
                        (SELECT 1 FROM votes v WHERE v.rater = a.rater AND v.position = a.position)
                        ORDER BY a.position LIMIT 1""", (rater,)).fetchone()
    if row:
        return tuple(row)
    position = db.execute("SELECT COUNT(*) FROM assignments WHERE rater = ?", (rater,)).fetchone()[0]
    if position >= quota:
        return None
    trial = None
    attention, shared = special_positions(rater, position // BLOCK)
    if position == attention:
        trial = _pick(db, rater, "t.kind = 'attention'")
    elif position == shared:
        trial = _pick(db, rater, "t.shared = 1", most_seen=True)
    if trial is None:
        trial = _pick(db, rater, "t.kind != 'attention' AND t.shared = 0") or _pick(db, rater, "1")
    if trial is None:
        return None
    kind = db.execute("SELECT kind FROM trials WHERE id = ?", (trial,)).fetchone()[0]
    swap = 0
    if kind in ("pair", "attention"):  # two items: balance the sides
        swapped, total = db.execute("""SELECT COALESCE(SUM(a.swap), 0), COUNT(*) FROM assignments a JOIN trials t
                                       ON t.id = a.trial WHERE a.rater = ? AND t.b IS NOT NULL""", (rater,)).fetchone()
        swap = random.randint(0, 1) if 2 * swapped == total else int(2 * swapped < total)
    db.execute("INSERT INTO assignments (rater, position, trial, swap) VALUES (?, ?, ?, ?)", (rater, position, trial, swap))
    return position, trial, swap


class Vote(BaseModel):
    """A rater's answer to the trial at `position` of their own sequence; `ms`: time from display to answer."""

    position: int = Field(ge=0, le=1_000_000)
    answer: str = Field(min_length=1, max_length=16)
    ms: int | None = Field(None, ge=0, le=86_400_000)


def make_app(study: Path, quota: int | None = None):
    """The FastAPI app of one study."""
    from fastapi import FastAPI, Header, HTTPException, Path as PathParam, Query
    from fastapi.responses import HTMLResponse, Response

    study = Path(study)
    first = store.connect(study)
    meta = store.read_meta(first)
    first.close()
    per_rater = quota or meta.get("per_rater", 100)
    prompts = bool(meta.get("prompts"))
    app = FastAPI(title="difftrain rate", docs_url=None, redoc_url=None, openapi_url=None)

    def connection() -> sqlite3.Connection:
        return store.connect(study)

    def rater_of(db: sqlite3.Connection, token: str | None) -> int:
        row = db.execute("SELECT id FROM raters WHERE token_hash = ?", (store.token_hash(token),)).fetchone() if token else None
        if row is None:
            raise HTTPException(401, "a valid rater token is needed: open the link you were given")
        return row[0]

    def token_of(t: str | None, header: str | None) -> str | None:
        return header or t

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/next")
    def next_trial(t: str | None = Query(None, max_length=100), x_rater_token: str | None = Header(None, max_length=100)):
        db = connection()
        try:
            rater = rater_of(db, token_of(t, x_rater_token))
            answered = db.execute("SELECT COUNT(*) FROM votes WHERE rater = ?", (rater,)).fetchone()[0]
            got = next_assignment(db, rater, per_rater)
            if got is None:
                return {"done": True, "answered": answered, "quota": per_rater}
            position, trial, _ = got
            kind, b, condition = db.execute("SELECT kind, b, condition FROM trials WHERE id = ?", (trial,)).fetchone()
            shown = "pair" if kind == "attention" else kind  # an attention check looks like any pair
            return {"done": False, "answered": answered, "quota": per_rater, "position": position, "kind": shown,
                    "question": question(kind, condition, prompts), "answers": list(store.KINDS[kind]),
                    "items": [f"/api/item/{position}/{slot}" for slot in range(1 if b is None else 2)]}
        finally:
            db.close()

    @app.get("/api/item/{position}/{slot}")
    def item(position: int = PathParam(ge=0, le=1_000_000), slot: int = PathParam(ge=0, le=1), t: str | None = Query(None, max_length=100),
             x_rater_token: str | None = Header(None, max_length=100)):
        db = connection()
        try:
            rater = rater_of(db, token_of(t, x_rater_token))
            row = db.execute("""SELECT t.a, t.b, a.swap FROM assignments a JOIN trials t ON t.id = a.trial
                                WHERE a.rater = ? AND a.position = ?""", (rater, position)).fetchone()
            if row is None or slot not in (0, 1) or (slot == 1 and row[1] is None):
                raise HTTPException(404, "no such item among your trials")
            a, b, swap = row
            shown = (a, b)[slot ^ swap] if b is not None else a
            file = db.execute("SELECT file FROM items WHERE id = ?", (shown,)).fetchone()[0]
        finally:
            db.close()
        return Response((study / file).read_bytes(), media_type="image/png", headers={"Cache-Control": "private, no-store"})

    @app.post("/api/vote")
    def vote(v: Vote, t: str | None = Query(None, max_length=100), x_rater_token: str | None = Header(None, max_length=100)):
        db = connection()
        try:
            rater = rater_of(db, token_of(t, x_rater_token))
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("""SELECT t.kind FROM assignments a JOIN trials t ON t.id = a.trial
                                    WHERE a.rater = ? AND a.position = ?""", (rater, v.position)).fetchone()
                if row is None:
                    raise HTTPException(404, "no such trial among yours")
                if v.answer not in store.KINDS[row[0]]:
                    raise HTTPException(422, f"answer must be one of {', '.join(store.KINDS[row[0]])}")
                try:
                    db.execute("INSERT INTO votes (rater, position, answer, ms, at) VALUES (?, ?, ?, ?, ?)",
                               (rater, v.position, v.answer, v.ms, time.time()))
                except sqlite3.IntegrityError:
                    raise HTTPException(409, "this trial is already answered") from None
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return {"ok": True, "answered": db.execute("SELECT COUNT(*) FROM votes WHERE rater = ?", (rater,)).fetchone()[0]}
        finally:
            db.close()

    return app


def links(study: Path, host: str, port: int) -> list[tuple[str, str]]:
    """(rater name, link) for each rater of raters.json; on every interface, the links name this machine."""
    import json
    import socket

    try:
        raters = json.loads((study / "raters.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{study / 'raters.json'} cannot be read ({e}): add new raters with `difftrain rate serve "
                        f"{study} --add-raters N`") from None
    shown = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return [(r["name"], f"http://{shown}:{port}/?t={r['token']}") for r in raters]


def check_port(host: str, port: int) -> None:
    """A clear error before the links are printed, not uvicorn's log line after."""
    import socket

    try:
        with socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET):
            pass
    except OSError as e:
        raise UserError(f"--port {port} on {host}: {e.strerror or e}; choose another --port (or stop what uses it)") from None


def serve(study: Path, host: str = "127.0.0.1", port: int = 8000, quota: int | None = None) -> None:
    import uvicorn

    uvicorn.run(make_app(study, quota), host=host, port=port, log_level="warning")
