"""The terminal summary of an analysis (rich tables)."""

from __future__ import annotations

import collections
import itertools
import operator

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from halfclose.analysis import Analysis, StaleReuse
from halfclose.analysis.remedies import REDUNDANT_DNS, best_remedy

__all__ = ["best_remedy_sentence", "render"]


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.0f} ms"


def _s(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e9:.3f} s"


def best_remedy_sentence(result: Analysis) -> str:
    """The headline's last sentence: the remedy that would have removed the most findings ("" for none)."""
    counts: dict[str, int] = {}
    for kind, n in collections.Counter(map(operator.attrgetter("kind"), result.findings)).items():
        counts[str(kind)] = n
    counts[REDUNDANT_DNS] = result.summary.dns_redundant
    best = best_remedy(counts)
    if best is None:
        return ""
    name, removed = best
    total = sum(counts.values())
    return (f" Best remedy for this capture: {name} (it would have removed {removed} of {total} findings and "
            "redundant DNS queries; compare them with halfclose lab compare --strategies all).")


def render(result: Analysis, console: Console, *, limit: int = 10) -> None:
    """Print the headline, the counts, the servers' idle timeouts, stale reuses and DNS."""
    s = result.summary
    console.print(Panel(escape(s.headline + best_remedy_sentence(result)), title="halfclose analyze", expand=False))

    counts = Table(title="Summary", show_header=False)
    counts.add_column("what")
    counts.add_column("count", justify="right")
    rows: list[tuple[str, object]] = [
        ("packets (TCP/UDP)", s.packets),
        ("TCP connections", s.tcp_connections),
        ("server closed first (FIN)", s.server_closed_first),
        ("client closed first (FIN)", s.client_closed_first),
        ("first close was a RST", s.reset_first),
        ("client wrote after the server's FIN", s.stale_reuse),
        ("  ... retried on a new connection", s.stale_reuse_replaced),
        ("  ... time lost", _ms(s.wasted_ns) if s.stale_reuse_replaced else "-"),
        ("median CLOSE_WAIT of server-closed", _s(s.close_wait_median_ns)),
        ("FIN retransmissions", s.fin_retransmits),
        ("DNS queries", s.dns_queries),
        ("DNS queries redundant / within TTL", f"{s.dns_redundant} / {s.dns_within_ttl}"),
        (
            "DNS queries saved by TTL floor",
            ", ".join(f"{k} s: {v}" for k, v in s.dns_saved_by_ttl_floor.items()) or "-",
        ),
        ("input issues", s.issues),
    ]
    for name, value in rows:
        counts.add_row(name, str(value))
    console.print(counts)

    if result.servers:
        t = Table(title="Server idle timeouts (from server-first FINs)")
        for col in ("server", "address", "timeout", "samples", "min", "max", "spread"):
            text = col in ("server", "address")
            t.add_column(col, justify="left" if text else "right", overflow="fold" if text else "ellipsis")
        for sv in result.servers[:limit]:
            t.add_row(
                escape(sv.server), escape(sv.address), f"{sv.idle_timeout_s:.3f} s", str(sv.samples), f"{sv.min_s:.3f}",
                f"{sv.max_s:.3f}", f"{sv.spread_s:.3f}",
            )
        if len(result.servers) > limit:
            t.caption = f"{len(result.servers) - limit} more in --json"
        console.print(t)

    stale_count = operator.countOf(map(type, result.findings), StaleReuse)  # (no class derives from it)
    stale = list(itertools.islice((f for f in result.findings if type(f) is StaleReuse), limit))
    if stale:
        t = Table(title="Requests written into half-closed connections")
        for col in ("server", "after FIN", "outcome", "lost", "RTTs", "DNS", "connection"):
            t.add_column(col, overflow="fold", no_wrap=col not in ("server", "connection"))
        for f in stale:
            t.add_row(
                escape(f.server), _s(f.write_after_fin_ns), f.outcome.value, _ms(f.wasted_ns),
                "-" if f.wasted_rtts is None else str(f.wasted_rtts), str(f.dns_lookups), f.uids[0],
            )
        if stale_count > limit:
            t.caption = f"{stale_count - limit} more in --json"
        console.print(t)
