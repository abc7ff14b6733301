"""`difftrain rate`: a study made from runs, the API's security and bookkeeping, a killed server keeping its votes,
50 concurrent raters, the statistics against closed forms and simulations, and a real browser rating to the end."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from difftrain.config import load_config
from difftrain.errors import UserError
from difftrain.rate import stats
from difftrain.rate.create import create_study
from difftrain.rate.results import write_results
from tests.conftest import tiny_overrides
from tests.test_cli import difftrain

fastapi = pytest.importorskip("fastapi", reason="difftrain rate serves with FastAPI: pip install -e '.[dev]'")
from fastapi.testclient import TestClient  # noqa: E402

from difftrain.rate.serve import make_app, special_positions  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from rate_load import free_port, start_server  # noqa: E402  (benchmarks/rate_load.py: the server under load)


@pytest.fixture(scope="module")
def runs(digits_dir, tmp_path_factory) -> list[Path]:
    """Two tiny runs on the same digits, a longer-trained one and a shorter one."""
    from difftrain.training.trainer import train

    root = tmp_path_factory.mktemp("rate-runs")
    made = []
    for name, steps in (("long", 6), ("short", 2)):
        train(load_config(overrides=tiny_overrides(digits_dir, **{"train.duration_steps": steps})), root / name, progress=False)
        made.append(root / name)
    return made


@pytest.fixture(scope="module")
def made_study(runs, tmp_path_factory) -> Path:
    """A study as `rate create` leaves it, copied by each test that votes (`study`)."""
    out = tmp_path_factory.mktemp("rate-study") / "study"
    create_study(out, runs, n=12, raters=3, per_rater=20, say=lambda m: None)
    return out


@pytest.fixture
def study(made_study, tmp_path) -> Path:
    copy = tmp_path / "study"
    shutil.copytree(made_study, copy)
    return copy


def said(result) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def tokens(study: Path) -> list[str]:
    return [r["token"] for r in json.loads((study / "raters.json").read_text())]


def source_of(study: Path, token: str, position: int, slot: int) -> str:
    """What a rater cannot know: the source of an item they are shown (the tests' oracle, read from the database)."""
    from difftrain.rate.store import token_hash

    db = sqlite3.connect(study / "ratings.db")
    a, b, swap = db.execute("""SELECT t.a, t.b, a.swap FROM assignments a JOIN trials t ON t.id = a.trial JOIN raters r
                               ON r.id = a.rater WHERE r.token_hash = ? AND a.position = ?""", (token_hash(token), position)).fetchone()
    item = (a, b)[slot ^ swap] if b is not None else a
    source = db.execute("SELECT source FROM items WHERE id = ?", (item,)).fetchone()[0]
    db.close()
    return source


def rate_all(client, study: Path, token: str, choose) -> list[dict]:
    """Answer every trial of a rater with choose(trial, sources shown) and return the trials seen."""
    seen = []
    while True:
        trial = client.get("/api/next", headers={"X-Rater-Token": token}).json()
        if trial["done"]:
            return seen
        sources = [source_of(study, token, trial["position"], slot) for slot in range(len(trial["items"]))]
        answer = choose(trial, sources)
        response = client.post("/api/vote", headers={"X-Rater-Token": token},
                               json={"position": trial["position"], "answer": answer, "ms": 900})
        assert response.status_code == 200, response.text
        seen.append({**trial, "sources": sources, "answer": answer})


def prefers(order: list[str]):
    """A rater who picks the real item, else the source earlier in `order`, and knows real from generated."""
    rank = {s: i for i, s in enumerate(["real", *order, "noise"])}

    def choose(trial, sources):
        if trial["kind"] == "real_fake":
            return "real" if sources[0] == "real" else "generated"
        return ("left", "right")[int(rank[sources[1]] < rank[sources[0]])]

    return choose


def careless(trial, sources):
    return trial["answers"][0]  # always the first button: left, or real


def inattentive(trial, sources):
    """A rater who clicks without looking: here, always the noise of an attention check."""
    return ("left", "right")[sources.index("noise")] if "noise" in sources else careless(trial, sources)


# --- the study folder ---------------------------------------------------------------------------------------------

def test_create_writes_items_trials_and_private_tokens(made_study, runs):
    record = json.loads((made_study / "study.json").read_text())
    # Of 12 samples a run, 6 pair up by class, 6 are judged real or generated beside as many real items; 4 attention
    # checks, on real items of their own.
    assert record["trials"] == {"pair": 6, "attention": 4, "real_fake": 24, "likert": 0}
    db = sqlite3.connect(made_study / "ratings.db")
    pairs = db.execute("""SELECT ia.source, ib.source, ia.condition, ib.condition, t.condition FROM trials t
                          JOIN items ia ON ia.id = t.a JOIN items ib ON ib.id = t.b WHERE t.kind = 'pair'""").fetchall()
    assert {p[:2] for p in pairs} == {("long", "short")} and all(p[2] == p[3] == p[4] for p in pairs)
    attention = db.execute("""SELECT ia.source, ib.source FROM trials t JOIN items ia ON ia.id = t.a JOIN items ib
                              ON ib.id = t.b WHERE t.kind = 'attention'""").fetchall()
    assert set(attention) == {("real", "noise")}
    assert db.execute("SELECT COUNT(*) FROM trials WHERE shared = 1").fetchone()[0] == 2  # one per 10 trials of a rater
    uses = db.execute("SELECT COUNT(*), COUNT(DISTINCT item) FROM (SELECT a AS item FROM trials UNION ALL "
                      "SELECT b FROM trials WHERE b IS NOT NULL)").fetchone()
    assert uses[0] == uses[1]  # with two runs no image is in two trials
    files = [f for (f,) in db.execute("SELECT file FROM items")]
    assert all((made_study / f).is_file() for f in files) and not any(r.name in f for f in files for r in runs)
    # Tokens live only in raters.json, readable by its owner; the database keeps their hashes.
    raters = json.loads((made_study / "raters.json").read_text())
    assert len(raters) == 3 and (made_study / "raters.json").stat().st_mode & 0o777 == 0o600
    dumped = "\n".join(db.iterdump())
    assert not any(r["token"] in dumped for r in raters)


def test_create_refuses_bad_input_with_the_fix(runs, tmp_path, pairs_dir):
    with pytest.raises(UserError, match="at least one run"):
        create_study(tmp_path / "s", [], say=lambda m: None)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        create_study(tmp_path / "full", runs, say=lambda m: None)
    assert (tmp_path / "full" / "x").read_text() == "mine"
    with pytest.raises(UserError, match="--real .* holds"):
        create_study(tmp_path / "s", runs, real=pairs_dir, n=4, say=lambda m: None)
    with pytest.raises(UserError, match="--prompts is for runs trained on captioned images"):
        create_study(tmp_path / "s2", runs, prompts=["a 3"], n=4, say=lambda m: None)
    result = difftrain("rate", "results", tmp_path / "nothing")
    assert result.returncode == 2 and "is not a rating study" in said(result) and "rate create" in said(result)


# --- the API ------------------------------------------------------------------------------------------------------

def test_tokens_are_required_and_reach_only_their_own_trials(study):
    client = TestClient(make_app(study))
    mine, other, _ = tokens(study)
    for headers in ({}, {"X-Rater-Token": "forged-token"}, {"X-Rater-Token": mine[:-1]}):
        assert client.get("/api/next", headers=headers).status_code == 401
        assert client.post("/api/vote", headers=headers, json={"position": 0, "answer": "left"}).status_code == 401
        assert client.get("/api/item/0/0", headers=headers).status_code == 401
    trial = client.get("/api/next", headers={"X-Rater-Token": mine}).json()
    assert set(trial) == {"done", "answered", "quota", "position", "kind", "question", "answers", "items"}
    assert "long" not in json.dumps(trial) and "short" not in json.dumps(trial) and "real\"" not in json.dumps(trial["items"])
    assert client.get(f"{trial['items'][0]}?t={mine}").content[:4] == b"\x89PNG"
    # Another rater has no trial at that position yet: nothing to see, nothing to vote on.
    assert client.get(trial["items"][0], headers={"X-Rater-Token": other}).status_code == 404
    assert client.post("/api/vote", headers={"X-Rater-Token": other},
                       json={"position": trial["position"], "answer": trial["answers"][0]}).status_code == 404
    # Asking again shows the same open trial: a reload never skips or repeats.
    assert client.get("/api/next", headers={"X-Rater-Token": mine}).json() == trial


def test_malformed_votes_are_rejected_and_change_nothing(study):
    client = TestClient(make_app(study))
    token = tokens(study)[0]
    headers = {"X-Rater-Token": token}
    trial = client.get("/api/next", headers=headers).json()
    good = {"position": trial["position"], "answer": trial["answers"][0], "ms": 1200}
    assert client.post("/api/vote", headers=headers, json=good).status_code == 200
    bad = [{"position": trial["position"], "answer": trial["answers"][-1]},  # a second answer to the same trial
           {"position": 5, "answer": "left"},  # a trial not yet given to this rater
           {"position": -1, "answer": "left"}, {"position": "x", "answer": "left"}, {"answer": "left"},
           {"position": 1, "answer": "x" * 100}, {"position": 0, "answer": "left", "ms": -5}]
    codes = [client.post("/api/vote", headers=headers, json=b).status_code for b in bad]
    codes.append(client.post("/api/vote", headers=headers, content=b"not json").status_code)
    assert codes == [409, 404, 422, 422, 422, 422, 422, 422]
    second = client.get("/api/next", headers=headers).json()
    wrong = next(a for a in ("left", "real", "3") if a not in second["answers"])
    assert client.post("/api/vote", headers=headers, json={"position": second["position"], "answer": wrong}).status_code == 422
    db = sqlite3.connect(study / "ratings.db")
    assert db.execute("SELECT position, answer, ms FROM votes").fetchall() == [(good["position"], good["answer"], 1200)]


def test_a_rater_sees_each_trial_once_with_sides_balanced_and_attention_checks(study):
    client = TestClient(make_app(study))
    token = tokens(study)[0]
    seen = rate_all(client, study, token, careless)
    assert len(seen) == 20 and [t["position"] for t in seen] == list(range(20))
    db = sqlite3.connect(study / "ratings.db")
    trials = [t for (t,) in db.execute("SELECT trial FROM assignments a JOIN raters r ON r.id = a.rater "
                                       "WHERE r.name = 'rater-1' ORDER BY position")]
    assert len(set(trials)) == 20
    kinds = dict(db.execute("SELECT id, kind FROM trials"))
    rater = db.execute("SELECT id FROM raters WHERE name = 'rater-1'").fetchone()[0]
    checks = [special_positions(rater, block)[0] for block in (0, 1)]
    assert [p for p, t in enumerate(trials) if kinds[t] == "attention"] == checks
    # No image twice (two runs; the items judged real or generated are in no other trial): a remembered image would
    # give away whether it is real.
    shown = [i for (a, b) in db.execute("SELECT t.a, t.b FROM assignments x JOIN trials t ON t.id = x.trial") for i in (a, b) if i]
    assert len(shown) == len(set(shown))
    # Attention checks look like pairs; sides are balanced over every two-item trial.
    assert all(t["kind"] in ("pair", "real_fake") for t in seen)
    swaps = [s for (s,) in db.execute("SELECT a.swap FROM assignments a JOIN trials t ON t.id = a.trial WHERE t.b IS NOT NULL")]
    assert abs(2 * sum(swaps) - len(swaps)) <= 1
    done = client.get("/api/next", headers={"X-Rater-Token": token}).json()
    assert done == {"done": True, "answered": 20, "quota": 20}


# --- results ------------------------------------------------------------------------------------------------------

def test_results_rank_runs_exclude_careless_raters_and_reach_the_report(study, runs):
    client = TestClient(make_app(study))
    good, also_good, bad = tokens(study)
    rate_all(client, study, good, prefers(["long", "short"]))
    rate_all(client, study, also_good, prefers(["long", "short"]))
    rate_all(client, study, bad, inattentive)
    from difftrain.report.card import write_report

    assert "## Human ratings" not in write_report(runs[0]).read_text()  # as `difftrain train` leaves it
    result = difftrain("rate", "results", study, "--rounds", 200)
    assert result.returncode == 0, result.stderr
    r = json.loads((study / "results.json").read_text())
    assert r["excluded_raters"] == ["rater-3"] and r["raters"]["rater-3"]["attention"] == 0.0
    assert r["votes"] == 60 and r["votes_kept"] == 40
    assert [b["run"] for b in r["bradley_terry"]] == ["long", "short"]
    long, short = r["bradley_terry"]
    # Two runs: the scores are +-d/2 with d = log((w + 0.25) / (l + 0.25)), the prior's quarter game each way.
    assert short["votes"] == long["votes"] == r["win_rate"]["long"]["short"] * long["votes"] > 0
    assert long["score"] - short["score"] == pytest.approx(np.log((long["votes"] + 0.25) / 0.25), rel=1e-6)
    assert r["win_rate"]["long"]["short"] == 1.0
    # Raters who always know: nobody is fooled, HYPE's error is 0; they agree on every shared trial.
    assert all(h["error_rate"] == 0 and h["high"] == 0 for h in r["hype"].values())
    assert r["agreement"]["pairwise"] == 1.0 and r["agreement"]["rater_pairs"] >= 1
    for name in ("results.md", "ranking.png", "win-rates.png"):
        assert (study / name).stat().st_size > 0
    assert "| 1 | long |" in (study / "results.md").read_text()
    assert "long" in result.stdout and "rater-3" in said(result)
    ratings = json.loads((runs[0] / "human-ratings.json").read_text())
    assert ratings["ranking"]["rank"] == 1 and ratings["of"] == 2
    assert "## Human ratings" in (runs[0] / "README.md").read_text()


def test_results_before_any_vote_say_what_to_do(study):
    result = difftrain("rate", "results", study)
    assert result.returncode == 2 and "no votes yet" in said(result) and "rate serve" in said(result)


# --- statistics ---------------------------------------------------------------------------------------------------

def _simulated_wins(true: np.ndarray, votes: int, rng: np.random.Generator) -> np.ndarray:
    wins = np.zeros((len(true), len(true)))
    for _ in range(votes):
        i, j = rng.choice(len(true), 2, replace=False)
        if rng.random() < 1 / (1 + np.exp(true[j] - true[i])):
            wins[i, j] += 1
        else:
            wins[j, i] += 1
    return wins


def test_bradley_terry_recovers_the_order_and_its_intervals_cover_the_true_scores():
    rng = np.random.default_rng(1)
    true = np.array([-1.0, -0.3, 0.2, 1.1])
    true -= true.mean()
    scores = stats.bradley_terry(_simulated_wins(true, 20_000, rng))
    assert list(np.argsort(scores)) == [0, 1, 2, 3] and np.abs(scores - true).max() < 0.05
    covered = []
    for rep in range(150):
        _, low, high = stats.bradley_terry_intervals(_simulated_wins(true, 400, rng), rounds=400, seed=rep)
        covered.append((low <= true) & (true <= high))
    assert 0.9 <= np.mean(covered) <= 0.99


def test_bradley_terry_is_the_closed_form_for_two_models_and_finite_for_a_sweep():
    wins = np.array([[0.0, 30.0], [10.0, 0.0]])
    s = stats.bradley_terry(wins)
    assert s[0] - s[1] == pytest.approx(np.log(30.25 / 10.25)) and s.sum() == pytest.approx(0)
    swept = stats.bradley_terry(np.array([[0.0, 50.0], [0.0, 0.0]]))
    assert np.isfinite(swept).all() and swept[0] - swept[1] == pytest.approx(np.log(50.25 / 0.25))
    assert np.isnan(stats.win_rates(np.zeros((2, 2)))).all()


def test_hype_error_rate_weights_real_and_generated_equally():
    fake_wrong = np.array([1, 1, 0, 0, 0, 0, 0, 0], float)  # 2 of 8 generated items judged real
    real_wrong = np.array([1, 0, 0, 0], float)  # 1 of 4 real items judged generated
    value, low, high = stats.hype_interval(fake_wrong, np.zeros(8), real_wrong, np.zeros(4), rounds=500)
    assert value == pytest.approx((2 / 8 + 1 / 4) / 2) and low <= value <= high
    value, low, high = stats.hype_interval(fake_wrong, np.arange(8) % 2, real_wrong, np.arange(4) % 2, rounds=500)
    assert value == pytest.approx(0.25) and 0 <= low <= value <= high <= 1


def test_agreement_counts_rater_pairs_and_the_majority():
    overall, pairs, per = stats.agreement({1: {1: "a", 2: "a", 3: "b"}, 2: {1: "a", 2: "a"}})
    assert pairs == 4 and overall == pytest.approx(2 / 4)
    assert per == {1: 1.0, 2: 1.0, 3: 0.0}


# --- the real server ----------------------------------------------------------------------------------------------

def _serve(study: Path, port: int, *extra) -> subprocess.Popen:
    return start_server(study, port, *extra, stdout=subprocess.PIPE)


def test_a_killed_server_restarts_with_every_acknowledged_vote(study):
    import httpx

    port = free_port()
    server = _serve(study, port)
    base = f"http://127.0.0.1:{port}"
    token = tokens(study)[0]
    acknowledged = []
    try:
        for _ in range(7):
            trial = httpx.get(f"{base}/api/next", params={"t": token}).json()
            vote = {"position": trial["position"], "answer": trial["answers"][-1]}
            assert httpx.post(f"{base}/api/vote", params={"t": token}, json=vote).status_code == 200
            acknowledged.append((vote["position"], vote["answer"]))
        pending = httpx.get(f"{base}/api/next", params={"t": token}).json()  # handed out, not answered
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    links = server.stdout.read()
    assert f"?t={token}" in links and links.count("http://127.0.0.1:") == 3
    server = _serve(study, port)
    try:
        again = difftrain("rate", "serve", study, "--port", port)
        assert again.returncode == 2 and f"--port {port}" in said(again) and "choose another --port" in said(again)
        after = httpx.get(f"{base}/api/next", params={"t": token}).json()
        assert after == pending and after["answered"] == 7
    finally:
        server.terminate()
        server.wait()
    db = sqlite3.connect(study / "ratings.db")
    assert db.execute("SELECT position, answer FROM votes ORDER BY position").fetchall() == acknowledged


def test_fifty_concurrent_raters_lose_and_duplicate_no_vote(study):
    """benchmarks/rate_load.py: 50 raters at once on the loopback interface, 10 trials each."""
    script = BENCHMARKS / "rate_load.py"
    result = subprocess.run([sys.executable, str(script), "--study", str(study), "--raters", "50", "--votes", "10"],
                            capture_output=True, text=True, timeout=600, cwd=script.parent)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[-1])
    assert (record["acknowledged"], record["refused"], record["stored"], record["duplicates"], record["lost"]) == (500, 0, 500, 0, 0)
    assert record["trials_per_rater"] == [10] and record["latency_ms"]["p95"] > 0
    assert not (study / "raters.json").read_text().count("rater-4")  # the study itself is left as it was


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium installed (Debian: apt-get install chromium; .ci/run does)")
def test_a_rater_finishes_a_study_in_a_real_browser(study, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' installs playwright")
    port = free_port()
    server = _serve(study, port, "--quota", "12")
    token = tokens(study)[0]
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/?t={token}")
            page.wait_for_selector("#items img")
            page.screenshot(path=str(tmp_path / "page.png"))
            for answered in range(12):
                page.wait_for_function(f"document.getElementById('count').textContent.startsWith('{answered} of 12')")
                buttons = page.locator("#answers button")
                if answered % 3 == 0:
                    buttons.first.click()  # by click (or tap) ...
                elif buttons.first.get_attribute("data-answer") == "left":
                    page.keyboard.press("ArrowRight")  # ... or by key
                else:
                    page.keyboard.press("g" if buttons.count() == 2 else "3")
            page.wait_for_selector("#done", state="visible")
            assert "12 of 12 rated" in page.inner_text("#count")
            browser.close()
    finally:
        server.terminate()
        server.wait()
    assert (tmp_path / "page.png").stat().st_size > 0
    db = sqlite3.connect(study / "ratings.db")
    assert db.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 12
    result = difftrain("rate", "results", study, "--rounds", 100)
    assert result.returncode == 0, result.stderr
    assert json.loads((study / "results.json").read_text())["votes"] == 12


def test_rate_create_takes_the_runs_after_one_flag(runs, tmp_path):
    out = tmp_path / "study"
    result = difftrain("rate", "create", "--runs", *runs, "--n", 4, "--raters", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "study.json").read_text())["names"] == ["long", "short"]
    assert "next: `difftrain rate serve" in said(result)
    bad = difftrain("rate", "create", "--runs", *runs, "--frobnicate", "--out", tmp_path / "s2")
    assert bad.returncode == 2 and "frobnicate" in said(bad)


