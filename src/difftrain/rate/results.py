"""`difftrain rate results`: the study's votes as rankings people can trust.

Raters whose attention checks fall below `min_attention` are excluded (and reported); the rest give:
    Bradley-Terry scores with bootstrap 95% intervals and the win-rate matrix (pairs),
    HYPE's error rate per run with its interval (real or generated: the share judged wrongly, generated and real
    weighted equally, so 0.5 means people cannot tell; intervals resample raters),
    the mean 1-5 faithfulness per run (--likert studies),
    agreement between raters on the trials they share.
Written as results.json, results.md, ranking.png and win-rates.png in the study, and as human-ratings.json in each
run, whose report (README.md) gains a "Human ratings" section.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np

from difftrain import atomic
from difftrain.errors import UserError
from difftrain.rate import stats, store


FEW_VOTES = 50  # below this many votes for a run, percentile bootstrap intervals are too narrow to trust


def _votes(db: sqlite3.Connection) -> list[dict]:
    """Every vote with what it chose: the source of the chosen item (pairs, attention) or the answer."""
    rows = db.execute("""
        SELECT v.rater, r.name, t.id, t.kind, t.shared, v.answer, a.swap, ia.source, ib.source, v.ms
        FROM votes v JOIN assignments a ON a.rater = v.rater AND a.position = v.position
        JOIN raters r ON r.id = v.rater JOIN trials t ON t.id = a.trial
        JOIN items ia ON ia.id = t.a LEFT JOIN items ib ON ib.id = t.b""").fetchall()
    votes = []
    for rater, name, trial, kind, shared, answer, swap, source_a, source_b, ms in rows:
        vote = {"rater": rater, "name": name, "trial": trial, "kind": kind, "shared": bool(shared), "answer": answer, "ms": ms,
                "a": source_a, "b": source_b}
        if kind in ("pair", "attention"):
            chose_a = (answer == "left") != bool(swap)  # left shows a unless swapped
            vote["chosen"], vote["other"] = (source_a, source_b) if chose_a else (source_b, source_a)
        votes.append(vote)
    return votes


def _hype(votes: list[dict], names: list[str], rounds: int) -> dict:
    """Per run: HYPE's balanced error rate on its generated items and the real ones, and how often its items fooled."""
    judged = [v for v in votes if v["kind"] == "real_fake"]
    real = [v for v in judged if v["a"] == "real"]
    real_wrong = np.array([v["answer"] != "real" for v in real], float)
    real_groups = np.array([v["rater"] for v in real])
    out = {}
    for name in names:
        fake = [v for v in judged if v["a"] == name]
        if not fake or not real:
            continue
        fake_wrong = np.array([v["answer"] == "real" for v in fake], float)
        value, low, high = stats.hype_interval(fake_wrong, np.array([v["rater"] for v in fake]), real_wrong, real_groups,
                                               rounds=rounds)
        out[name] = {"error_rate": value, "low": low, "high": high, "fooled": float(fake_wrong.mean()),
                     "real_judged_generated": float(real_wrong.mean()), "judgements": len(fake) + len(real)}
    return out


