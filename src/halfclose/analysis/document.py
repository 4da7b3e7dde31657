"""The JSON document of an :class:`~halfclose.analysis.Analysis` as plain values (pure).

The schema (``schema`` = :data:`SCHEMA`) is documented field by field in docs/analyze.md; its
top-level keys are ``schema, summary, connections, findings, servers, dns, issues``. Each finding
is ``{kind, ts_ns, uids, server, evidence: {its kind's other fields}}``. The writers (JSON, CSV,
Parquet, atomic) are in :mod:`halfclose.report.analysis_files`.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from halfclose.analysis.dns import DNS_EXCHANGE_FIELDS
from halfclose.analysis.engine import Analysis
from halfclose.analysis.findings import FINDING_FIELDS, Finding, ServerTimeout
from halfclose.analysis.records import Block, plain_rows
from halfclose.analysis.remedies import remedies_for
from halfclose.analysis.schema import fields_of, markdown_table
from halfclose.analysis.summary import SUMMARY_FIELDS
from halfclose.analysis.tcp import CONN_STATE_RULES, CONNECTION_FIELDS
from halfclose.capture.reader import CaptureIssue

__all__ = [
    "BLOCK_LISTS",
    "CONNECTION_COLUMNS",
    "SCHEMA",
    "BlockList",
    "connection_dicts",
    "docs_tables",
    "encodable_findings",
    "exchange_dicts",
    "finding_dicts",
    "plain",
    "to_document",
]

SCHEMA = "halfclose.analyze/1"

#: Column order of ``--conns`` tables: the :class:`~halfclose.analysis.Connection` fields.
CONNECTION_COLUMNS: tuple[str, ...] = tuple(s.name for s in CONNECTION_FIELDS)

_COMMON = ("ts_ns", "uids", "server")


_SCALARS = frozenset({str, int, float, bool, type(None)})
#: Per record class met so far: its field names and a getter of their values (``dataclasses.fields``
#: costs more than the values).
_RECORD_FIELDS: dict[type, tuple[tuple[str, ...], Callable[[object], tuple[Any, ...]]]] = {}


def _getter(names: tuple[str, ...]) -> Callable[[object], tuple[Any, ...]]:
    """A getter of the attributes *names* as a tuple (attrgetter gives a bare value for one)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    return lambda value: tuple(getattr(value, name) for name in names)


def plain(value: object) -> Any:
    """*value* as JSON-ready Python values (enums as their text, records as dicts)."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is tuple or kind is list:
        return [v if type(v) in _SCALARS else plain(v) for v in value]  # type: ignore[attr-defined]
    record = _RECORD_FIELDS.get(kind)
    if record is not None:
        names, values = record
        return dict(zip(names, [v if type(v) in _SCALARS else plain(v) for v in values(value)], strict=True))
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = tuple(f.name for f in dataclasses.fields(value))
        _RECORD_FIELDS[kind] = (names, _getter(names))
        return plain(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class _Layout:
    """How one finding class is laid out in the document (worked out once per class)."""

    kind: str
    getter: Callable[[object], tuple[Any, ...]]  # the common fields, then the evidence
    evidence: tuple[str, ...]
    enums: tuple[int, ...]  # positions of enum fields among the evidence
    remedies: tuple[str, ...]
    remedies_list: list[str]  # shared by the encodable findings (never changed)


_LAYOUTS: dict[type, _Layout] = {}


def _layout(f: Finding) -> _Layout:
    cls: type = type(f)
    layout = _LAYOUTS.get(cls)
    if layout is None:
        specs = fields_of(cls)
        names = tuple(s.name for s in specs)
        assert names[: len(_COMMON)] == _COMMON
        evidence = specs[len(_COMMON) :]
        layout = _LAYOUTS[cls] = _Layout(
            kind=f.kind.value, getter=_getter(names), evidence=tuple(s.name for s in evidence),
            enums=tuple(k for k, s in enumerate(evidence) if s.enum is not None),
            remedies=remedies_for(f.kind.value), remedies_list=list(remedies_for(f.kind.value)),
        )  # fmt: skip
    return layout


def _finding(f: Finding) -> dict[str, Any]:
    lay = _layout(f)
    ts_ns, uids, server, *own = lay.getter(f)
    for k in lay.enums:
        if own[k] is not None:
            own[k] = own[k].value
    return {
        "kind": lay.kind,
        "ts_ns": ts_ns,
        "uids": list(uids),
        "server": server,
        "evidence": dict(zip(lay.evidence, own, strict=True)),
        "remedies": list(lay.remedies),
    }


def _encodable_finding(f: Finding) -> dict[str, Any]:
    """:func:`_finding` for orjson: the same bytes, its enums and tuples left as they are (orjson
    writes them as their text and as lists), the remedies' list shared."""
    lay = _layout(f)
    ts_ns, uids, server, *own = lay.getter(f)
    return {
        "kind": lay.kind, "ts_ns": ts_ns, "uids": uids, "server": server,
        "evidence": dict(zip(lay.evidence, own, strict=True)), "remedies": lay.remedies_list,
    }  # fmt: skip


