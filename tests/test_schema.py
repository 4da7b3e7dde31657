"""Each record kind declared once: the docs tables, decoders and file schemas agree with it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pyarrow as pa
import pytest

from halfclose.analysis import (
    Connection,
    ConnState,
    DnsExchange,
    LostFinAck,
    ServerTimeout,
    Side,
    SilentHalfClose,
    StaleReuse,
    Summary,
    analyze_batches,
)
from halfclose.analysis._common import MISSING_CODE, MISSING_INT
from halfclose.analysis.document import docs_tables
from halfclose.analysis.schema import Kind, Store, fields_of
from halfclose.analysis.tcp import CONN_STATE_DOC, CONN_STATE_RULES, CONNECTION_FIELDS
from test_engine import stale_scenario

DOCS = Path(__file__).resolve().parents[1] / "docs" / "analyze.md"
BLOCK = re.compile(r"<!-- generated: (?P<name>[^>]+?) -->\n(?P<body>.*?)<!-- end generated -->", re.S)


def test_docs_tables_are_the_declarations() -> None:
    in_docs = {m["name"]: m["body"] for m in BLOCK.finditer(DOCS.read_text())}
    tables = docs_tables()
    assert set(in_docs) == set(tables)
    for name, table in tables.items():
        assert in_docs[name] == table, f"docs/analyze.md '{name}' differs: run scripts/gen-analyze-docs"


@pytest.mark.parametrize("cls", [Connection, DnsExchange, StaleReuse, SilentHalfClose, LostFinAck, ServerTimeout,
                                 Summary])  # fmt: skip
def test_every_field_is_declared_with_a_doc_line(cls: type) -> None:
    specs = fields_of(cls)
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(cls)]
    assert all(s.doc and not s.doc.endswith(".") for s in specs)


def test_connection_decoders_agree_with_each_other() -> None:
    a = analyze_batches(stale_scenario().batches(4))
    cols = a.connections.columns()
    assert list(cols) == [s.name for s in CONNECTION_FIELDS]
    for i, conn in enumerate(a.connections):
        for spec in CONNECTION_FIELDS:
            value = getattr(conn, spec.name)
            plain = value.value if spec.enum is not None and value is not None else value
            assert cols[spec.name][i] == plain, spec.name
            assert (value is None) == (cols[spec.name][i] is None)
            if value is None:
                assert spec.optional


def test_missing_markers_one_per_kind_of_column() -> None:
    for spec in CONNECTION_FIELDS:
        if not spec.optional:
            assert spec.missing is None
        elif spec.store in (Store.CODE, Store.NAME):
            assert spec.missing == MISSING_CODE
        else:
            assert spec.store is Store.VALUE and spec.missing == MISSING_INT


def test_arrow_types_follow_the_declared_kinds() -> None:
    by_kind = {Kind.INT: pa.int64(), Kind.STR: pa.string(), Kind.ENUM: pa.string(), Kind.BOOL: pa.bool_(),
               Kind.FLOAT: pa.float64(), Kind.STRS: pa.list_(pa.string()), Kind.INTS: pa.list_(pa.int64())}  # fmt: skip
    for spec in (*CONNECTION_FIELDS, *fields_of(DnsExchange), *fields_of(StaleReuse)):
        assert spec.arrow_type(pa) == by_kind[spec.kind], spec.name
    assert {s.name: s.kind for s in fields_of(DnsExchange)}["answers"] is Kind.STRS


def test_enum_codes_are_named_and_round_trip() -> None:
    assert [s.code for s in Side] == [0, 1]
    for state in ConnState:
        assert ConnState.by_code(state.code) is state
    assert Side.by_code(MISSING_CODE) is None
    assert set(CONN_STATE_DOC) == set(ConnState)
    assert CONN_STATE_RULES[-1].state is ConnState.OTH  # the default, last (as in Zeek's conn_state())
