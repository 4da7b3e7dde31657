"""The dataset's tables, declared once: every column's name, type and meaning.

The Arrow schemas (:func:`arrow_schema`), the record conversion in :mod:`halfclose.fleet.tables`
and the field tables of docs/fleet.md (:func:`markdown`, rewritten by
``python -m halfclose.fleet.schema docs/fleet.md``) all come from :data:`TABLES`. The
connections table carries the analysis's connection record as the analysis writes it to Parquet
(docs/analyze.md documents each of those fields); the fleet adds the columns of
:data:`FLEET_COLUMNS` in front of every table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from halfclose.analysis import DnsExchange, ServerTimeout, Summary
from halfclose.analysis.schema import FieldSpec, Kind, fields_of

__all__ = ["FLEET_COLUMNS", "TABLES", "Column", "Table", "arrow_schema", "arrow_type", "markdown"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """One column: ``type`` is one of ``string int64 float64 bool date list<string> list<int64>
    map<string,string> map<string,int64>``; ``doc`` says what it holds and where it comes from."""

    name: str
    type: str
    doc: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """A dataset table: its fleet columns, then its own; ``record`` names the analysis record
    its own columns are read from (the test of this module checks they still exist there)."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    record: str = ""


def _c(name: str, type_: str, doc: str) -> Column:
    return Column(name=name, type=type_, doc=doc)


FLEET_COLUMNS: tuple[Column, ...] = (
    _c("run_id", "string", "the run that wrote the row: its UTC start time and 8 random hex digits"),
    _c("capture_set", "string", "the capture set (16 hex digits from its files' names, sizes and first packet times)"),
    _c("label", "string", "the run's labels, canonical: `key=value` pairs sorted by key, comma-separated ('' without)"),
    _c("labels", "map<string,string>", "the same labels as a map: `labels['host']`"),
    _c("date", "date", "UTC day of the capture set's first packet (the partition's date)"),
)

_CONNECTIONS = Table(
    name="connections",
    doc="one row per TCP connection, as `halfclose analyze --conns` writes it",
    columns=(
        _c("file", "string", "the input file the connection's first packet is in (`first_frame` counts in it)"),
    ),
    record="Connection",
)

_FINDINGS = Table(
    name="findings",
    doc="one row per finding (stale_reuse, silent_half_close, lost_fin_ack)",
    columns=(
        _c("kind", "string", "`stale_reuse`, `silent_half_close` or `lost_fin_ack`"),
        _c("ts_ns", "int64", "when it happened (ns since the epoch): the stale write, the server FIN, "
           "the FIN retransmission"),
        _c("uids", "list<string>", "the connections involved (`connections.uid`; stale_reuse: the stale one, "
           "then the replacement)"),
        _c("server", "string", "the server: its name, else address:port"),
        _c("evidence", "string", "the finding's numbers as a JSON object (`json_extract(evidence, '$.wasted_ns')`); "
           "keys per kind in docs/analyze.md"),
        _c("remedies", "list<string>", "the remedies that would have removed it, named as `halfclose lab compare "
           "--strategies` names them"),
    ),
    record="Finding",
)

_TYPES = {
    Kind.INT: "int64", Kind.FLOAT: "float64", Kind.BOOL: "bool", Kind.STR: "string", Kind.ENUM: "string",
    Kind.INTS: "list<int64>", Kind.STRS: "list<string>", Kind.COUNTS: "map<string,int64>",
}  # fmt: skip


def _declared(record: type) -> tuple[Column, ...]:
    """The columns of an analysis record, from its one declaration (name, type, unit, doc)."""
    def doc(f: FieldSpec) -> str:
        return f.doc + (f" ({f.unit})" if f.unit else "") + ("; null when missing" if f.optional else "")

    return tuple(_c(f.name, _TYPES[f.kind], doc(f)) for f in fields_of(record))


_DNS = Table(
    name="dns",
    doc="one row per DNS exchange (a query and its response; either may be missing)",
    columns=_declared(DnsExchange),
    record="DnsExchange",
)

_SERVERS = Table(
    name="servers",
    doc="one row per server and capture set: its idle timeout inferred from its idle closes",
    columns=_declared(ServerTimeout),
    record="ServerTimeout",
)

_CAPTURES = Table(
    name="captures",
    doc="one row per capture set: its files and the analysis summary",
    columns=(
        _c("set_name", "string", "the set's first file's name"),
        _c("files", "list<string>", "the set's files in the order they were analysed (oldest first)"),
        _c("bytes", "int64", "their size on disk"),
        _c("first_ts_ns", "int64", "the first connection's or DNS exchange's time; null without either"),
        _c("last_ts_ns", "int64", "the last connection packet's or DNS response's time"),
        _c("capture_issues", "list<string>", "problems found reading the files, one line each"),
        *_declared(Summary),
    ),
    record="Summary",
)

#: Every table of the dataset, by name.
TABLES: dict[str, Table] = {t.name: t for t in (_CONNECTIONS, _FINDINGS, _DNS, _SERVERS, _CAPTURES)}


def arrow_type(type_: str) -> Any:
    """The pyarrow type of a declared column type."""
    import pyarrow as pa

    simple = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
              "date": pa.date32()}  # fmt: skip
    if type_ in simple:
        return simple[type_]
    if type_.startswith("list<"):
        return pa.list_(simple[type_[5:-1]])
    key, value = type_[4:-1].split(",")
    return pa.map_(simple[key], simple[value])


def arrow_schema(columns: Sequence[Column]) -> Any:
    """A pyarrow schema of declared columns."""
    import pyarrow as pa

    return pa.schema([pa.field(c.name, arrow_type(c.type)) for c in columns])


def _row(c: Column) -> str:
    return f"| `{c.name}` | `{c.type}` | {c.doc} |"


def markdown() -> str:
    """The field tables of docs/fleet.md."""
    out = ["Columns every table starts with:", "", "| column | type | meaning |", "|---|---|---|"]
    out += [_row(c) for c in FLEET_COLUMNS]
    for t in TABLES.values():
        out += ["", f"### `{t.name}`", "", f"{t.doc[0].upper()}{t.doc[1:]}.", ""]
        out += ["| column | type | meaning |", "|---|---|---|"]
        out += [_row(c) for c in t.columns]
        if t.name == "connections":
            from halfclose.fleet._engine import connection_columns

            fields = ", ".join(f"`{name}`" for name in connection_columns())
            link = "[docs/analyze.md](analyze.md#connection-records-conns-json-connections)"
            out += ["", f"then the connection record's fields, in this order: {fields}; their types and "
                    f"meanings are those of {link}."]  # fmt: skip
    return "\n".join(out) + "\n"


BEGIN, END = "<!-- schema: generated by python -m halfclose.fleet.schema -->", "<!-- schema: end -->"


def rewrite(text: str) -> str:
    """*text* (docs/fleet.md) with the generated part between its markers replaced."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{markdown()}{END}{tail}"


def main(argv: Sequence[str]) -> int:
    """Rewrite the generated tables of the markdown file *argv[0]*."""
    from pathlib import Path

    path = Path(argv[0])
    path.write_text(rewrite(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
