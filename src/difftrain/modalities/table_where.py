"""`sample --where`: rows with given column values. A condition on the target column (the class labels) conditions the
model; a condition on any other column keeps the samples that meet it (run_eval.kept_draws), which draws exactly from
the model's conditional distribution at the cost of the rejected rows.

Conditions are COLUMN=VALUE for any column (a category, true/false, a number), and COLUMN<V, <=, >, >= for numbers;
several conditions all hold. `income=>50K` is income equal to ">50K": the first operator after the name counts.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from difftrain.errors import UserError

_CONDITION = re.compile(r"^\s*(.+?)\s*(<=|>=|=|<|>)\s*(.*?)\s*$")
_COMPARE = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def parse_where(conditions: list[str], schema: list[dict[str, Any]], target: dict[str, Any] | None,
                class_names: list[str] | None) -> tuple[int | None, Callable[[np.ndarray], np.ndarray] | None]:
    """(class index of a target condition or None, a filter of codes (N, K) -> bool (N,) for the rest or None)."""
    label, tests = None, []
    columns = {c["name"]: k for k, c in enumerate(schema)}
    for text in conditions:
        match = _CONDITION.match(text)
        if not match or not match.group(3):
            raise UserError(f"--where {text!r}: write COLUMN=VALUE (or <, <=, >, >= for numbers), e.g. --where 'income=>50K'")
        name, op, value = match.groups()
        if target is not None and target["role"] == "label" and name == target["name"]:
            if op != "=":
                raise UserError(f"--where {text!r}: {name} is categorical; use {name}=VALUE")
            value = _category(text, value, target)
            picked = (class_names or target["categories"]).index(value)
            if label is not None and label != picked:
                raise UserError(f"--where asks for two values of {name}: no row has both")
            label = picked
            continue
        if name not in columns:
            known = [*columns, *([target["name"]] if target is not None and target["role"] == "label" else [])]
            raise UserError(f"--where {text!r}: the table has no column {name!r}; its columns are: {', '.join(known)}")
        tests.append(_column_test(text, columns[name], schema[columns[name]], op, value))
    if not tests:
        return label, None
    return label, lambda codes: np.logical_and.reduce([test(codes) for test in tests])


def _column_test(text: str, k: int, column: dict[str, Any], op: str, value: str) -> Callable[[np.ndarray], np.ndarray]:
    """codes (N, K) -> bool (N,) for one condition on column k (codes: category indices, 0/1, numbers; NaN missing)."""
    kind = column["type"]
    if kind in ("categorical", "boolean"):
        if op != "=":
            raise UserError(f"--where {text!r}: {column['name']} is {kind}; use {column['name']}=VALUE")
        code = [str(c) for c in column["categories"]].index(_category(text, value, column))
        return lambda codes: codes[:, k] == code
    if kind == "datetime":
        raise UserError(f"--where {text!r}: conditions on datetime columns ({column['name']}) are not supported")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"--where {text!r}: {column['name']} is {kind}; give a number, e.g. {column['name']}>=40") from None
    compare = _COMPARE[op]
    return lambda codes: compare(codes[:, k], number)  # NaN (missing) compares False


def _category(text: str, value: str, column: dict[str, Any]) -> str:
    """The column's category that `value` names: exactly, or for a boolean in any case (true, True, TRUE)."""
    categories = [str(c) for c in column["categories"]]
    if value in categories:
        return value
    folded = [c for c in categories if column["type"] == "boolean" and c.lower() == value.lower()]
    if len(folded) == 1:
        return folded[0]
    raise UserError(f"--where {text!r}: {value!r} is not a value of {column['name']}; its values are: "
                    f"{', '.join(categories)}")
