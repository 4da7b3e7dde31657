"""The lab's comparisons as rich tables for the terminal."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.table import Table

from halfclose.lab.compare import Comparison, Outcome, ranking
from halfclose.lab.config import LabConfig
from halfclose.lab.figures import RunFigures
from halfclose.report.lab import RANKING_HEADS, RANKING_NOTE, ranking_line, verbatim_lines

__all__ = ["ROWS", "TABLE_COLUMNS", "comparison_table", "comparison_tables", "config_line", "ranking_table"]


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
    ("client-closed conns, final ACK lost", lambda f: _num(f.wire.client_close_unacked)),
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


#: At most this many strategies side by side in one terminal table (more are split into several).
TABLE_COLUMNS = 6


def comparison_table(comparison: Comparison, outcomes: Sequence[Outcome] | None = None) -> Table:
    """Remedies as columns (*outcomes*, default all of them), figures as rows; skipped remedies say why."""
    shown = comparison.outcomes if outcomes is None else tuple(outcomes)
    table = Table(title=config_line(comparison.config), title_justify="left")
    table.add_column("", no_wrap=True)
    for outcome in shown:
        table.add_column(outcome.remedy.name, justify="right")
    for label, show in ROWS:
        cells = [show(o.figures) if o.figures is not None else "skipped" for o in shown]
        table.add_row(label, *cells)
    if any(o.result is not None and o.result.verbatim is not None for o in shown):
        table.add_row("report's rules: refused by the kernel", *[_refused(o) for o in shown])
        table.add_row("report's rules: app packets, mark overwritten", *[_overwritten(o) for o in shown])
    notes = [line for o in shown for line in verbatim_lines(o)]
    notes += [f"{o.remedy.name} skipped: {o.skipped}" for o in shown if not o.ran()]
    if notes:
        table.caption = "\n".join(notes)
    return table


def comparison_tables(comparison: Comparison) -> list[Table]:
    """:func:`comparison_table` for at most :data:`TABLE_COLUMNS` remedies at a time."""
    outcomes = comparison.outcomes
    return [comparison_table(comparison, outcomes[i:i + TABLE_COLUMNS])
            for i in range(0, max(len(outcomes), 1), TABLE_COLUMNS)]


def _refused(outcome: Outcome) -> str:
    v = outcome.result.verbatim if outcome.result is not None else None
    if v is None:
        return "-"
    # The chain and the match the kernel refused ("INPUT -m owner").
    return ", ".join(" ".join(r.command.split()[4:7]) for r in v.refused) or "none"


def _overwritten(outcome: Outcome) -> str:
    v = outcome.result.verbatim if outcome.result is not None else None
    return "-" if v is None else f"{v.marks_overwritten} of {v.app_packets}"


def ranking_table(comparison: Comparison) -> Table:
    """The remedies that ran, least waste left first, with what each takes to deploy."""
    table = Table(title="ranked by the waste left (then by what deploying takes)", title_justify="left",
                  caption=RANKING_NOTE, caption_justify="left")
    for i, head in enumerate(RANKING_HEADS):
        text = i in (1, len(RANKING_HEADS) - 1)
        table.add_column(head, justify="left" if text else "right", no_wrap=True)
    for rank, outcome in enumerate(ranking(comparison.outcomes), 1):
        table.add_row(*ranking_line(rank, outcome))
    return table
