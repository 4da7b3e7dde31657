"""Queries over a dataset with DuckDB (embedded): one view per table, and the canned questions.

Each view reads exactly the files the committed runs list (``read_parquet([...],
union_by_name=true)``), so a run still being written, or one that was killed, is never seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from halfclose.errors import EnvironmentProblem, InputError, UsageError
from halfclose.fleet.dataset import Dataset
from halfclose.fleet.schema import TABLES

__all__ = ["CANNED", "TOP_SERVERS", "Rows", "connect", "fleet_figures", "run_query"]

_DAY = "CAST(make_timestamp(ts_ns // 1000) AS DATE)"

#: The questions people ask first, by option name.
CANNED: dict[str, str] = {
    # Idle timeouts per server across the fleet: per-set medians summarised, with their spread.
    "servers": """
        SELECT server,
               count(DISTINCT capture_set) AS sets,
               count(DISTINCT label) AS labels,
               sum(samples) AS samples,
               round(quantile_cont(idle_timeout_s, 0.5), 3) AS idle_timeout_s,
               round(min(idle_timeout_s), 3) AS set_min_s,
               round(max(idle_timeout_s), 3) AS set_max_s,
               round(max(idle_timeout_s) - min(idle_timeout_s), 3) AS spread_s,
               round(min(min_s), 3) AS min_s,
               round(max(max_s), 3) AS max_s
        FROM servers
        GROUP BY server
        ORDER BY samples DESC, server
    """,
    # Stale reuse by server, label and day (UTC, of the stale write).
    "stale": f"""
        SELECT server, label, {_DAY} AS day,
               count(*) AS stale_reuse,
               count(evidence->>'$.replacement_uid') AS replaced,
               round(sum(CAST(evidence->>'$.wasted_ns' AS BIGINT)) / 1e6, 1) AS wasted_ms,
               round(median(CAST(evidence->>'$.wasted_rtts' AS DOUBLE)), 2) AS wasted_rtts_median,
               sum(CAST(evidence->>'$.dns_lookups' AS BIGINT)) AS dns_lookups
        FROM findings
        WHERE kind = 'stale_reuse'
        GROUP BY ALL
        ORDER BY day, stale_reuse DESC, server, label
    """,
    # DNS queries a TTL floor would have saved, by label and day (of the capture set).
    "dns": """
        SELECT label, date AS day,
               sum(dns_queries) AS queries,
               sum(dns_redundant) AS redundant,
               sum(dns_within_ttl) AS within_ttl,
               sum(dns_saved_by_ttl_floor['60']) AS saved_floor_60s,
               sum(dns_saved_by_ttl_floor['300']) AS saved_floor_300s,
               sum(dns_saved_by_ttl_floor['600']) AS saved_floor_600s
        FROM captures
        GROUP BY ALL
        ORDER BY day, label
    """,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rows:
    """A query's result: column names and rows of plain values."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def _sql_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def connect(root: str) -> Any:
    """A DuckDB connection with one view per table of the dataset at *root*.

    Raises:
        InputError: no committed run there.
        EnvironmentProblem: duckdb is not installed.
    """
    try:
        import duckdb
    except ImportError as exc:
        raise EnvironmentProblem("queries need duckdb: install it with pip install 'halfclose[all]'") from exc
    ds = Dataset(root)
    if not ds.manifests():
        raise InputError(
            f"{root}: no analysis run in this dataset: write one with 'halfclose analyze CAPTURES --dataset {root}'"
        )
    con = duckdb.connect()
    prefix = ""
    if not ds.local:
        con.register_filesystem(ds.fs)
        proto = ds.fs.protocol if isinstance(ds.fs.protocol, str) else ds.fs.protocol[0]
        prefix = f"{proto}://"
    for name in TABLES:
        files = [prefix + f for f in ds.files(name)]
        con.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_list(files)}, "
            "union_by_name = true, hive_partitioning = false)"
        )
    return con


def run_query(root: str, sql: str) -> Rows:
    """Run *sql* over the dataset's views.

    Raises:
        UsageError: the SQL is not valid or fails (DuckDB's message).
    """
    import duckdb

    con = connect(root)
    try:
        cur = con.execute(sql)
        columns = tuple(d[0] for d in cur.description or ())
        rows = cur.fetchall()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"the query failed: {first}") from None
    finally:
        con.close()
    return Rows(columns=columns, rows=rows)


_STALE_PER_LABEL = f"""
    SELECT label, {_DAY} AS day, count(*) AS stale_reuse
    FROM findings WHERE kind = 'stale_reuse'
    GROUP BY ALL ORDER BY label, day
"""
#: Servers drawn on the fleet page (those with the most idle-close samples).
TOP_SERVERS = 30
_SERVER_SETS = f"""
    WITH top AS (SELECT server FROM servers GROUP BY server ORDER BY sum(samples) DESC, server LIMIT {TOP_SERVERS})
    SELECT server, label, idle_timeout_s, samples FROM servers
    WHERE server IN (SELECT server FROM top) ORDER BY server, label, capture_set
"""


def fleet_figures(root: str) -> dict[str, Any]:
    """What the fleet page draws: stale reuse per label and day, each server's timeout per set,
    and the numbers of runs and capture sets."""
    con = connect(root)
    try:

        def rows(sql: str) -> Rows:
            cur = con.execute(sql)
            return Rows(columns=tuple(d[0] for d in cur.description or ()), rows=cur.fetchall())

        ((runs, sets),) = rows("SELECT count(DISTINCT run_id), count(*) FROM captures").rows
        ((servers,),) = rows("SELECT count(DISTINCT server) FROM servers").rows
        return {"stale": rows(_STALE_PER_LABEL), "servers": rows(_SERVER_SETS), "runs": int(runs), "sets": int(sets),
                "servers_total": int(servers)}  # fmt: skip
    finally:
        con.close()