def test_faithfulness_ratings_average_per_run(runs, tmp_path):
    out = tmp_path / "study"
    record = create_study(out, runs, n=4, raters=1, per_rater=200, likert=True, say=lambda m: None)
    assert record["trials"]["likert"] == 4  # the pairs' half of the samples: 2 a run
    client = TestClient(make_app(out))
    token = tokens(out)[0]
    marks = {"long": "5", "short": "2"}

    def choose(trial, sources):
        if trial["kind"] == "likert":
            assert trial["answers"] == ["1", "2", "3", "4", "5"] and "How well does this image match" in trial["question"]
            return marks[sources[0]]
        return prefers(["long", "short"])(trial, sources)

    seen = rate_all(client, out, token, choose)
    assert sum(t["kind"] == "likert" for t in seen) == 4
    r = write_results(out, rounds=100)
    assert {n: x["mean"] for n, x in r["likert"].items()} == {"long": 5.0, "short": 2.0}
    assert r["likert"]["long"]["ratings"] == 2 and "## Faithfulness (1-5)" in (out / "results.md").read_text()


def test_one_run_is_rated_real_or_generated(runs, tmp_path):
    """`make demo` leaves one run: its study has no pairs to rank, only HYPE's real-or-generated judgements."""
    out = tmp_path / "study"
    record = create_study(out, runs[:1], n=6, raters=1, per_rater=200, say=lambda m: None)
    assert record["trials"]["pair"] == 0 and record["trials"]["real_fake"] == 6
    client = TestClient(make_app(out))
    token = tokens(out)[0]
    rate_all(client, out, token, lambda trial, sources: "real" if trial["kind"] == "real_fake" else
             ("left", "right")[sources.index("real")])  # fooled by every generated image
    r = write_results(out, rounds=100)
    assert r["bradley_terry"] == [] and r["hype"]["long"]["fooled"] == 1.0
    assert r["hype"]["long"]["error_rate"] == pytest.approx(0.5)  # all generated judged real, no real judged generated
    assert not (out / "ranking.png").exists() and "Real or generated" in (out / "results.md").read_text()


def test_captioned_runs_are_rated_on_prompts(pairs_dir, tmp_path):
    from tests.test_text_to_image import caption_run

    runs = [tmp_path / "cap-a", tmp_path / "cap-b"]
    for run in runs:
        result = difftrain(*caption_run(pairs_dir, run))
        assert result.returncode == 0, result.stderr
    prompts = ["a 3 to the left of a 7", "a 1 to the left of a 2"]
    with pytest.raises(UserError, match="give --prompts FILE"):
        create_study(tmp_path / "none", runs, n=4, say=lambda m: None)
    out = tmp_path / "study"
    record = create_study(out, runs, n=4, raters=1, per_rater=30, prompts=prompts, steps=2, say=lambda m: None)
    assert record["trials"]["pair"] == 2 and record["prompts"] == prompts
    client = TestClient(make_app(out))
    seen = rate_all(client, out, tokens(out)[0], prefers(["cap-a", "cap-b"]))
    # Pairs and attention checks alike ask about a prompt.
    two = [t for t in seen if len(t["items"]) == 2]
    assert len(two) == 2 + record["trials"]["attention"]
    assert {t["question"] for t in two} <= {f"Which image better matches “{p}”?" for p in prompts}
