"""``halfclose query``: SQL over a dataset written by ``analyze --dataset``, and canned questions."""

from __future__ import annotations

import argparse
import os
import sys

from halfclose.errors import ExitStatus, UsageError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halfclose query``."""
    parser.add_argument("dataset", metavar="DIR", help="the dataset folder (or fsspec URL)")
    parser.add_argument(
        "sql", nargs="?", metavar="SQL",
        help="a DuckDB query over the views connections, findings, dns, servers, captures",
    )
    canned = parser.add_mutually_exclusive_group()
    canned.add_argument("--servers", action="store_true", help="idle timeouts per server across the fleet, with spread")
    canned.add_argument("--stale", action="store_true", help="stale reuse by server, label and day")
    canned.add_argument("--dns", action="store_true", help="DNS queries a TTL floor would have saved, by label and day")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output (default table)")


def run(args: argparse.Namespace) -> int:
    """Run the query and print its rows."""
    from halfclose.fleet.query import CANNED, run_query
    from halfclose.report.fleet import render_rows

    chosen = [name for name in CANNED if getattr(args, name)]
    if bool(chosen) == bool(args.sql):
        raise UsageError("give either SQL or one of --servers, --stale, --dns")
    sql = CANNED[chosen[0]] if chosen else args.sql
    rows = run_query(args.dataset, sql)
    try:
        render_rows(rows.columns, rows.rows, args.format, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (head, less) had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return int(ExitStatus.OK)
