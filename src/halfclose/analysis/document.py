"""The JSON document of an :class:`~halfclose.analysis.Analysis` as plain values (pure).

The schema (``schema`` = :data:`SCHEMA`) is documented field by field in docs/analyze.md; its
top-level keys are ``schema, summary, connections, findings, servers, dns, issues``. Each finding
is ``{kind, ts_ns, uids, server, evidence: {its kind's other fields}}``. The writers (JSON, CSV,
Parquet, atomic) are in :mod:`halfclose.report.analysis_files`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from halfclose.analysis.dns import DNS_EXCHANGE_FIELDS
from halfclose.analysis.engine import Analysis
from halfclose.analysis.findings import FINDING_FIELDS, Finding, ServerTimeout
from halfclose.analysis.remedies import remedies_for
from halfclose.analysis.schema import fields_of, markdown_table
from halfclose.analysis.summary import SUMMARY_FIELDS
from halfclose.analysis.tcp import CONN_STATE_RULES, CONNECTION_FIELDS
from halfclose.capture.reader import CaptureIssue

__all__ = ["CONNECTION_COLUMNS", "SCHEMA", "connection_dicts", "docs_tables", "plain", "to_document"]

SCHEMA = "halfclose.analyze/1"

#: Column order of ``--conns`` tables: the :class:`~halfclose.analysis.Connection` fields.
CONNECTION_COLUMNS: tuple[str, ...] = tuple(s.name for s in CONNECTION_FIELDS)

_COMMON = ("ts_ns", "uids", "server")


def plain(value: object) -> Any:
    """*value* as JSON-ready Python values (enums as their text, records as dicts)."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _finding(f: Finding) -> dict[str, Any]:
    own = {k.name: plain(getattr(f, k.name)) for k in dataclasses.fields(f) if k.name not in _COMMON}
    return {
        "kind": f.kind.value,
        **{k: plain(getattr(f, k)) for k in _COMMON},
        "evidence": own,
        "remedies": list(remedies_for(f.kind.value)),
    }


def _capture_issue(issue: CaptureIssue) -> dict[str, Any]:
    return {"source": "capture", **plain(issue)}


def connection_dicts(result: Analysis) -> list[dict[str, Any]]:
    """One dict per connection, fields in declared order."""
    cols = result.connections.columns()
    names = list(cols)
    return [dict(zip(names, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def to_document(result: Analysis) -> dict[str, Any]:
    """The JSON document as plain Python values (dicts, lists, str, int, float, bool, None)."""
    dns = result.dns
    return {
        "schema": SCHEMA,
        "summary": plain(result.summary),
        "connections": connection_dicts(result),
        "findings": [_finding(f) for f in result.findings],
        "servers": [plain(s) for s in result.servers],
        "dns": {
            "query_packets": dns.query_packets,
            "response_packets": dns.response_packets,
            "redundant": dns.redundant,
            "within_ttl": dns.within_ttl,
            "saved_by_ttl_floor": {str(k): v for k, v in dns.saved_by_ttl_floor.items()},
            "exchanges": [plain(e) for e in dns.exchanges],
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
