"""Scores of generated tables against real ones: fidelity, utility and privacy, in data space.

Fidelity follows SDMetrics' quality report (ColumnShapes, ColumnPairTrends), the classifier two-sample test of
TabSyn (Zhang et al., ICLR 2024) and k-NN precision/recall; utility is machine-learning efficiency (TabDDPM,
Kotelnikov et al. 2023; TabSyn); privacy is the distance to closest record with a held-out baseline (TabSyn's
protocol as amended in its issue #18) and exact copies. Every departure from the reference is named where it is made.

A table is a pandas DataFrame and its `schema`, a list of column dicts ({"name", "type", "categories", ...}) whose
types are "numeric", "integer", "categorical", "boolean" or "datetime". Boolean columns are scored as categorical
ones (their values compared as text), datetime columns as numeric ones (seconds since the epoch). A missing cell
(NaN, pd.NA, NaT; also +-inf in a number column) is, for shapes and trends, the category "<missing>" of a
categorical column; for numeric columns, shapes compare the present values and the missing rates apart.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from difftrain.errors import UserError
from difftrain.evaluation.neighbours import manifold_metrics

MISSING = "<missing>"  # the category a missing categorical cell is counted as
TYPES = ("numeric", "integer", "categorical", "boolean", "datetime")
_QUADRATIC_ROWS = 5000  # rows kept (seeded sample) per set where a metric's cost grows as rows squared
_QUANTILES = {"q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95}
_TREES = {"n_estimators": 100, "num_leaves": 15, "n_jobs": 1, "verbose": -1}  # the C2ST discriminator (small)
_MLE_TREES = {"n_estimators": 200, "num_leaves": 31, "learning_rate": 0.05, "subsample": 0.8, "subsample_freq": 1,
              "colsample_bytree": 0.8, "n_jobs": 1, "verbose": -1}  # the utility model; bagging makes the seed matter


# ---------------------------------------------------------------------------------------------------- helpers


def _is_category(column: dict) -> bool:
    return column["type"] in ("categorical", "boolean")


def _checked(schema: list[dict], *frames: pd.DataFrame) -> list[dict]:
    """The schema, its types checked (ValueError), and every frame holding its columns (UserError)."""
    schema = list(schema)
    if not schema:
        raise ValueError("the schema names no columns")
    for column in schema:
        if column.get("type") not in TYPES:
            raise ValueError(f"schema column {column.get('name')!r} has type {column.get('type')!r}, not one of {TYPES}")
    names = [c["name"] for c in schema]
    for frame in frames:
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"expected a pandas DataFrame, got {type(frame).__name__}")
        absent = [n for n in names if n not in frame.columns]
        if absent:
            raise UserError(f"the table has no column {', '.join(map(repr, absent))} that its schema names; "
                            f"it has {list(frame.columns)}")
    return schema


def _categories(column: dict) -> list[str]:
    categories = column.get("categories")
    if categories is None and column["type"] == "boolean":
        categories = ["False", "True"]
    if not categories:
        raise ValueError(f"schema column {column['name']!r} ({column['type']}) has no categories")
    return [str(c) for c in categories]


def _numbers(series: pd.Series, column: dict) -> np.ndarray:
    """A numeric or datetime column as float64 (datetime: seconds since the epoch), NaN where missing."""
    if column["type"] == "datetime":
        moments = pd.to_datetime(series, utc=True, errors="coerce")
        series_of_numbers = (moments - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    else:
        series_of_numbers = pd.to_numeric(series, errors="coerce")
    # A copy: under pandas 3's copy-on-write, to_numpy may hand back a read-only view.
    values = series_of_numbers.to_numpy(np.float64, na_value=np.nan, copy=True)
    bad = np.isnan(values) & ~series.isna().to_numpy()
    if bad.any():
        raise UserError(f"column {column['name']!r} is {column['type']} but holds {series[bad].iloc[0]!r}")
    values[~np.isfinite(values)] = np.nan
    return values


def _labels(series: pd.Series) -> np.ndarray:
    """A categorical or boolean column as text (object array), MISSING where missing."""
    labels = series.astype(str).to_numpy(dtype=object, copy=True)
    labels[series.isna().to_numpy()] = MISSING
    return labels


def _sample(frame: pd.DataFrame, count: int, rng: np.random.Generator) -> pd.DataFrame:
    """`count` rows of the frame drawn without replacement (in their order), or the frame if it has no more."""
    if len(frame) <= count:
        return frame
    return frame.iloc[np.sort(rng.choice(len(frame), count, replace=False))]


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance between the empirical distributions of two arrays of labels (or codes)."""
    p = pd.Series(a).value_counts(normalize=True)
    q = pd.Series(b).value_counts(normalize=True)
    p, q = p.align(q, fill_value=0.0)
    return float(0.5 * np.abs(p.to_numpy() - q.to_numpy()).sum())


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| (scipy's ks_2samp statistic); 0 when both are empty,
    1 when only one is."""
    if not len(a) or not len(b):
        return float(bool(len(a)) != bool(len(b)))
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                        - np.searchsorted(b, grid, side="right") / len(b)).max())


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the rows where both are present; NaN with fewer than 2 such rows or a constant column."""
    both = ~np.isnan(x) & ~np.isnan(y)
    if both.sum() < 2:
        return float("nan")
    x, y = x[both] - x[both].mean(), y[both] - y[both].mean()
    scale = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / scale) if scale > 0 else float("nan")