def summarize(study: Path, *, min_attention: float = 0.8, rounds: int = 1000, seed: int = 0) -> dict:
    db = store.connect(study)
    try:
        meta = store.read_meta(db)
        votes = _votes(db)
        raters = db.execute("SELECT id, name FROM raters ORDER BY id").fetchall()
    finally:
        db.close()
    names = meta["names"]
    per_rater = {}
    for rater, name in raters:
        mine = [v for v in votes if v["rater"] == rater]
        checks = [v["chosen"] == "real" for v in mine if v["kind"] == "attention"]
        accuracy = float(np.mean(checks)) if checks else None
        times = [v["ms"] / 1000 for v in mine if v["ms"] is not None]
        per_rater[name] = {"votes": len(mine), "attention_checks": len(checks), "attention": accuracy,
                           "excluded": accuracy is not None and accuracy < min_attention,
                           "median_seconds": float(np.median(times)) if times else None}
    kept = [v for v in votes if not per_rater[v["name"]]["excluded"]]

    index = {n: i for i, n in enumerate(names)}
    wins = np.zeros((len(names), len(names)))
    for v in kept:
        if v["kind"] == "pair":
            wins[index[v["chosen"]], index[v["other"]]] += 1
    ranking = []
    if len(names) > 1 and wins.sum():
        scores, low, high = stats.bradley_terry_intervals(wins, rounds=rounds, seed=seed)
        order = np.argsort(-scores)
        ranking = [{"run": names[i], "rank": rank + 1, "score": float(scores[i]), "low": float(low[i]), "high": float(high[i]),
                    "votes": int(wins[i].sum() + wins[:, i].sum())} for rank, i in enumerate(order)]

    shared: dict[int, dict[int, str]] = {}
    for v in kept:
        if v["kind"] == "pair":
            shared.setdefault(v["trial"], {})[v["rater"]] = v["chosen"]
    overall, rater_pairs, with_majority = stats.agreement({t: a for t, a in shared.items() if len(a) > 1})
    for rater, name in raters:
        per_rater[name]["agreement_with_majority"] = with_majority.get(rater)

    likert = {}
    for name in names:
        marks = np.array([int(v["answer"]) for v in kept if v["kind"] == "likert" and v["a"] == name], float)
        if marks.size:
            replicas = np.random.default_rng(seed).choice(marks, (rounds, marks.size)).mean(1)
            likert[name] = {"mean": float(marks.mean()), "low": float(np.percentile(replicas, 2.5)),
                            "high": float(np.percentile(replicas, 97.5)), "ratings": int(marks.size)}
    return {
        "study": str(study.resolve()), "runs": dict(zip(names, meta["runs"])), "n": meta["n"], "kind": meta.get("kind"),
        "min_attention": min_attention, "votes": len(votes), "votes_kept": len(kept),
        "excluded_raters": [n for n, r in per_rater.items() if r["excluded"]],
        "bradley_terry": ranking, "scale": "natural log-odds, mean 0: P(i beats j) = sigmoid(score_i - score_j)",
        "win_rate": {a: {b: (None if np.isnan(x) else float(x)) for b, x in zip(names, row)}
                     for a, row in zip(names, stats.win_rates(wins))},
        "hype": _hype(kept, names, rounds), "likert": likert,
        "agreement": {"pairwise": None if np.isnan(overall) else overall, "rater_pairs": rater_pairs},
        "raters": per_rater, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _markdown(r: dict) -> str:
    def cell(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    lines = [f"# Human ratings: {Path(r['study']).name}", "",
             f"{r['votes_kept']} of {r['votes']} votes kept; raters below {r['min_attention']:.0%} on attention checks "
             f"excluded: {', '.join(r['excluded_raters']) or 'none'}.", ""]
    if r["bradley_terry"]:
        lines += ["## Ranking (Bradley-Terry, 95% bootstrap intervals)", "", "| rank | run | score | 95% interval | votes |",
                  "|---|---|---|---|---|"]
        lines += [f"| {b['rank']} | {b['run']} | {b['score']:+.3f} | [{b['low']:+.3f}, {b['high']:+.3f}] | {b['votes']} |"
                  for b in r["bradley_terry"]]
        lines += ["", f"Scores are {r['scale']}."]
        few = [b["run"] for b in r["bradley_terry"] if b["votes"] < FEW_VOTES]
        if few:
            lines += ["", f"**Few votes** for {', '.join(few)} (under {FEW_VOTES}): the bootstrap intervals understate the "
                      "uncertainty there (all votes one way give an interval of width 0). Collect more votes."]
        lines += ["", "![ranking](ranking.png) ![win rates](win-rates.png)", ""]
    if r["hype"]:
        lines += ["## Real or generated (HYPE error rate: 0.5 = people cannot tell)", "",
                  "| run | error rate | 95% interval | generated judged real | real judged generated | judgements |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {n} | {h['error_rate']:.3f} | [{h['low']:.3f}, {h['high']:.3f}] | {h['fooled']:.3f} | "
                  f"{h['real_judged_generated']:.3f} | {h['judgements']} |" for n, h in r["hype"].items()]
        lines.append("")
    if r["likert"]:
        lines += ["## Faithfulness (1-5)", "", "| run | mean | 95% interval | ratings |", "|---|---|---|---|"]
        lines += [f"| {n} | {x['mean']:.2f} | [{x['low']:.2f}, {x['high']:.2f}] | {x['ratings']} |" for n, x in r["likert"].items()]
        lines.append("")
    agreement = r["agreement"]
    lines += ["## Raters", "", f"Agreement on pairs two or more raters answered: {cell(agreement['pairwise'])} "
              f"over {agreement['rater_pairs']} rater pairs (chance: 0.5).", "",
              "| rater | votes | attention checks | attention | agreement with the majority | median seconds | excluded |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {x['votes']} | {x['attention_checks']} | {cell(x['attention'])} | {cell(x['agreement_with_majority'])} | "
              f"{cell(x['median_seconds'], '{:.1f}')} | {'yes' if x['excluded'] else 'no'} |" for n, x in r["raters"].items()]
    return "\n".join(lines) + "\n"


def _plots(r: dict, study: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if r["bradley_terry"]:
        ranked = r["bradley_terry"][::-1]
        fig, ax = plt.subplots(figsize=(6, 0.5 * len(ranked) + 1.5))
        y = np.arange(len(ranked))
        scores = np.array([b["score"] for b in ranked])
        below = np.clip(scores - [b["low"] for b in ranked], 0, None)  # a percentile interval may miss its estimate
        above = np.clip(np.array([b["high"] for b in ranked]) - scores, 0, None)
        ax.errorbar(scores, y, xerr=[below, above], fmt="o", capsize=4)
        ax.set_yticks(y, [b["run"] for b in ranked])
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("Bradley-Terry score (log-odds), 95% bootstrap interval")
        ax.set_title(f"Ranking by the raters ({r['votes_kept']} votes kept)")
        fig.tight_layout()
        written.append(atomic.write_figure(fig, study / "ranking.png"))
        plt.close(fig)
        names = list(r["win_rate"])
        matrix = np.array([[np.nan if r["win_rate"][a][b] is None else r["win_rate"][a][b] for b in names] for a in names])
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
        ax.imshow(matrix, vmin=0, vmax=1, cmap="RdBu")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                if not np.isnan(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center")
        ax.set_title("share of votes the row won against the column")
        fig.tight_layout()
        written.append(atomic.write_figure(fig, study / "win-rates.png"))
        plt.close(fig)
    return written


def write_results(study: Path, **options) -> dict:
    """summarize(), written into the study and into each run (human-ratings.json)."""
    if not (study / "ratings.db").is_file():
        store.connect(study)  # the error that names the missing study
    r = summarize(study, **options)
    if not r["votes"]:
        raise UserError(f"{study} has no votes yet: share the links of `difftrain rate serve {study}` with the raters")
    atomic.write_json(study / "results.json", r)
    atomic.write_text(study / "results.md", _markdown(r))
    _plots(r, study)
    ranks = {b["run"]: b for b in r["bradley_terry"]}
    for name, run in r["runs"].items():
        if Path(run).is_dir():
            atomic.write_json(Path(run) / "human-ratings.json", {
                "study": r["study"], "run": name, "of": len(r["runs"]), "ranking": ranks.get(name), "hype": r["hype"].get(name),
                "likert": r["likert"].get(name), "votes_kept": r["votes_kept"], "scale": r["scale"], "written": r["written"],
                "others": [b for b in r["bradley_terry"] if b["run"] != name]})
            if (Path(run) / "README.md").is_file():  # the run's report, written by train and eval, shows it too
                from difftrain.report.card import write_report

                write_report(run)
    return r
