"""The comparison as a rich table for the terminal."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table

from halfclose.lab.compare import Comparison, Metrics

__all__ = ["ROWS", "comparison_table"]


def _num(value: float | int | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value}{unit}"
    return f"{value:.{digits}f}{unit}"


#: (label, how to show a strategy's metrics) in table order.
ROWS: tuple[tuple[str, Callable[[Metrics], str]], ...] = (
    ("post-idle wait for a live connection", lambda m: _num(m.post_idle_wait_ms, " ms")),
    ("  in round trips", lambda m: _num(m.post_idle_wait_rtts)),
    ("post-idle latency median", lambda m: _num(m.post_idle_ms_median, " ms")),
    ("post-idle latency p95", lambda m: _num(m.post_idle_ms_p95, " ms")),
    ("  in round trips (median / p95)",
     lambda m: f"{_num(m.post_idle_rtts_median)} / {_num(m.post_idle_rtts_p95)}"),
    ("  beyond one round trip (median)", lambda m: _num(m.post_idle_beyond_rtt_ms, " ms")),
    ("connections with data in the SYN", lambda m: _num(m.syn_data_conns)),
    ("payload after a server FIN (conns)", lambda m: _num(m.stale_writes)),
    ("connections reset (RST)", lambda m: _num(m.rsts)),
    ("server FIN retransmissions", lambda m: _num(m.server_fin_retransmits)),
    ("server FIN -> gone (median)", lambda m: _num(m.server_linger_ms, " ms")),
    ("TCP connections opened", lambda m: _num(m.tcp_connections)),
    ("DNS queries", lambda m: _num(m.dns_queries)),
    ("packets", lambda m: _num(m.packets)),
    ("payload bytes", lambda m: _num(m.payload_bytes)),
    ("errors the app saw (retried)", lambda m: _num(m.app_retries)),
    ("requests failed", lambda m: _num(m.app_errors)),
    ("handshake RTT (median)", lambda m: _num(m.rtt_ms, " ms", 2)),
)


def comparison_table(comparison: Comparison) -> Table:
    """Strategies as columns, figures as rows; skipped strategies say why."""
    config = comparison.config
    table = Table(
        title=(f"{config.requests} requests, {config.gap_s:g} s apart; idle timeout {config.idle_timeout_s:g} s; "
               f"DNS TTL {config.dns_ttl_s} s; RTT {config.rtt_ms:g} ms; server {config.server.value}"),
        title_justify="left",
    )
    table.add_column("")
    for outcome in comparison.outcomes:
        table.add_column(outcome.strategy.value, justify="right")
    for label, show in ROWS:
        cells = [show(o.metrics) if o.metrics is not None else "skipped" for o in comparison.outcomes]
        table.add_row(label, *cells)
    skipped = [o for o in comparison.outcomes if not o.ran()]
    if skipped:
        table.caption = "; ".join(f"{o.strategy.value} skipped: {o.skipped}" for o in skipped)
    return table
