"""The lab's comparisons as rich tables for the terminal."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table

from halfclose.lab.compare import Comparison
from halfclose.lab.config import LabConfig
from halfclose.lab.figures import RunFigures

__all__ = ["ROWS", "comparison_table", "config_line"]


def _num(value: float | int | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value}{unit}"
    return f"{value:.{digits}f}{unit}"


#: (label, how to show a remedy's figures) in table order.
ROWS: tuple[tuple[str, Callable[[RunFigures], str]], ...] = (
    ("post-idle wait for a live connection", lambda f: _num(f.post_idle_wait_ms, " ms")),
    ("  in round trips", lambda f: _num(f.post_idle_wait_rtts)),
    ("post-idle latency median", lambda f: _num(f.app.median_ms_post_idle, " ms")),
    ("post-idle latency p95", lambda f: _num(f.app.p95_ms_post_idle, " ms")),
    ("  in round trips (median / p95)",
     lambda f: f"{_num(f.post_idle_rtts_median)} / {_num(f.post_idle_rtts_p95)}"),
    ("  beyond one round trip (median)", lambda f: _num(f.post_idle_beyond_rtt_ms, " ms")),
    ("connections with data in the SYN", lambda f: _num(f.syn_data_conns)),
    ("payload after a server FIN (conns)", lambda f: _num(f.wire.stale_writes)),
    ("connections reset (RST)", lambda f: _num(f.wire.rsts)),
    ("server FIN retransmissions", lambda f: _num(f.wire.server_fin_retransmits)),
    ("server FIN -> gone (median)", lambda f: _num(f.wire.server_linger_ms_median, " ms")),
    ("TCP connections opened", lambda f: _num(f.wire.tcp_connections)),
    ("DNS queries", lambda f: _num(f.wire.dns_queries)),
    ("packets", lambda f: _num(f.wire.packets)),
    ("payload bytes", lambda f: _num(f.wire.payload_bytes)),
    ("errors the app saw (retried)", lambda f: _num(f.app.app_retries)),
    ("requests failed", lambda f: _num(f.app.app_errors)),
    ("handshake RTT (median)", lambda f: _num(f.wire.rtt_ms_median, " ms", 2)),
)


def config_line(config: LabConfig, *, server: bool = True) -> str:
    """The workload and network of a comparison, in one line (its tables' title); *server*: name it."""
    return (f"{config.requests} requests, {config.gap_s:g} s apart; idle timeout {config.idle_timeout_s:g} s; "
            f"DNS TTL {config.dns_ttl_s} s; RTT {config.rtt_ms:g} ms"
            + (f"; server {config.server.value}" if server else "")
            + ("; TCP Fast Open" if config.tfo else "") + ("; SYNs with data dropped" if config.drop_syn_data else ""))


def comparison_table(comparison: Comparison) -> Table:
    """Remedies as columns, figures as rows; skipped remedies say why."""
    table = Table(title=config_line(comparison.config), title_justify="left")
    table.add_column("")
    for outcome in comparison.outcomes:
        table.add_column(outcome.remedy.name, justify="right")
    for label, show in ROWS:
        cells = [show(o.figures) if o.figures is not None else "skipped" for o in comparison.outcomes]
        table.add_row(label, *cells)
    skipped = [o for o in comparison.outcomes if not o.ran()]
    if skipped:
        table.caption = "; ".join(f"{o.remedy.name} skipped: {o.skipped}" for o in skipped)
    return table
