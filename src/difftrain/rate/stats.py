"""The statistics of human ratings: Bradley-Terry scores with bootstrap intervals, HYPE error rates, rater agreement.

Bradley-Terry, not online Elo: the models are fixed, so the votes' order carries no information, and one maximum-
likelihood fit over all of them (Chatbot Arena's choice) is what online Elo only approximates. Scores are natural
log-odds, centred on their mean: P(i beats j) = sigmoid(score_i - score_j).
"""

from __future__ import annotations

import numpy as np

# Half a game between every pair, split evenly: keeps a model that never won (or never lost) at a finite score, and
# moves scores fitted from hundreds of votes by a negligible amount.
PRIOR_GAMES = 0.5


def bradley_terry(wins: np.ndarray, iterations: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """Scores (..., K) from win counts (..., K, K), wins[i, j] = votes for i over j; Hunter's (2004) MM updates,
    vectorised over leading (bootstrap) dimensions."""
    k = wins.shape[-1]
    w = wins + PRIOR_GAMES / 2 * (1 - np.eye(k))
    games = w + np.swapaxes(w, -1, -2)
    won = w.sum(-1)
    strength = np.ones(wins.shape[:-1])
    for _ in range(iterations):
        denominator = (games / (strength[..., :, None] + strength[..., None, :])).sum(-1)
        new = won / denominator
        new /= np.exp(np.log(new).mean(-1, keepdims=True))
        if np.max(np.abs(new - strength)) < tol:
            strength = new
            break
        strength = new
    scores = np.log(strength)
    return scores - scores.mean(-1, keepdims=True)


def bootstrap_wins(wins: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """Win matrices (rounds, K, K) of votes drawn with replacement from the votes behind `wins`."""
    total = int(wins.sum())
    if total == 0:
        return np.repeat(wins[None].astype(float), rounds, 0)
    return rng.multinomial(total, (wins / total).ravel(), size=rounds).reshape(rounds, *wins.shape).astype(float)


def bradley_terry_intervals(wins: np.ndarray, *, rounds: int = 1000, level: float = 0.95,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores (K,) and their percentile bootstrap interval (low, high), each (K,)."""
    rng = np.random.default_rng(seed)
    scores = bradley_terry(wins.astype(float))
    replicas = bradley_terry(bootstrap_wins(wins, rounds, rng))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicas, [tail, 100 - tail], axis=0)
    return scores, low, high


def win_rates(wins: np.ndarray) -> np.ndarray:
    """rate[i, j]: the share of the votes between i and j that went to i (NaN where they never met)."""
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(games > 0, wins / np.maximum(games, 1), np.nan)


def hype_interval(fake_wrong: np.ndarray, fake_raters: np.ndarray, real_wrong: np.ndarray, real_raters: np.ndarray, *,
                  rounds: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """HYPE's error rate: the share of real-or-generated judgements that were wrong, generated and real items weighted
    equally (0.5: people cannot tell), with a bootstrap interval that resamples whole raters when there are several,
    since one rater's judgements are not independent of each other."""
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    fake_wrong, real_wrong = np.asarray(fake_wrong, float), np.asarray(real_wrong, float)
    value = (fake_wrong.mean() + real_wrong.mean()) / 2
    ids = np.union1d(fake_raters, real_raters)
    if len(ids) > 1:
        def per_rater(wrong, raters):
            return np.array([wrong[raters == r].sum() for r in ids]), np.array([(raters == r).sum() for r in ids])

        (fs, fc), (rs, rc) = per_rater(fake_wrong, fake_raters), per_rater(real_wrong, real_raters)
        pick = rng.integers(0, len(ids), size=(rounds, len(ids)))
        with np.errstate(invalid="ignore", divide="ignore"):
            replicas = (fs[pick].sum(1) / fc[pick].sum(1) + rs[pick].sum(1) / rc[pick].sum(1)) / 2
        replicas = replicas[np.isfinite(replicas)]  # a draw of raters who judged only one side has no rate
    else:
        replicas = (rng.binomial(fake_wrong.size, fake_wrong.mean(), rounds) / fake_wrong.size
                    + rng.binomial(real_wrong.size, real_wrong.mean(), rounds) / real_wrong.size) / 2
    low, high = np.percentile(replicas, [tail, 100 - tail])
    return float(value), float(low), float(high)


def agreement(votes: dict[int, dict[int, str]]) -> tuple[float, int, dict[int, float]]:
    """Percent agreement on trials several raters answered: over all pairs of raters on a trial, and per rater with
    the majority of the others on that trial (ties left out). votes[trial][rater] = answer (the item chosen)."""
    agree = pairs = 0
    with_majority: dict[int, list[bool]] = {}
    for answers in votes.values():
        raters = list(answers)
        for i, a in enumerate(raters):
            for b in raters[i + 1:]:
                pairs += 1
                agree += answers[a] == answers[b]
            others = [answers[r] for r in raters if r != a]
            if not others:
                continue
            counts = {x: others.count(x) for x in set(others)}
            top = max(counts.values())
            leaders = [x for x, c in counts.items() if c == top]
            if len(leaders) == 1:
                with_majority.setdefault(a, []).append(answers[a] == leaders[0])
    per_rater = {r: float(np.mean(v)) for r, v in with_majority.items()}
    return (agree / pairs if pairs else float("nan")), pairs, per_rater
