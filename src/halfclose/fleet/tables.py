"""One capture set's analysis to the dataset's Arrow tables (pure: values in, tables out)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from halfclose.fleet._engine import SetAnalysis
from halfclose.fleet.schema import FLEET_COLUMNS, TABLES, arrow_schema, arrow_type
from halfclose.fleet.sets import Labels

__all__ = ["SetContext", "set_date", "set_tables"]

_FINDING_KEYS = ("kind", "ts_ns", "uids", "server")


@dataclass(frozen=True, slots=True, kw_only=True)
class SetContext:
    """What every row of one capture set carries besides its record."""

    run_id: str
    set_id: str
    set_name: str
    files: tuple[str, ...]
    size: int
    labels: Labels
    date: dt.date


def set_date(first_ts_ns: int | None) -> dt.date:
    """The UTC day of a first packet (1970-01-01 when there is none)."""
    return dt.datetime.fromtimestamp((first_ts_ns or 0) / 1e9, tz=dt.UTC).date()


def _fleet(ctx: SetContext, n: int) -> dict[str, list[Any]]:
    labels = list(ctx.labels.items)
    values: dict[str, Any] = {
        "run_id": ctx.run_id, "capture_set": ctx.set_id, "label": ctx.labels.text, "labels": labels, "date": ctx.date,
    }  # fmt: skip
    return {c.name: [values[c.name]] * n for c in FLEET_COLUMNS}


def _table(name: str, ctx: SetContext, rows: Sequence[Mapping[str, Any]]) -> Any:
    import pyarrow as pa

    cols = TABLES[name].columns
    data = _fleet(ctx, len(rows))
    for c in cols:
        data[c.name] = [r.get(c.name) for r in rows]
    return pa.Table.from_pydict(data, schema=arrow_schema((*FLEET_COLUMNS, *cols)))


def _finding_row(f: Mapping[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in f.items() if k not in (*_FINDING_KEYS, "remedies")}
    if set(rest) == {"evidence"} and isinstance(rest["evidence"], dict):
        rest = rest["evidence"]
    row = {k: f.get(k) for k in _FINDING_KEYS}
    row["remedies"] = list(f.get("remedies", ()))
    row["evidence"] = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return row


def _connections(ctx: SetContext, analysis: SetAnalysis) -> Any:
    import pyarrow as pa

    conns = analysis.connections
    n = conns.num_rows
    fleet = _fleet(ctx, n)
    files = [ctx.files[i] if 0 <= i < len(ctx.files) else None for i in conns.column("file_index").to_pylist()]
    front = [pa.array(fleet[c.name], type=arrow_type(c.type)) for c in FLEET_COLUMNS]
    names = [c.name for c in FLEET_COLUMNS]
    (file_col,) = TABLES["connections"].columns
    front.append(pa.array(files, type=arrow_type(file_col.type)))
    names.append(file_col.name)
    return pa.Table.from_arrays([*front, *conns.columns], names=[*names, *conns.column_names])


def set_tables(ctx: SetContext, analysis: SetAnalysis) -> dict[str, Any]:
    """The five tables (name -> pyarrow Table) of one analysed capture set."""
    summary = dict(analysis.summary)
    summary["dns_saved_by_ttl_floor"] = sorted((str(k), int(v)) for k, v in summary["dns_saved_by_ttl_floor"].items())
    capture = {
        **summary,
        "set_name": ctx.set_name,
        "files": list(ctx.files),
        "bytes": ctx.size,
        "first_ts_ns": analysis.first_ts_ns,
        "last_ts_ns": analysis.last_ts_ns,
        "capture_issues": list(analysis.capture_issues),
    }
    return {
        "connections": _connections(ctx, analysis),
        "findings": _table("findings", ctx, [_finding_row(f) for f in analysis.findings]),
        "dns": _table("dns", ctx, analysis.dns),
        "servers": _table("servers", ctx, analysis.servers),
        "captures": _table("captures", ctx, [capture]),
    }
