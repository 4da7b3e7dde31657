"""A block of records held column-wise, one column per declared field (pure).

The connection table and the DNS exchanges hand their records to the writers as a
:data:`Block`: per field, in declared order, an :class:`Ints` (int64 values), a :class:`Coded`
(indexes into a table of values, each distinct value made once) or a :class:`Texts` (one string
per record). The connection tables (CSV, Parquet) and the JSON document's lists
(:func:`plain_rows`) are made from a block without building a record object per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from halfclose.analysis._common import MISSING_CODE, MISSING_INT

__all__ = ["Block", "Coded", "Column", "Ints", "Texts", "plain_rows", "plain_values"]

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Ints:
    """int64 values; with *optional*, :data:`~halfclose.analysis._common.MISSING_INT` stands for none."""

    values: I64
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Coded:
    """Indexes into *table* (plain values: str, int, float, bool, None; with *tuples*, tuples of
    them); :data:`~halfclose.analysis._common.MISSING_CODE` (-1) stands for *missing*."""

    codes: I64
    table: Sequence[Any]
    missing: Any = None
    tuples: bool = False


@dataclass(frozen=True, slots=True)
class Texts:
    """One string per record."""

    texts: list[str]


Column = Ints | Coded | Texts
#: Field name -> its column, in declared order; every column holds the same records.
Block = dict[str, Column]


def plain_values(col: Column) -> list[Any]:
    """The column's values as plain Python values (None for missing, tuples as lists)."""
    if isinstance(col, Texts):
        return col.texts
    if isinstance(col, Ints):
        values: list[Any] = col.values.tolist()
        if col.optional:
            for i in np.flatnonzero(col.values == MISSING_INT).tolist():
                values[i] = None
        return values
    table, missing = col.table, col.missing
    codes = col.codes.tolist()
    if col.tuples:
        return [list(missing if c == MISSING_CODE else table[c]) for c in codes]
    if len(table) > 4 * len(codes):
        return [missing if c == MISSING_CODE else table[c] for c in codes]
    # a small table: numpy spreads its values (object references) over the rows, MISSING_CODE
    # picking the missing value at the end
    values_ = np.empty(len(table) + 1, dtype=object)
    for k, v in enumerate(table):
        values_[k] = v
    values_[MISSING_CODE] = missing
    out: list[Any] = values_[col.codes].tolist()
    return out


def plain_rows(block: Block) -> list[dict[str, Any]]:
    """One dict per record, fields in the block's order."""
    names = list(block)
    return [dict(zip(names, row, strict=True)) for row in zip(*(plain_values(c) for c in block.values()), strict=True)]