def _row_keys(frame: pd.DataFrame, schema: list[dict]) -> np.ndarray:
    """One uint64 hash per row of its values on the schema's columns (numbers as float64, so 3 and 3.0 agree)."""
    columns = {str(i): (_labels(frame[c["name"]]) if _is_category(c) else _numbers(frame[c["name"]], c))
               for i, c in enumerate(schema)}
    return pd.util.hash_pandas_object(pd.DataFrame(columns), index=False).to_numpy()


def _tolerance(*sets: np.ndarray) -> float:
    """Distances within this are ties: the rounding of a distance between equal rows computed as
    sqrt(|a|^2 + |b|^2 - 2 a.b) (about sqrt(float64 eps) times the row norms), with a margin."""
    norm = max((float(np.sqrt((s * s).sum(axis=1)).max()) for s in sets if len(s)), default=1.0)
    return 1e-6 * max(1.0, norm)


# ---------------------------------------------------------------------------------------------------- encoding


def encode_rows(frames: list[pd.DataFrame], schema: list[dict], fit_on: pd.DataFrame) -> list[np.ndarray]:
    """One numeric view of rows for distances and classifiers: float64 (N, D) per frame, the same columns for all.

    Numeric columns standardised by fit_on's mean and std (ddof 0; a constant or empty column by 1), a missing value
    0 (the mean) plus a 0/1 indicator column when fit_on or any frame has a missing value there; categorical
    columns one-hot over the schema's categories, plus a missing column under the same rule (a value outside the
    categories: all zeros).
    """
    frames = list(frames)
    schema = _checked(schema, fit_on, *frames)
    blocks: list[list[np.ndarray]] = [[] for _ in frames]
    for column in schema:
        name = column["name"]
        gaps = any(f[name].isna().any() for f in (fit_on, *frames))
        if _is_category(column):
            categories = _categories(column)
            for out, frame in zip(blocks, frames):
                codes = pd.Index(categories).get_indexer(_labels(frame[name]))  # -1: outside the categories
                one_hot = np.zeros((len(frame), len(categories) + gaps))
                rows = np.flatnonzero(codes >= 0)
                one_hot[rows, codes[rows]] = 1.0
                if gaps:
                    one_hot[:, -1] = frame[name].isna().to_numpy()
                out.append(one_hot)
        else:
            reference = _numbers(fit_on[name], column)
            reference = reference[~np.isnan(reference)]
            mean = float(reference.mean()) if len(reference) else 0.0
            std = float(reference.std()) if len(reference) else 1.0
            std = std if std > 0 and np.isfinite(std) else 1.0
            for out, frame in zip(blocks, frames):
                values = (_numbers(frame[name], column) - mean) / std
                missing = np.isnan(values)
                out.append(np.stack([np.where(missing, 0.0, values), missing.astype(np.float64)], axis=1)
                           if gaps else values[:, None])
    return [np.concatenate(b, axis=1) for b in blocks]


# ---------------------------------------------------------------------------------------------------- fidelity