def _capture_issue(issue: CaptureIssue) -> dict[str, Any]:
    return {"source": "capture", **plain(issue)}


def connection_dicts(result: Analysis, rows: slice = slice(None)) -> list[dict[str, Any]]:
    """One dict per connection (of the block *rows*), fields in declared order."""
    return plain_rows(result.connections.block(rows))


def finding_dicts(result: Analysis, rows: slice = slice(None)) -> list[dict[str, Any]]:
    """One dict per finding (of the block *rows*)."""
    return [_finding(f) for f in result.findings[rows]]


def encodable_findings(result: Analysis, rows: slice = slice(None)) -> list[dict[str, Any]]:
    """The findings (of the block *rows*) as values that orjson writes as the bytes it writes for
    :func:`finding_dicts` (no plain values: enums and tuples left as they are, a list shared)."""
    return [_encodable_finding(f) for f in result.findings[rows]]


def exchange_dicts(result: Analysis, rows: slice = slice(None)) -> list[dict[str, Any]]:
    """One dict per DNS exchange (of the block *rows*)."""
    return plain_rows(result.dns.exchange_block(rows))


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockList:
    """A list of the document that a writer may encode block by block (never all in memory):
    *block* gives its dicts; *columns*, for records held column-wise, the same records as a
    :data:`~halfclose.analysis.records.Block` (``plain_rows(columns(r, rows)) == block(r, rows)``)."""

    path: tuple[str, ...]
    count: Callable[[Analysis], int]
    block: Callable[[Analysis, slice], list[dict[str, Any]]]
    columns: Callable[[Analysis, slice], Block] | None = None
    #: The same records as values orjson writes as the bytes of *block*'s dicts, made faster.
    encodable: Callable[[Analysis, slice], list[Any]] | None = None


#: The document's long lists: connections, findings, DNS exchanges.
BLOCK_LISTS: tuple[BlockList, ...] = (
    BlockList(path=("connections",), count=lambda r: len(r.connections), block=connection_dicts,
              columns=lambda r, rows: r.connections.block(rows)),
    BlockList(path=("findings",), count=lambda r: len(r.findings), block=finding_dicts,
              encodable=encodable_findings),
    BlockList(path=("dns", "exchanges"), count=lambda r: len(r.dns.exchanges), block=exchange_dicts,
              columns=lambda r, rows: r.dns.exchange_block(rows)),
)  # fmt: skip


def to_document(result: Analysis, *, blocks: bool = True) -> dict[str, Any]:
    """The JSON document as plain Python values (dicts, lists, str, int, float, bool, None).

    With *blocks* false the lists of :data:`BLOCK_LISTS` are left empty (in their places), for a
    writer that adds them block by block and so never holds them all at once.
    """
    dns = result.dns
    return {
        "schema": SCHEMA,
        "summary": plain(result.summary),
        "connections": connection_dicts(result) if blocks else [],
        "findings": finding_dicts(result) if blocks else [],
        "servers": [plain(s) for s in result.servers],
        "dns": {
            "query_packets": dns.query_packets,
            "response_packets": dns.response_packets,
            "redundant": dns.redundant,
            "within_ttl": dns.within_ttl,
            "saved_by_ttl_floor": {str(k): v for k, v in dns.saved_by_ttl_floor.items()},
            "exchanges": exchange_dicts(result) if blocks else [],
        },
        "issues": [_capture_issue(i) for i in result.capture_issues]
        + [{"source": "analysis", **plain(i)} for i in result.issues],
    }


def docs_tables() -> dict[str, str]:
    """The field tables of docs/analyze.md, made from the declarations (block name -> markdown)."""
    rules = ["| code | when (first rule that applies) |", "|---|---|"]
    rules += [f"| `{r.state.value}` | {r.doc} |" for r in CONN_STATE_RULES]
    common = ("ts_ns", "uids", "server")
    tables = {
        "connection fields": markdown_table(CONNECTION_FIELDS),
        "conn_state rules": "\n".join(rules) + "\n",
        "finding fields": markdown_table(FINDING_FIELDS[next(iter(FINDING_FIELDS))][: len(common)]),
    }
    for kind, specs in FINDING_FIELDS.items():
        tables[f"{kind.value} evidence"] = markdown_table(tuple(s for s in specs if s.name not in common))
    tables["server fields"] = markdown_table(fields_of(ServerTimeout))
    tables["dns exchange fields"] = markdown_table(DNS_EXCHANGE_FIELDS)
    tables["summary fields"] = markdown_table(SUMMARY_FIELDS)
    return tables
