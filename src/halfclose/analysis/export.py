"""Writing an :class:`~halfclose.analysis.Analysis`: JSON document, connection table, profile.

The JSON schema (``schema`` = :data:`SCHEMA`) is documented field by field in docs/analyze.md;
its top-level keys are ``schema, summary, connections, findings, servers, dns, issues``.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import sys
from pathlib import Path
from typing import IO, Any

from halfclose.analysis.engine import Analysis
from halfclose.analysis.remedies import remedies_for
from halfclose.analysis.tcp import Connection
from halfclose.capture.reader import CaptureIssue
from halfclose.errors import EnvironmentProblem, UsageError

__all__ = ["CONNECTION_FIELDS", "SCHEMA", "to_document", "write_connections", "write_json", "write_profile"]

SCHEMA = "halfclose.analyze/1"

#: Column order of ``--conns`` tables: the :class:`Connection` fields.
CONNECTION_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Connection))


def _plain(value: object) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _capture_issue(issue: CaptureIssue) -> dict[str, Any]:
    return {"source": "capture", **_plain(issue)}


def to_document(result: Analysis) -> dict[str, Any]:
    """The JSON document as plain Python values (dicts, lists, str, int, float, bool, None)."""
    dns = result.dns
    return {
        "schema": SCHEMA,
        "summary": _plain(result.summary),
        "connections": _connection_dicts(result),
        "findings": [{**_plain(f), "remedies": list(remedies_for(str(f.kind)))} for f in result.findings],
        "servers": [_plain(s) for s in result.servers],
        "dns": {
            "query_packets": dns.query_packets,
            "response_packets": dns.response_packets,
            "redundant": dns.redundant,
            "within_ttl": dns.within_ttl,
            "saved_by_ttl_floor": {str(k): v for k, v in dns.saved_by_ttl_floor.items()},
            "exchanges": [_plain(e) for e in dns.exchanges],
        },
        "issues": [_capture_issue(i) for i in result.capture_issues]
        + [{"source": "analysis", **_plain(i)} for i in result.issues],
    }


def _open_out(path: str) -> IO[str]:
    try:
        return open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write {path}: {exc.strerror}: choose a writable path") from exc


def write_json(result: Analysis, path: str) -> None:
    """Write the JSON document to *path* (``-`` for standard output); indented up to 2,000
    connections, compact above."""
    doc = to_document(result)
    # Indented for people when small; compact (and several times faster to write) when large.
    indent = 1 if len(result.connections) <= 2000 else None
    text = json.dumps(doc, indent=indent) + "\n"  # dumps: one C-encoded string, unlike dump's chunks
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with _open_out(path) as fh:
        fh.write(text)


def _columns(result: Analysis) -> dict[str, list[Any]]:
    return result.connections.columns()


def _connection_dicts(result: Analysis) -> list[dict[str, Any]]:
    cols = _columns(result)
    names = list(cols)
    return [dict(zip(names, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def write_connections(result: Analysis, path: str) -> None:
    """Write connection records as CSV (``.csv``) or Parquet (``.parquet``/``.pq``)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        with _open_out(path) as fh:
            cols = _columns(result)
            w = csv.writer(fh)
            w.writerow(list(cols))
            w.writerows(zip(*cols.values(), strict=True))
        return
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise EnvironmentProblem(
                "writing Parquet needs pyarrow: install it with 'pip install pyarrow' or use a .csv name"
            ) from exc
        table = pa.Table.from_pydict(_columns(result), schema=_arrow_schema(pa))
        try:
            pq.write_table(table, path)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot write {path}: {exc}") from exc
        return
    raise UsageError(f"--conns {path}: unknown table format {suffix or '(none)'}: name it .csv or .parquet")


def _arrow_schema(pa: Any) -> Any:
    types = {
        int: pa.int64(),
        "int | None": pa.int64(),
        str: pa.string(),
        "str | None": pa.string(),
    }
    cols = []
    for f in dataclasses.fields(Connection):
        t = str(f.type)
        if t in ("int", "int | None"):
            cols.append(pa.field(f.name, types["int | None"]))
        else:
            cols.append(pa.field(f.name, types[str]))
    return pa.schema(cols)


def write_profile(result: Analysis, path: str) -> None:
    """Write ``{server name: idle timeout in seconds}`` as JSON (``-`` for standard output)."""
    body = json.dumps(result.profile(), indent=1, sort_keys=True) + "\n"
    if path == "-":
        sys.stdout.write(body)
        return
    with _open_out(path) as fh:
        fh.write(body)