def column_shapes(real: pd.DataFrame, synth: pd.DataFrame, schema: list[dict]) -> dict:
    """SDMetrics' ColumnShapes: per column 1 - KS (numeric: KSComplement) or 1 - TV (categorical: TVComplement);
    the mean over columns. 1 = the same marginals, higher is better.

    Categorical: total variation of the category frequencies, missing as the category "<missing>". Numeric: the
    KS statistic of the present values plus the TV of the missing rate |m_real - m_synth|, clipped to [0, 1] (with no
    missing values, exactly KSComplement; SDMetrics drops missing values and does not score their rate).
    Returns {"score", "columns": {name: score}, "parts": {name: {"ks", "missing_tv"} or {"tv"}}}.
    """
    schema = _checked(schema, real, synth)
    if not len(real) or not len(synth):
        raise UserError(f"column shapes need rows in both tables (got {len(real)} real and {len(synth)} synthetic)")
    scores, parts = {}, {}
    for column in schema:
        name = column["name"]
        if _is_category(column):
            tv = _tv(_labels(real[name]), _labels(synth[name]))
            parts[name], scores[name] = {"tv": tv}, 1.0 - tv
        else:
            a, b = _numbers(real[name], column), _numbers(synth[name], column)
            ks = _ks(a[~np.isnan(a)], b[~np.isnan(b)])
            missing_tv = abs(float(np.isnan(a).mean()) - float(np.isnan(b).mean()))
            parts[name], scores[name] = {"ks": ks, "missing_tv": missing_tv}, max(0.0, 1.0 - ks - missing_tv)
    return {"score": float(np.mean(list(scores.values()))), "columns": scores, "parts": parts}


