"""What people read about capture sets and datasets: progress lines, query results, the fleet page."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import IO, Any

__all__ = [
    "fleet_html",
    "render_rows",
    "run_line",
    "set_heading",
    "set_line",
]


def set_heading(name: str, files: int) -> str:
    """The line above one capture set's summary when several are analysed."""
    more = f" and {files - 1} more file{'s' if files > 2 else ''} of its rotation" if files > 1 else ""
    return f"== capture set {name}{more}"


def set_line(outcome: Any) -> str:
    """One line per analysed capture set of a dataset run (*outcome*: a SetOutcome)."""
    if outcome.error:
        return f"halfclose analyze: {outcome.error} (this capture set was left out)"
    n = len(outcome.files)
    files = f"{n} files of one capture" if n > 1 else "1 file"
    return (
        f"{outcome.files[0]} ({files}): {outcome.connections} connections, "
        f"{outcome.packets} packets, {outcome.seconds:.2f} s: {outcome.headline}"
    )


def run_line(run_id: str, where: str | None, sets: int, failed: int) -> str:
    """The last line of a dataset run."""
    if where is None:
        return f"halfclose analyze: nothing was written: none of the {sets} capture sets could be read"
    bad = f"; {failed} left out (above)" if failed else ""
    return f"run {run_id}: {sets - failed} capture set{'s' if sets - failed != 1 else ''} written to {where}{bad}"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    v = _plain(value)
    if v is None:
        return ""
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


def render_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, out: IO[str]) -> None:
    """Query results as a rich table (``table``), CSV (``csv``) or JSON lines of objects (``json``)."""
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(columns)
        w.writerows([_text(v) for v in r] for r in rows)
    elif fmt == "json":
        out.write(json.dumps([dict(zip(columns, map(_plain, r), strict=True)) for r in rows], indent=1) + "\n")
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(*columns, show_lines=False)
        for r in rows:
            table.add_row(*(Text(_text(v)) for v in r))  # Text: brackets in addresses are not markup
        Console(file=out, width=max(80, min(200, 16 * len(columns)))).print(table)
        out.write(f"{len(rows)} row{'s' if len(rows) != 1 else ''}\n")


def fleet_html(title: str, *, stale: Any, servers: Any, runs: int, sets: int, servers_total: int) -> str:
    """The fleet page: stale reuse per day for each label, and the idle timeouts of the servers with
    the most samples, one point per capture set.

    *stale*: Rows of (label, day, stale_reuse); *servers*: Rows of (server, label, idle_timeout_s,
    samples); *servers_total*: servers with a measured idle timeout in all.
    """
    import plotly.graph_objects as go

    from halfclose.report.html import _figures, _page

    fig_stale = go.Figure()
    by_label: dict[str, tuple[list[str], list[int]]] = {}
    for label, day, count in stale.rows:
        xs, ys = by_label.setdefault(label or "(no label)", ([], []))
        xs.append(str(_plain(day)))
        ys.append(int(count))
    for label, (xs, ys) in sorted(by_label.items()):
        fig_stale.add_trace(go.Bar(x=xs, y=ys, name=label))
    fig_stale.update_layout(title="Stale reuse per day (requests written into connections the server had closed)",
                            xaxis_title="day (UTC)", xaxis_type="category", yaxis_title="stale reuses",
                            barmode="group", height=420)  # fmt: skip
    fig_servers = go.Figure()
    by_server: dict[str, tuple[list[float], list[str]]] = {}
    for server, label, idle, samples in servers.rows:
        ys_, texts = by_server.setdefault(server, ([], []))
        ys_.append(float(idle))
        texts.append(f"{label or '(no label)'}: {samples} samples")
    for server, (ys_, texts) in sorted(by_server.items()):
        fig_servers.add_trace(go.Box(y=ys_, name=server, boxpoints="all", text=texts, jitter=0.3))
    shown = f"the {len(by_server)} with most samples of {servers_total}" if len(by_server) < servers_total else "all"
    fig_servers.update_layout(title=f"Server idle timeouts, one point per capture set ({shown})",
                              yaxis_title="seconds", showlegend=False, height=520)  # fmt: skip
    stale_total = sum(int(r[2]) for r in stale.rows)
    intro = (
        f"<p class=\"verdict\">{runs} run{'s' if runs != 1 else ''}, {sets} capture set{'s' if sets != 1 else ''}: "
        f"{stale_total} request{'s' if stale_total != 1 else ''} written into connections their server had "
        f"closed; {servers_total} server{'s' if servers_total != 1 else ''} with a measured idle timeout.</p>"
    )
    return _page(title, intro, _figures([fig_stale, fig_servers]))
