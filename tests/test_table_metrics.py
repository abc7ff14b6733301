"""Known answers for the table scores: shapes and trends by hand, the classifier and k-NN scores on samples of one
distribution and of clearly different ones, utility on targets that are functions of a column, and privacy on copies
and on fresh draws. Small tables, one thread: the file runs in seconds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from difftrain.errors import UserError
from difftrain.evaluation.table_metrics import (alpha_precision_beta_recall, c2st_auc, column_shapes, dcr, encode_rows,
                                                mle, pair_trends)

SCHEMA = [
    {"name": "age", "type": "integer", "categories": None, "min": 17.0, "max": 90.0, "missing": 0.0},
    {"name": "hours", "type": "numeric", "categories": None, "min": None, "max": None, "missing": 0.05},
    {"name": "job", "type": "categorical", "categories": ["clerk", "nurse", "pilot"], "missing": 0.1},
    {"name": "member", "type": "boolean", "categories": ["False", "True"], "missing": 0.0},
]


def people(n: int, seed: int = 0, shift: float = 0.0, gaps: bool = True) -> pd.DataFrame:
    """A mixed table: hours grows with age, the job depends on age, a tenth of the jobs and (with `gaps`) a twentieth
    of the hours missing."""
    rng = np.random.default_rng(seed)
    age = np.clip(np.rint(rng.normal(45 + shift, 12, n)), 17, 90).astype(np.int64)
    hours = 20 + 0.5 * age + rng.normal(0, 4, n)
    hours[(rng.random(n) < 0.05) & gaps] = np.nan
    job = np.where(age + rng.normal(0, 8, n) > 50, "pilot", rng.choice(["clerk", "nurse"], n)).astype(object)
    job[rng.random(n) < 0.1] = None
    return pd.DataFrame({"age": pd.array(age, dtype="Int64"), "hours": hours, "job": job,
                         "member": rng.choice(["False", "True"], n, p=[0.7, 0.3])})


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return people(600, seed=0)


# ---------------------------------------------------------------------------------------------------- encoding


def test_encode_rows_standardises_by_fit_on_and_one_hots_categories(real):
    other = people(50, seed=1)
    other.loc[0, "job"] = "astronaut"  # outside the schema's categories: all zeros
    fitted, encoded = encode_rows([real, other], SCHEMA, fit_on=real)
    # age (no missing anywhere): 1; hours: value + indicator; job: 3 + missing; member: 2 (no missing)
    assert fitted.shape == (600, 1 + 2 + 4 + 2) and encoded.shape == (50, 9)
    assert abs(fitted[:, 0].mean()) < 1e-12 and abs(fitted[:, 0].std() - 1) < 1e-12
    hours = real["hours"].to_numpy()
    present = ~np.isnan(hours)
    assert np.allclose(fitted[present, 1], (hours[present] - hours[present].mean()) / hours[present].std())
    assert (fitted[~present, 1] == 0).all() and (fitted[:, 2] == ~present).all()
    assert (fitted[:, 3:7].sum(axis=1) == 1).all() and (fitted[:, 6] == real["job"].isna()).all()
    assert encoded[0, 3:7].sum() == 0
    assert (fitted[:, 7] == (real["member"] == "False")).all()


def test_encode_rows_reads_datetimes_as_seconds_and_booleans_as_text():
    schema = [{"name": "when", "type": "datetime", "categories": None},
              {"name": "flag", "type": "boolean", "categories": ["False", "True"]}]
    frame = pd.DataFrame({"when": pd.to_datetime(["1970-01-01 00:00:10", "1970-01-01 00:00:30", None]),
                          "flag": [True, False, True]})
    (rows,) = encode_rows([frame], schema, fit_on=frame)
    assert np.allclose(rows[:, 0], [-1, 1, 0]) and (rows[:, 1] == [0, 0, 1]).all()  # seconds 10, 30: mean 20, std 10
    assert (rows[:, 2:] == [[0, 1], [1, 0], [0, 1]]).all()
    later = frame.assign(when=frame["when"] + pd.Timedelta(seconds=15))
    shapes = column_shapes(frame, later, schema)  # present seconds {10, 30} vs {25, 45}: KS 1/2, same missing rate
    assert shapes["parts"]["when"] == {"ks": 0.5, "missing_tv": 0.0} and shapes["columns"]["flag"] == 1.0


def test_schema_and_table_mistakes(real):
    with pytest.raises(UserError, match="no column 'job'"):
        column_shapes(real, real.drop(columns="job"), SCHEMA)
    with pytest.raises(ValueError, match="type 'text'"):
        column_shapes(real, real, [{**SCHEMA[0], "type": "text"}])
    with pytest.raises(UserError, match="is integer but holds"):
        column_shapes(real, real.assign(age=["x"] * len(real)), SCHEMA)


# ------------------------------------------------------------------------------------------------ column shapes


def test_column_shapes_of_a_table_against_itself_is_one(real):
    shapes = column_shapes(real, real.sample(frac=1.0, random_state=3), SCHEMA)
    assert shapes["score"] == 1.0 and set(shapes["columns"]) == {"age", "hours", "job", "member"}


def test_column_shapes_categorical_is_one_minus_tv_by_hand():
    schema = [{"name": "c", "type": "categorical", "categories": ["a", "b", "c"]}]
    real = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 30 + [None] * 20})
    synth = pd.DataFrame({"c": ["a"] * 30 + ["b"] * 30 + [np.nan] * 10 + ["c"] * 30})
    # real a .5 b .3 missing .2; synthetic a .3 b .3 missing .1 c .3: TV = (.2 + 0 + .1 + .3) / 2 = .3
    shapes = column_shapes(real, synth, schema)
    assert shapes["score"] == pytest.approx(0.7, abs=1e-12) and shapes["parts"]["c"]["tv"] == pytest.approx(0.3)


def test_column_shapes_numeric_is_ks_complement_plus_missing_rate(real):
    shifted = real.assign(hours=real["hours"] + 3.0)
    present = real["hours"].dropna().to_numpy()
    ks = ks_2samp(present, present + 3.0).statistic
    assert column_shapes(real, shifted, SCHEMA)["columns"]["hours"] == pytest.approx(1 - ks, abs=1e-12)
    filled = shifted.assign(hours=shifted["hours"].fillna(50.0))  # missing rate m -> 0: the score loses m more
    rate = real["hours"].isna().mean()
    shapes = column_shapes(real, filled, SCHEMA)
    ks_filled = ks_2samp(present, filled["hours"].to_numpy()).statistic
    assert shapes["parts"]["hours"] == pytest.approx({"ks": ks_filled, "missing_tv": rate})
    assert shapes["columns"]["hours"] == pytest.approx(1 - ks_filled - rate, abs=1e-12)


# ------------------------------------------------------------------------------------------------- pair trends


def test_pair_trends_of_identical_tables_is_one(real):
    trends = pair_trends(real, real, SCHEMA)
    assert trends["score"] == pytest.approx(1.0) and len(trends["pairs"]) == 6 and "age|hours" in trends["pairs"]


def test_pair_trends_flipped_correlation(real):
    flipped = real.assign(hours=-real["hours"])
    a, h = real["age"].to_numpy(np.float64, na_value=np.nan), real["hours"].to_numpy()
    both = ~np.isnan(h)
    r = np.corrcoef(a[both], h[both])[0, 1]
    assert r > 0.7
    assert pair_trends(real, flipped, SCHEMA)["pairs"]["age|hours"] == pytest.approx(1 - abs(2 * r) / 2, abs=1e-12)


def test_pair_trends_contingency_by_hand():
    schema = [{"name": "c", "type": "categorical", "categories": ["a", "b"]}, {"name": "x", "type": "numeric"}]
    real = pd.DataFrame({"c": ["a", "a", "b", "b"], "x": [1.0, 2.0, 3.0, 4.0]})
    synth = pd.DataFrame({"c": ["a", "b", "a", "b"], "x": [1.0, 2.0, 3.0, 4.0]})
    # 2 bins of the real x: {1, 2} and {3, 4}; real cells (a, low) .5, (b, high) .5; synthetic all four .25: TV .5
    assert pair_trends(real, synth, schema, bins=2) == {"score": 0.5, "pairs": {"c|x": 0.5}}
    # a missing x is its own bin: real (a, missing) .25 vs synthetic (a, low) .25 moves a quarter
    gap = real.assign(x=[np.nan, 2.0, 3.0, 4.0])
    assert pair_trends(gap, real, schema, bins=2)["score"] == pytest.approx(0.75)


def test_pair_trends_undefined_correlations_are_left_out():
    schema = [{"name": "x", "type": "numeric"}, {"name": "y", "type": "numeric"}, {"name": "z", "type": "numeric"}]
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 1.0, 1.0, 1.0], "z": [2.0, 1.0, 4.0, 3.0]})
    trends = pair_trends(frame, frame, schema)
    assert math.isnan(trends["pairs"]["x|y"]) and trends["pairs"]["x|z"] == 1.0 and trends["score"] == 1.0
    assert math.isnan(pair_trends(frame, frame, schema[:1])["score"])


# --------------------------------------------------------------------------------------------- c2st, precision


def test_c2st_near_half_for_one_distribution_and_near_one_for_different(real):
    same = c2st_auc(real, people(800, seed=1), SCHEMA, seed=0)  # 800 synthetic rows: subsampled to 600
    assert abs(same - 0.5) < 0.1
    assert c2st_auc(real, people(600, seed=2, shift=25.0), SCHEMA, seed=0) > 0.9
    assert c2st_auc(real, people(800, seed=1), SCHEMA, seed=0) == same  # seeded


def test_precision_recall_one_distribution_and_off_support(real):
    same = alpha_precision_beta_recall(real, people(600, seed=1), SCHEMA, k=5)
    assert same["precision"] > 0.85 and same["recall"] > 0.85 and same["rows"] == {"real": 600, "synthetic": 600}
    off = real.assign(hours=real["hours"] + 200.0)  # far outside the real hours, except where hours are missing
    result = alpha_precision_beta_recall(real, off, SCHEMA, k=5)
    assert result["precision"] < real["hours"].isna().mean() + 0.05
    # (recall is not small there: the few rows left on the support have their 5th neighbour far off, so huge balls)
    result = alpha_precision_beta_recall(real, off.dropna(subset=["hours"]), SCHEMA, k=5)
    assert result["precision"] == 0.0 and result["recall"] == 0.0


# ---------------------------------------------------------------------------------------------------------- mle


def with_targets(frame: pd.DataFrame) -> pd.DataFrame:
    age = frame["age"].to_numpy(np.float64)
    return frame.assign(old=np.where(age > 55, "yes", "no"), band=np.select([age < 35, age < 55], ["young", "mid"], "old"),
                        score=3.0 * age - 10.0)


TARGETS = SCHEMA + [{"name": "old", "type": "boolean", "categories": ["no", "yes"]},
                    {"name": "band", "type": "categorical", "categories": ["young", "mid", "old"]},
                    {"name": "score", "type": "numeric"}]


def test_mle_recovers_targets_that_are_functions_of_a_column(real):
    train, test = with_targets(real), with_targets(people(400, seed=5))
    schema = [c for c in TARGETS if c["name"] not in ("band", "score")]
    binary = mle(train, test, schema, "old")
    assert binary["task"] == "classification" and binary["f1_average"] == "binary" and binary["positive_class"] == "yes"
    assert binary["f1"] > 0.95 and binary["accuracy"] > 0.95 and binary["auc"] > 0.95
    multi = mle(train, test, [c for c in TARGETS if c["name"] not in ("old", "score")], "band")
    assert multi["f1_average"] == "macro" and multi["f1"] > 0.95 and multi["auc"] > 0.95
    regression = mle(train, test, [c for c in TARGETS if c["name"] not in ("old", "band")], "score")
    assert set(regression) == {"task", "r2", "rmse"} and regression["r2"] > 0.98


def test_mle_binary_f1_is_that_of_the_test_minority_class(real):
    schema = SCHEMA  # member, independent of the other columns: a weak model, so the F1 depends on the class
    test = people(400, seed=5)
    out = mle(real, test, schema, "member", seed=1)
    assert out["positive_class"] == "True"  # 30% of the rows
    assert 0.0 <= out["f1"] <= 1.0 and not math.isnan(out["auc"])
    flipped = mle(real, test.assign(member=test["member"].map({"True": "False", "False": "True"})), schema, "member",
                  seed=1)
    assert flipped["positive_class"] == "False"  # the minority of the test rows, whichever the training rows
    one_class = real.assign(member="False")  # a training set of one class predicts it: F1 of "True" is 0
    constant = mle(one_class, test, schema, "member")
    share = (test["member"] == "False").mean()
    assert constant["f1"] == 0.0 and constant["accuracy"] == pytest.approx(share)
    # Macro F1 averages that 0 with the F1 of "False", predicted everywhere: precision `share`, recall 1.
    assert constant["f1_macro"] == pytest.approx((2 * share / (1 + share)) / 2)


def test_mle_drops_missing_targets_and_takes_a_forced_task(real):
    train, test = with_targets(real), with_targets(people(400, seed=5))
    train.loc[:50, "old"] = None
    schema = [c for c in TARGETS if c["name"] not in ("band", "score")]
    assert mle(train, test, schema, "old")["f1"] > 0.95
    ages = [c for c in TARGETS if c["name"] not in ("old", "band", "score")]
    by_class = mle(train.assign(member=np.where(train["age"] > 40, "True", "False")),
                   test.assign(member=np.where(test["age"] > 40, "True", "False")), ages, "member")
    assert by_class["accuracy"] > 0.95
    with pytest.raises(UserError, match="not a column"):
        mle(train, test, schema, "salary")
    with pytest.raises(UserError, match="regression needs a numeric target"):
        mle(train, test, schema, "old", task="regression")
    forced = mle(train.assign(age10=train["age"] // 10), test.assign(age10=test["age"] // 10),
                 [*schema[:2], {"name": "age10", "type": "integer"}], "age10", task="classification")
    assert forced["f1_average"] == "macro" and forced["accuracy"] > 0.9


# ---------------------------------------------------------------------------------------------------------- dcr


def test_dcr_of_copies_and_of_fresh_draws():
    # no missing hours: a row missing its one continuous value could equal a held-out row, a tie that counts 1/2
    train, holdout = people(400, seed=10, gaps=False), people(400, seed=11, gaps=False)
    copies = dcr(train.sample(frac=1.0, random_state=0), train, holdout, SCHEMA)
    assert copies["exact_copies"] == 400 and copies["share_closer_to_train"] == 1.0
    assert copies["synthetic_dcr_median"] == 0.0 and copies["holdout_dcr_median"] > 0 and copies["nndr_median"] == 0.0
    train, holdout = people(400, seed=10), people(400, seed=11)
    synth = people(400, seed=12)
    fresh = dcr(synth, train, holdout, SCHEMA)
    # fresh rows equal a training row only where hours are missing and age, job and member agree
    same = synth.reset_index().merge(train.drop_duplicates(), on=["age", "hours", "job", "member"])
    assert fresh["exact_copies"] == same["index"].nunique() and abs(fresh["share_closer_to_train"] - 0.5) < 0.1
    ratio = fresh["synthetic_dcr_median"] / fresh["holdout_dcr_median"]
    assert 0.8 < ratio < 1.25 and set(fresh["dcr_quantiles"]) == {"synthetic", "holdout"}
    assert fresh["dcr_quantiles"]["synthetic"]["q50"] == fresh["synthetic_dcr_median"]
    assert fresh["rows"] == {"synthetic": 400, "holdout": 400, "train": 400, "share_reference": 400}


def test_dcr_ties_count_half_and_holdout_size_bounds_the_reference():
    schema = [SCHEMA[2], SCHEMA[3]]  # categories only: every row equals many others
    rows = people(200, seed=3)[["job", "member"]]
    out = dcr(rows, rows, rows.iloc[:150], schema)
    # each of the 8 (job, member) rows is in both 150-row references: every synthetic row ties at distance 0
    assert out["exact_copies"] == 200 and out["rows"]["share_reference"] == 150
    assert out["share_closer_to_train"] == 0.5 and out["nndr_median"] == 1.0  # 0 / 0 reads 1


def test_c2st_far_below_half_for_copies_of_the_real_rows(real):
    assert c2st_auc(real, real.iloc[::-1], SCHEMA) < 0.3