def _pair_codes(real: pd.Series, synth: pd.Series, column: dict, bins: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes 0..K-1 of both columns for a contingency table: categories (missing one of them), or numbers in
    `bins` quantile bins of the real present values (fewer where quantiles tie; values outside the real range in the
    end bins) plus a last code for missing.

    Departure: SDMetrics cuts numbers into equal-width bins, which put a skewed column (Adult's capital-gain, 0 on 92%
    of rows, up to 99,999) almost wholly in one bin and so hide its pairs; quantile bins do not. Pair trends with a
    number and a category are therefore not comparable digit for digit with SDMetrics' or TabSyn's."""
    if _is_category(column):
        codes, uniques = pd.factorize(np.concatenate([_labels(real), _labels(synth)]))
        return codes[:len(real)], codes[len(real):], len(uniques)
    a, b = _numbers(real, column), _numbers(synth, column)
    present = a[~np.isnan(a)]
    inner = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)))[1:-1] if len(present) else np.empty(0)
    coded = [np.where(np.isnan(v), len(inner) + 1, np.searchsorted(inner, v, side="right")) for v in (a, b)]
    return coded[0], coded[1], len(inner) + 2


def pair_trends(real: pd.DataFrame, synth: pd.DataFrame, schema: list[dict], bins: int = 10) -> dict:
    """SDMetrics' ColumnPairTrends: per pair of columns 1 - |r_real - r_synth| / 2 when both are numeric
    (CorrelationSimilarity, Pearson r over the rows where both are present), else 1 - TV of the 2-D contingency
    tables (ContingencySimilarity), numeric columns cut into `bins` quantile bins of the real column, missing its own
    bin or category; the mean over pairs. 1 = the same trends, higher is better.

    A numeric pair whose correlation is undefined in either table (a constant column, under 2 complete rows) scores
    NaN and is left out of the mean, as SDMetrics does; one column: score NaN.
    Returns {"score", "pairs": {"a|b": score}} with pairs in schema order.
    """
    schema = _checked(schema, real, synth)
    if not len(real) or not len(synth):
        raise UserError(f"pair trends need rows in both tables (got {len(real)} real and {len(synth)} synthetic)")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    numbers = {c["name"]: (_numbers(real[c["name"]], c), _numbers(synth[c["name"]], c))
               for c in schema if not _is_category(c)}
    codes = {c["name"]: _pair_codes(real[c["name"]], synth[c["name"]], c, bins) for c in schema}
    pairs = {}
    for first, second in combinations(schema, 2):
        a, b = first["name"], second["name"]
        if a in numbers and b in numbers:
            (xa, xs), (ya, ys) = numbers[a], numbers[b]
            pairs[f"{a}|{b}"] = 1.0 - abs(_pearson(xa, ya) - _pearson(xs, ys)) / 2.0
        else:
            (ra, sa, _), (rb, sb, kb) = codes[a], codes[b]
            pairs[f"{a}|{b}"] = 1.0 - _tv(ra * kb + rb, sa * kb + sb)
    defined = [v for v in pairs.values() if not np.isnan(v)]
    return {"score": float(np.mean(defined)) if defined else float("nan"), "pairs": pairs}


def c2st_auc(real: pd.DataFrame, synth: pd.DataFrame, schema: list[dict], *, seed: int = 0, folds: int = 5) -> float:
    """Classifier two-sample test (Lopez-Paz & Oquab 2017; TabSyn's detection score): the mean ROC AUC over
    stratified `folds`-fold cross-validation of gradient-boosted trees telling real rows from synthetic ones.
    0.5 = indistinguishable, 1 = always told apart.

    Rows as encode_rows fitted on the real table; the larger table is subsampled (seeded) to the size of the smaller,
    so both classes count equally. The classifier is small and fixed: LightGBM, 100 trees of at most 15 leaves, one
    thread. TabSyn reports SDMetrics' LogisticDetection instead, 1 - (2 max(AUC, 0.5) - 1) of a logistic
    regression: a different classifier, and a score that reads the other way; this is the AUC itself.
    An AUC well below 0.5 means synthetic rows that duplicate real ones: the classifier, trained on one of a pair of
    twins, gives the other the opposite label (a table against a shuffled copy of itself: 0.07 in the tests).
    """
    from lightgbm import LGBMClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    schema = _checked(schema, real, synth)
    count = min(len(real), len(synth))
    if count < folds or folds < 2:
        raise UserError(f"a {folds}-fold two-sample test needs at least {max(folds, 2)} rows per table "
                        f"(got {len(real)} real and {len(synth)} synthetic)")
    rng = np.random.default_rng(seed)
    real, synth = _sample(real, count, rng), _sample(synth, count, rng)
    x = np.concatenate(encode_rows([real, synth], schema, fit_on=real))
    y = np.r_[np.ones(count, np.int64), np.zeros(count, np.int64)]
    aucs = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = LGBMClassifier(**_TREES, random_state=seed).fit(x[train], y[train])
        aucs.append(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    return float(np.mean(aucs))


def alpha_precision_beta_recall(real: pd.DataFrame, synth: pd.DataFrame, schema: list[dict], *, k: int = 5,
                                seed: int = 0) -> dict:
    """k-NN precision and recall (Kynkäänniemi et al. 2019) on rows as encode_rows fitted on the real table: the
    simplified, k-NN form of Alaa et al. 2022's alpha-precision and beta-recall that tabular papers report.

    Each row's ball has the radius of its k-th nearest neighbour in its own table (itself excluded, a duplicate
    counting at distance 0). precision: the fraction of synthetic rows inside some real ball (fidelity); recall: the
    fraction of real rows inside some synthetic ball (diversity). Not Alaa et al.'s definition, which fits a one-class
    embedding and integrates over alpha, beta in [0, 1]. The same code as the images' manifold metrics
    (neighbours.manifold_metrics), so density and coverage (Naeem et al. 2020) come too.
    Cost is quadratic: each table is first subsampled (seeded) to at most 5000 rows.
    Returns {"precision", "recall", "density", "coverage", "k", "rows": {"real", "synthetic"}}.
    """
    schema = _checked(schema, real, synth)
    if min(len(real), len(synth)) <= k:
        raise UserError(f"k-NN precision and recall with k={k} need more than {k} rows per table "
                        f"(got {len(real)} real and {len(synth)} synthetic)")
    rng = np.random.default_rng(seed)
    real, synth = _sample(real, _QUADRATIC_ROWS, rng), _sample(synth, _QUADRATIC_ROWS, rng)
    a, b = encode_rows([real, synth], schema, fit_on=real)
    return {**manifold_metrics(a, b, k=k), "rows": {"real": len(a), "synthetic": len(b)}}


# ---------------------------------------------------------------------------------------------------- utility


def _features(frame: pd.DataFrame, schema: list[dict]) -> pd.DataFrame:
    """The columns as LightGBM takes them: numbers float64 (NaN missing), categoricals pandas category dtype over the
    schema's categories (missing or unknown values NaN); columns renamed f0, f1, ... (LightGBM refuses some names)."""
    out = {}
    for i, column in enumerate(schema):
        series = frame[column["name"]]
        if _is_category(column):
            categories = pd.Index(_categories(column))
            out[f"f{i}"] = pd.Categorical.from_codes(categories.get_indexer(_labels(series)), categories=categories)
        else:
            out[f"f{i}"] = _numbers(series, column)
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


def _classify(model_args: dict, x_train, y_train: np.ndarray, x_test, classes: int) -> np.ndarray:
    """Class probabilities (N_test, classes) of a LightGBM classifier; a training set of one class predicts it."""
    from lightgbm import LGBMClassifier

    seen = np.unique(y_train)
    proba = np.zeros((len(x_test), classes))
    if len(seen) == 1:
        proba[:, seen[0]] = 1.0
        return proba
    model = LGBMClassifier(**model_args).fit(x_train, y_train)
    proba[:, model.classes_] = model.predict_proba(x_test)
    return proba


def mle(train: pd.DataFrame, test: pd.DataFrame, schema: list[dict], target: str, *, seed: int = 0,
        task: str | None = None) -> dict:
    """Machine-learning efficiency (TabDDPM, TabSyn): gradient-boosted trees trained on `train` to predict `target`
    from every other schema column, scored on `test` (real held-out rows).

    One fixed recipe whatever the rows: LightGBM, 200 trees of at most 31 leaves, learning rate 0.05, 80% row and
    column bagging seeded by `seed`, one thread; categoricals as pandas categories over the schema's categories,
    missing values left to LightGBM. (TabDDPM tunes CatBoost, TabSyn grid-searches XGBoost: not comparable numbers.)
    Rows whose target is missing are dropped. `task` None: "classification" for a categorical or boolean target,
    else "regression".

    classification: {"task", "f1", "f1_average", "positive_class", "f1_macro", "auc", "accuracy"}. With two classes f1 is the
    binary F1 of the minority class of `test` (f1_average "binary"; a tie goes to the later class), else the macro F1
    over the classes in `test` or predicted (f1_average "macro", positive_class None). auc is the ROC AUC of that
    positive class, or the one-vs-rest macro over the classes both present and absent in `test` (sklearn's "ovr"
    macro when every class is in `test`); NaN when there is none such. A training set of one class predicts it.
    regression: {"task", "r2", "rmse"}.
    """
    from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, r2_score, roc_auc_score

    schema = _checked(schema, train, test)
    by_name = {c["name"]: c for c in schema}
    if target not in by_name:
        raise UserError(f"the target {target!r} is not a column of the schema ({list(by_name)})")
    column = by_name[target]
    task = task or ("classification" if _is_category(column) else "regression")
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    features = [c for c in schema if c["name"] != target]
    if not features:
        raise UserError(f"the table has no column but the target {target!r} to predict it from")

    if _is_category(column):
        y_train, y_test = _labels(train[target]), _labels(test[target])
        keep_train, keep_test = y_train != MISSING, y_test != MISSING
    else:
        y_train, y_test = _numbers(train[target], column), _numbers(test[target], column)
        keep_train, keep_test = ~np.isnan(y_train), ~np.isnan(y_test)
    if not keep_train.any() or not keep_test.any():
        raise UserError(f"the target {target!r} is missing in every {'training' if not keep_train.any() else 'test'} row")
    x_train = _features(train.iloc[np.flatnonzero(keep_train)], features)
    x_test = _features(test.iloc[np.flatnonzero(keep_test)], features)
    y_train, y_test = y_train[keep_train], y_test[keep_test]
    args = {**_MLE_TREES, "random_state": seed}

    if task == "regression":
        from lightgbm import LGBMRegressor

        if _is_category(column):
            raise UserError(f"the target {target!r} is {column['type']}: regression needs a numeric target")
        predicted = LGBMRegressor(**args).fit(x_train, y_train).predict(x_test)
        return {"task": "regression", "r2": float(r2_score(y_test, predicted)),
                "rmse": float(np.sqrt(mean_squared_error(y_test, predicted)))}

    classes = (_categories(column) if _is_category(column)
               else [str(v) for v in np.unique(np.concatenate([y_train, y_test]))])
    if not _is_category(column):
        y_train, y_test = y_train.astype(str), y_test.astype(str)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in np.concatenate([y_train, y_test]) if v not in index})
    if unknown:
        raise UserError(f"the target {target!r} holds {unknown[:5]}, not among its categories {classes}")
    y_train, y_test = np.array([index[v] for v in y_train]), np.array([index[v] for v in y_test])
    proba = _classify(args, x_train, y_train, x_test, len(classes))
    predicted = proba.argmax(axis=1)
    # f1_macro: the mean F1 over the classes in `test` or predicted, which TabDDPM reports (its Adult 0.815 on real rows).
    out: dict[str, Any] = {"task": "classification", "accuracy": float(accuracy_score(y_test, predicted)),
                           "f1_macro": float(f1_score(y_test, predicted, average="macro", zero_division=0))}
    if len(classes) == 2:
        counts = np.bincount(y_test, minlength=2)
        positive = 0 if counts[0] < counts[1] else 1  # the minority class, the later one on a tie
        out.update(f1=float(f1_score(y_test == positive, predicted == positive, zero_division=0)),
                   f1_average="binary", positive_class=classes[positive])
        both = 0 < counts[positive] < len(y_test)
        out["auc"] = float(roc_auc_score(y_test == positive, proba[:, positive])) if both else float("nan")
    else:
        out.update(f1=float(f1_score(y_test, predicted, average="macro", zero_division=0)), f1_average="macro",
                   positive_class=None)
        aucs = [roc_auc_score(y_test == c, proba[:, c]) for c in range(len(classes))
                if 0 < (y_test == c).sum() < len(y_test)]
        out["auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return out


# ---------------------------------------------------------------------------------------------------- privacy


def _quantiles(d: np.ndarray) -> dict[str, float]:
    return {key: float(np.quantile(d, q)) for key, q in _QUANTILES.items()}


def dcr(synth: pd.DataFrame, train: pd.DataFrame, holdout: pd.DataFrame, schema: list[dict], *, seed: int = 0) -> dict:
    """Distance to closest record with a held-out baseline (TabSyn's DCR as amended in tabsyn issue #18): how much
    closer synthetic rows lie to the training rows than unseen real rows do.

    L2 distances on rows as encode_rows fitted on `train`. At most 5000 synthetic rows are queried (seeded sample),
    and as many held-out rows (fewer if `holdout` is smaller). Returns:
    synthetic_dcr_median, holdout_dcr_median: median distance from each synthetic / held-out row to its nearest
    training row; dcr_quantiles: {"synthetic", "holdout"} -> {"q05", "q25", "q50", "q75", "q95"};
    share_closer_to_train: over the synthetic rows, the fraction whose nearest row among m training rows is closer than
    their nearest among m held-out rows, m = min(len(train), len(holdout)) (seeded samples), ties (within float
    rounding) counting one half: 0.5 when synthetic rows are as close to the training rows as fresh real rows are,
    1 when they copy training rows (TabSyn counts strict "closer" only, so duplicate rows pull its score below 0.5);
    nndr_median: median over synthetic rows of nearest / second-nearest training distance (1 when both are 0);
    exact_copies: synthetic rows (all of them, not the sample) equal to some training row on every column;
    rows: {"synthetic", "holdout", "train", "share_reference"}.
    """
    from sklearn.neighbors import NearestNeighbors

    schema = _checked(schema, synth, train, holdout)
    if len(train) < 2 or not len(holdout) or not len(synth):
        raise UserError(f"DCR needs at least 2 training rows and some held-out and synthetic rows (got {len(train)} "
                        f"training, {len(holdout)} held-out and {len(synth)} synthetic)")
    rng = np.random.default_rng(seed)
    queried = _sample(synth, _QUADRATIC_ROWS, rng)
    held = _sample(holdout, len(queried), rng)
    m = min(len(train), len(holdout))
    train_m, holdout_m = _sample(train, m, rng), _sample(holdout, m, rng)
    t, s, h, tm, hm = encode_rows([train, queried, held, train_m, holdout_m], schema, fit_on=train)
    tol = _tolerance(t, s, h, hm)

    nearest_train = NearestNeighbors(n_neighbors=2, n_jobs=1).fit(t)
    d_synth, _ = nearest_train.kneighbors(s)
    d_holdout = nearest_train.kneighbors(h, n_neighbors=1)[0][:, 0]
    d1, d2 = d_synth[:, 0], d_synth[:, 1]
    nndr = np.where(d2 <= tol, 1.0, np.where(d1 <= tol, 0.0, d1 / np.maximum(d2, tol)))

    to_train = NearestNeighbors(n_neighbors=1, n_jobs=1).fit(tm).kneighbors(s)[0][:, 0]
    to_holdout = NearestNeighbors(n_neighbors=1, n_jobs=1).fit(hm).kneighbors(s)[0][:, 0]
    tie = np.abs(to_train - to_holdout) <= tol
    share = float(np.where(tie, 0.5, (to_train < to_holdout).astype(np.float64)).mean())

    copies = int(np.isin(_row_keys(synth, schema), _row_keys(train, schema)).sum())
    return {"synthetic_dcr_median": float(np.median(d1)), "holdout_dcr_median": float(np.median(d_holdout)),
            "dcr_quantiles": {"synthetic": _quantiles(d1), "holdout": _quantiles(d_holdout)},
            "share_closer_to_train": share, "nndr_median": float(np.median(nndr)), "exact_copies": copies,
            "rows": {"synthetic": len(s), "holdout": len(h), "train": len(t), "share_reference": m}}
