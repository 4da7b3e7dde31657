"""Each record kind declared once: its fields with type, enum, unit, missing value and doc line.

A record class (a frozen, slotted, keyword-only dataclass) declares every field with
:func:`column`: the annotation gives the type (``int``, ``int | None``, ``str``, an enum, a tuple
...), the metadata the unit, the doc line and, for the connection table, how the column is stored.
:func:`fields_of` turns the class into :class:`FieldSpec` rows; the column decoders, the CSV,
Parquet and JSON schemas and the field tables of docs/analyze.md are derived from those rows
(a test renders the tables with :func:`markdown_table` and compares them with the docs).

Enums are string enums (the text is what JSON and CSV carry); each member has a named integer
:attr:`CodedEnum.code`, its position in the class, which is what numpy columns hold
(:data:`~halfclose.analysis._common.MISSING_CODE`, -1, when absent).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from halfclose.analysis._common import MISSING_CODE, MISSING_INT

__all__ = [
    "CodedEnum",
    "FieldSpec",
    "Kind",
    "Store",
    "column",
    "fields_of",
    "markdown_table",
]


class CodedEnum(enum.StrEnum):
    """A string enum whose members also have a named integer code (their declaration order)."""

    @property
    def code(self) -> int:
        """This member's integer code (what numpy columns store)."""
        return _codes(type(self))[self]

    @classmethod
    def by_code(cls, code: int) -> Self | None:
        """The member with this code; None for :data:`MISSING_CODE`."""
        return None if code == MISSING_CODE else list(cls)[code]

    @classmethod
    def texts(cls) -> tuple[str, ...]:
        """The members' text values, indexed by code (the same tuple at every call)."""
        return _texts(cls)


@functools.cache
def _codes(cls: type[CodedEnum]) -> Mapping[CodedEnum, int]:
    return {m: k for k, m in enumerate(cls)}


@functools.cache
def _texts(cls: type[CodedEnum]) -> tuple[str, ...]:
    return tuple(m.value for m in cls)


@enum.unique
class Kind(enum.Enum):
    """A field's value type."""

    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "string"
    ENUM = "enum"
    INTS = "list of int"
    STRS = "list of string"
    COUNTS = "object of int"


@enum.unique
class Store(enum.Enum):
    """How a column of the connection table holds a field (other records hold plain values)."""

    VALUE = "value"  # int64 values, MISSING_INT for none
    CODE = "code"  # the enum member's code, MISSING_CODE for none
    ADDRESS = "address"  # index into the table's addresses
    NAME = "name"  # index into the table's names, MISSING_CODE for none
    UID = "uid"  # the table's uid array
    HISTORY = "history"  # the table's history buffer


_META = "halfclose.field"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Meta:
    doc: str
    unit: str
    store: Store


def column(doc: str, *, unit: str = "", store: Store = Store.VALUE) -> Any:
    """Declare a record field: its doc line, unit (``ns``, ``s``, ``bytes``, ...) and storage."""
    return dataclasses.field(metadata={_META: _Meta(doc=doc, unit=unit, store=store)})


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSpec:
    """One declared field.

    Fields:
        name: the field's name (the JSON key, the CSV and Parquet column).
        kind: its value type; enum: the enum class when kind is ENUM.
        optional: whether it may be missing (None in Python and JSON, empty in CSV, null in Parquet).
        unit: ``ns``, ``s``, ``bytes``, ... or empty.
        store: how the connection table's columns hold it.
        doc: one line for the docs.
    """

    name: str
    kind: Kind
    enum: type[CodedEnum] | None
    optional: bool
    unit: str
    store: Store
    doc: str

    @property
    def missing(self) -> int | None:
        """The marker of a missing value in this field's numpy column (None: never missing)."""
        if not self.optional:
            return None
        return MISSING_CODE if self.store in (Store.CODE, Store.NAME) else MISSING_INT

    @property
    def type_text(self) -> str:
        """The type as the docs show it, e.g. ``int (ns), optional`` or ``one of a, b``."""
        if self.enum is not None:
            text = "one of " + ", ".join(f"`{v}`" for v in self.enum.texts())
        else:
            text = self.kind.value + (f" ({self.unit})" if self.unit else "")
        return text + (", optional" if self.optional else "")

    def arrow_type(self, pa: Any) -> Any:
        """The pyarrow type of this field (*pa* is the pyarrow module)."""
        simple: dict[Kind, Callable[[], Any]] = {
            Kind.INT: pa.int64, Kind.FLOAT: pa.float64, Kind.BOOL: pa.bool_, Kind.STR: pa.string,
            Kind.ENUM: pa.string,
        }  # fmt: skip
        if self.kind is Kind.INTS:
            return pa.list_(pa.int64())
        if self.kind is Kind.STRS:
            return pa.list_(pa.string())
        if self.kind is Kind.COUNTS:
            return pa.map_(pa.string(), pa.int64())
        return simple[self.kind]()


_SCALARS: dict[Any, Kind] = {int: Kind.INT, float: Kind.FLOAT, bool: Kind.BOOL, str: Kind.STR}


def _kind(tp: Any) -> tuple[Kind, type[CodedEnum] | None, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        kind, en, _ = _kind(inner)
        return kind, en, True
    if isinstance(tp, type) and issubclass(tp, CodedEnum):
        return Kind.ENUM, tp, False
    if typing.get_origin(tp) is dict:
        return Kind.COUNTS, None, False
    if typing.get_origin(tp) is tuple and args[-1] is Ellipsis:
        return (Kind.INTS if args[0] is int else Kind.STRS), None, False
    return _SCALARS[tp], None, False


@functools.cache
def fields_of(cls: type) -> tuple[FieldSpec, ...]:
    """The declared fields of record class *cls*, in order (fields without :func:`column`
    metadata are not part of the declared table)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        kind, en, optional = _kind(hints[f.name])
        out.append(
            FieldSpec(name=f.name, kind=kind, enum=en, optional=optional, unit=meta.unit, store=meta.store,
                      doc=meta.doc)
        )  # fmt: skip
    return tuple(out)


def markdown_table(specs: tuple[FieldSpec, ...]) -> str:
    """The docs' field table: one row per field (name, type, meaning)."""
    lines = ["| field | type | meaning |", "|---|---|---|"]
    lines += [f"| `{s.name}` | {s.type_text} | {s.doc} |" for s in specs]
    return "\n".join(lines) + "\n"
