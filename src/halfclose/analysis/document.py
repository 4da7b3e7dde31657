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

import numpy as np
import numpy.typing as npt

from halfclose.analysis._common import MISSING_CODE, MISSING_INT
from halfclose.analysis.dns import DNS_EXCHANGE_FIELDS
from halfclose.analysis.engine import Analysis
from halfclose.analysis.findings import FINDING_FIELDS, Finding, ServerTimeout
from halfclose.analysis.records import Block, Coded, Column, Ints, plain_rows
from halfclose.analysis.remedies import remedies_for
from halfclose.analysis.schema import FieldSpec, Kind, fields_of, markdown_table
from halfclose.analysis.summary import SUMMARY_FIELDS
from halfclose.analysis.tcp import CONN_STATE_RULES, CONNECTION_FIELDS
from halfclose.capture.reader import CaptureIssue

__all__ = [
    "BLOCK_LISTS",
    "CONNECTION_COLUMNS",
    "SCHEMA",
    "BlockList",
    "FindingGroup",
    "connection_dicts",
    "docs_tables",
    "encodable_findings",
    "encodable_servers",
    "exchange_dicts",
    "finding_dicts",
    "finding_groups",
    "plain",
    "server_dicts",
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


I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class FindingGroup:
    """The findings of one kind among a block of findings, column-wise (each finding is laid out
    as its dict of :func:`finding_dicts`: kind, the common fields, evidence, remedies)."""

    rows: I64  # their positions among the block's findings, in order
    kind: str
    common: Block  # ts_ns, uids, server
    evidence: Block  # the kind's own fields, in declared order
    remedies: tuple[str, ...]


def _field_column(spec: FieldSpec, values: list[Any]) -> Column:
    """A record field's values as a column (plain values: None for missing, tuples as lists)."""
    n = len(values)
    if spec.kind is Kind.INT and not spec.optional:
        return Ints(np.fromiter(values, np.int64, n))
    if spec.kind is Kind.INT:
        return Ints(np.fromiter((MISSING_INT if v is None else v for v in values), np.int64, n), optional=True)
    if spec.kind is Kind.BOOL and not spec.optional:
        return Coded(np.fromiter(values, np.bool_, n).astype(np.int64), (False, True))
    if spec.enum is not None:
        codes: dict[Any, int] = {m: k for k, m in enumerate(spec.enum)}
        codes[None] = MISSING_CODE
        return Coded(np.fromiter(map(codes.__getitem__, values), np.int64, n), spec.enum.texts())
    if spec.kind is Kind.STR:  # each distinct text once (servers repeat)
        table = list(dict.fromkeys(values))
        if None in table:
            table.remove(None)
        index: dict[Any, int] = {v: k for k, v in enumerate(table)}
        index[None] = MISSING_CODE
        return Coded(np.fromiter(map(index.__getitem__, values), np.int64, n), table)
    tuples = spec.kind in (Kind.INTS, Kind.STRS)
    return Coded(np.arange(n, dtype=np.int64), values, () if tuples else None, tuples=tuples)


def finding_groups(result: Analysis, rows: slice = slice(None)) -> list[FindingGroup]:
    """The findings (of the block *rows*) by kind, column-wise: the same values as
    :func:`finding_dicts`, without a dict per finding."""
    found = result.findings[rows]
    classes = list(map(type, found))
    kinds = {cls: k for k, cls in enumerate(dict.fromkeys(classes))}
    of_kind = np.fromiter(map(kinds.__getitem__, classes), np.int64, len(classes))
    groups = []
    for cls, k in kinds.items():
        where = np.flatnonzero(of_kind == k)
        records = [found[i] for i in where.tolist()]
        specs = fields_of(cls)
        columns = {s.name: _field_column(s, list(map(operator.attrgetter(s.name), records))) for s in specs}
        lay = _layout(records[0])
        groups.append(
            FindingGroup(rows=where, kind=lay.kind, common={name: columns[name] for name in _COMMON},
                         evidence={name: columns[name] for name in lay.evidence}, remedies=lay.remedies)
        )  # fmt: skip
    return groups


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


def server_dicts(result: Analysis, rows: slice = slice(None)) -> list[dict[str, Any]]:
    """One dict per server idle timeout (of the block *rows*)."""
    return [plain(s) for s in result.servers[rows]]


def encodable_servers(result: Analysis, rows: slice = slice(None)) -> list[ServerTimeout]:
    """The server idle timeouts (of the block *rows*) as they are: orjson writes a record of plain
    fields as the bytes of its dict in :func:`server_dicts`."""
    return list(result.servers[rows])


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
    #: For findings: the same records by kind, column-wise (:func:`finding_groups`).
    groups: Callable[[Analysis, slice], list[FindingGroup]] | None = None


#: The document's long lists: connections, findings, servers, DNS exchanges.
BLOCK_LISTS: tuple[BlockList, ...] = (
    BlockList(path=("connections",), count=lambda r: len(r.connections), block=connection_dicts,
              columns=lambda r, rows: r.connections.block(rows)),
    BlockList(path=("findings",), count=lambda r: len(r.findings), block=finding_dicts,
              encodable=encodable_findings, groups=finding_groups),
    BlockList(path=("servers",), count=lambda r: len(r.servers), block=server_dicts, encodable=encodable_servers),
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
        "servers": server_dicts(result) if blocks else [],
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
