"""Blocks of records held column-wise (pure)."""

from __future__ import annotations

import numpy as np

from halfclose.analysis._common import MISSING_CODE, MISSING_INT
from halfclose.analysis.records import Coded, Ints, Texts, plain_rows, plain_values


def test_plain_values_mark_missing_values_as_declared() -> None:
    values = np.array([5, MISSING_INT, -3], dtype=np.int64)
    assert plain_values(Ints(values, optional=True)) == [5, None, -3]
    assert plain_values(Ints(values)) == [5, MISSING_INT, -3]  # not optional: values as they are
    codes = np.array([1, MISSING_CODE, 0, 1], dtype=np.int64)
    assert plain_values(Coded(codes, ("a", "b"))) == ["b", None, "a", "b"]
    assert plain_values(Coded(codes, ((1, 2), ()), (), tuples=True)) == [[], [], [1, 2], []]
    assert plain_values(Texts(["x", "y"])) == ["x", "y"]


def test_tuples_become_fresh_lists() -> None:
    rows = plain_values(Coded(np.array([0, 0], dtype=np.int64), (("a",),), tuples=True))
    assert rows == [["a"], ["a"]] and rows[0] is not rows[1]


def test_plain_rows_keep_the_block_order() -> None:
    block = {
        "z": Ints(np.array([1, 2], dtype=np.int64)),
        "a": Coded(np.array([MISSING_CODE, 0], dtype=np.int64), (True,), False),
        "m": Texts(["p", "q"]),
    }
    rows = plain_rows(block)
    assert rows == [{"z": 1, "a": False, "m": "p"}, {"z": 2, "a": True, "m": "q"}]
    assert [list(r) for r in rows] == [["z", "a", "m"]] * 2
    assert plain_rows({}) == []
