"""What ``lab matrix`` says: progress lines, and one terminal table per figure (rows clients, columns servers)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from halfclose.lab.config import ClientKind, ServerKind
from halfclose.lab.matrix import FIGURES, Cell, Matrix, Value
from halfclose.report.terminal import config_line

__all__ = ["LABELS", "Label", "cell_line", "figure_text", "heading", "matrix_tables", "start_line"]

@dataclass(frozen=True, slots=True, kw_only=True)
class Label:
    """How a figure is named: as a table's or chart's title, in a progress line, and its unit."""

    title: str
    brief: str
    unit: str = ""


#: Figure key -> its names.
LABELS: dict[str, Label] = {
    "stale_writes": Label(title="connections with payload written after a server FIN", brief="stale writes"),
    "failed_requests": Label(title="requests that failed in the app", brief="failed"),
    "extra_rtts_per_post_idle_request": Label(title="extra round trips per post-idle request (median)",
                                              brief="extra per post-idle request", unit=" RTT"),
    "dns_queries_per_request": Label(title="DNS queries per request", brief="DNS queries per request"),
    "server_fin_to_gone_ms": Label(title="server's FIN until the connection is gone (median)",
                                   brief="server FIN -> gone", unit=" ms"),
    "server_close": Label(title="how the server closed first (record, FIN, RST), Keep-Alive header",
                          brief="server closed with"),
}


def figure_text(key: str, value: Value) -> str:
    """One figure's value as a cell shows it."""
    if value is None:
        return "-"
    unit = LABELS[key].unit
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if unit == " ms" else f"{value:.2f}{unit}"
    return f"{value}{unit}"


def start_line(number: int, total: int, server: ServerKind, client: ClientKind) -> str:
    """The progress line before a pair runs."""
    return f"[{number}/{total}] {client.value} -> {server.value} ..."


def cell_line(number: int, total: int, cell: Cell) -> str:
    """The progress line once a pair ran or was skipped."""
    head = f"[{number}/{total}] {cell.client.value} -> {cell.server.value}"
    if not cell.ran():
        return f"{head}: skipped: {cell.skipped}"
    values = cell.values()
    return head + ": " + ", ".join(f"{LABELS[f.key].brief} {figure_text(f.key, values[f.key])}" for f in FIGURES)


def heading(matrix: Matrix) -> str:
    """The line above the tables: the workload and network every pair ran."""
    ran = sum(c.ran() for c in matrix.cells)
    return (f"{config_line(matrix.config, server=False)}; {ran} of {len(matrix.cells)} pairs ran "
            "(rows clients, columns servers)")


def matrix_tables(matrix: Matrix) -> list[Table]:
    """One table per figure, clients as rows and servers as columns; the last names skipped pairs."""
    tables = []
    for figure in FIGURES:
        table = Table(title=LABELS[figure.key].title, title_justify="left", min_width=72)
        table.add_column("client \\ server")
        for server in matrix.servers:
            table.add_column(server.value, justify="right")
        for client in matrix.clients:
            cells = [matrix.cell(server, client) for server in matrix.servers]
            table.add_row(client.value, *[
                figure_text(figure.key, c.values()[figure.key]) if c.ran() else "skipped" for c in cells
            ])
        tables.append(table)
    skipped = [c for c in matrix.cells if not c.ran()]
    if skipped and tables:
        tables[-1].caption = "\n".join(f"{c.client.value} -> {c.server.value} skipped: {c.skipped}" for c in skipped)
        tables[-1].caption_justify = "left"
    return tables
