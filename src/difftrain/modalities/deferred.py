"""Costly first uses that a caller may put off: a feature space whose first use trains a network on the dataset (minutes
on 60,000 images) raises Deferred under `deferring()`, once every check that needs no training has passed. Training
uses it so that its first steps do not wait for the evaluation's feature classifier (training/during_training.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_asked: ContextVar[bool] = ContextVar("deferring", default=False)


class Deferred(Exception):
    """The costly step was put off; `what` names it."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


@contextmanager
def deferring() -> Iterator[None]:
    token = _asked.set(True)
    try:
        yield
    finally:
        _asked.reset(token)


def defer_if_asked(what: str) -> None:
    """Called where the costly step would start: under `deferring()`, put it off."""
    if _asked.get():
        raise Deferred(what)
