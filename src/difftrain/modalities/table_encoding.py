"""How a table row becomes a model vector and back: numbers by their quantiles mapped to a standard normal, categories
one-hot in {-1, 1} and decoded by argmax (the "one-hot in continuous space" of CoDi and STaSy, beside TabDDPM's
multinomial diffusion), a missing cell as one more category or, for numbers, a +1/-1 indicator.

Quantile-normal scores (TabDDPM, TabSyn) make every numeric column look Gaussian whatever its shape (skewed incomes,
spikes at zero), so one noise schedule fits them all. The map is stored in the dataset's spec as each column's
distinct training quantiles and their normal scores; ties (an integer column with few values) share one score.
Decoding inverts the map as a plateau per repeated value: every score within the span of a value's quantiles decodes
to that value, and only the gaps between values interpolate. So a spike (income 0 for 90% of rows) comes back as
exactly 0, not as the small made-up amounts a straight interpolation gives just beside the spike's score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NUMBER_TYPES = ("numeric", "integer", "datetime")
LEVELS = 1000  # quantiles kept per numeric column
_EDGE = 1e-3  # the outermost quantiles map to +-3.09 standard deviations, not +-infinity
_UNIT_SECONDS = {"D": 86_400.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}  # a datetime column's unit (table_sources._UNITS)


def fit_encoding(codes: np.ndarray, schema: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per column of training codes (N, K): {"quantiles", "scores", "low", "high"} for numbers (each distinct quantile,
    its mean score that encoding uses, and the span of scores that decodes to it), {} for categories; JSON-able."""
    from scipy.special import ndtri

    out = []
    for k, column in enumerate(schema):
        if column["type"] not in NUMBER_TYPES:
            out.append({})
            continue
        present = codes[:, k][np.isfinite(codes[:, k])]
        levels = np.linspace(0, 1, min(LEVELS, max(len(present), 2)))
        values = np.quantile(present, levels) if len(present) else np.zeros(2)
        scores = ndtri(np.clip(levels, _EDGE, 1 - _EDGE))
        unique, first, counts = np.unique(values, return_index=True, return_counts=True)  # values are sorted
        # A tie gets the mean score of its levels: a value that fills 30% of the rows sits at the middle of its 30%.
        tied = np.add.reduceat(scores, first) / counts
        out.append({"quantiles": unique.tolist(), "scores": tied.tolist(),
                    "low": np.minimum.reduceat(scores, first).tolist(), "high": np.maximum.reduceat(scores, first).tolist()})
    return out


class TableEncoding:
    """The model vector's layout: each column's slice, and the encode/decode of codes (N, K) <-> vectors (N, D)."""

    def __init__(self, schema: list[dict[str, Any]], encoding: list[dict[str, Any]]):
        self.schema, self.maps = schema, [{k: np.asarray(v, np.float64) for k, v in m.items()} for m in encoding]
        self.slices: list[slice] = []
        width = 0
        for column in schema:
            w = self.width(column)
            self.slices.append(slice(width, width + w))
            width += w
        self.dim = width

    @staticmethod
    def width(column: dict[str, Any]) -> int:
        missing = column.get("missing", 0) > 0
        if column["type"] in NUMBER_TYPES:
            return 1 + missing
        return len(column["categories"]) + missing

    def encode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (N, K), NaN = missing -> float32 vectors (N, D)."""
        out = np.full((len(codes), self.dim), -1.0, np.float32)
        for k, (column, where, m) in enumerate(zip(self.schema, self.slices, self.maps, strict=True)):
            value = codes[:, k]
            gone = ~np.isfinite(value)
            if column["type"] in NUMBER_TYPES:
                out[:, where.start] = np.where(gone, 0.0, np.interp(np.nan_to_num(value), m["quantiles"], m["scores"]))
                if where.stop - where.start == 2:
                    out[:, where.start + 1] = np.where(gone, 1.0, -1.0)
            else:
                hot = np.where(gone, where.stop - where.start - 1, np.nan_to_num(value)).astype(np.int64)
                out[np.arange(len(codes)), where.start + hot] = 1.0
        return out

    def decode(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors (N, D) -> codes (N, K): numbers through the inverse quantile map (so within the training range),
        categories by argmax; a missing slot or indicator that wins gives NaN."""
        out = np.empty((len(vectors), len(self.schema)), np.float64)
        for k, (column, where, m) in enumerate(zip(self.schema, self.slices, self.maps, strict=True)):
            part = vectors[:, where].astype(np.float64)
            if column["type"] in NUMBER_TYPES:
                spans = np.column_stack([m["low"], m["high"]]).ravel()  # non-decreasing: the quantiles are sorted
                value = _rounded(np.interp(part[:, 0], spans, np.repeat(m["quantiles"], 2)), column)
                out[:, k] = np.where(part[:, 1] > 0, np.nan, value) if part.shape[1] == 2 else value
            else:
                index = part.argmax(1).astype(np.float64)
                out[:, k] = np.where(index >= len(column["categories"]), np.nan, index)
        return out


def _rounded(value: np.ndarray, column: dict[str, Any]) -> np.ndarray:
    """Numbers as the column writes them: whole for integers, datetimes (seconds) to their unit, else its decimals."""
    if column["type"] == "datetime":
        step = _UNIT_SECONDS.get(column.get("unit") or "")
        return value if step is None else np.round(value / step) * step
    if column["type"] == "integer":
        return np.round(value)
    return value if column.get("decimals") is None else np.round(value, column["decimals"])
