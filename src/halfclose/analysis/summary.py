"""The summary of an analysis: counts over connections, findings and DNS, and the headline.

:func:`summarize` adds up the findings; :func:`summary` adds the connection and DNS
counts; :func:`headline` words the verdict from the same totals.
"""

from __future__ import annotations

import itertools
import operator
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np

from halfclose.analysis.dns import DnsResult
from halfclose.analysis.findings import Finding, LostFinAck, SilentHalfClose, StaleReuse
from halfclose.analysis.schema import FieldSpec, column, fields_of
from halfclose.analysis.tcp import CloseKind, ConnectionTable, Side

__all__ = ["SUMMARY_FIELDS", "FindingTotals", "Summary", "headline", "summarize", "summary"]

_NS = 1_000_000_000
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class FindingTotals:
    """What the findings add up to (medians unrounded)."""

    stale_reuse: int
    stale_reuse_replaced: int
    wasted_ns: int
    wasted_rtts_median: float | None
    dns_lookups_median: float | None
    close_wait_median_ns: int | None
    lost_fin_ack: int


def summarize(findings: Sequence[Finding]) -> FindingTotals:
    """One pass over the findings (each to its kind's list): stale reuses and their cost,
    CLOSE_WAIT, lost FIN ACKs."""
    by_kind: dict[type, list[Finding]] = {StaleReuse: [], SilentHalfClose: [], LostFinAck: []}
    for f in findings:
        by_kind[type(f)].append(f)
    stale = cast("list[StaleReuse]", by_kind[StaleReuse])
    replaced = _present(stale, map(_WASTED, stale))
    rtts = _present(map(_RTTS, replaced))
    waits = _present(map(_CLOSE_WAIT, by_kind[SilentHalfClose]))
    return FindingTotals(
        stale_reuse=len(stale),
        stale_reuse_replaced=len(replaced),
        wasted_ns=sum(f.wasted_ns or 0 for f in replaced),
        wasted_rtts_median=statistics.median(rtts) if rtts else None,
        dns_lookups_median=statistics.median(f.dns_lookups for f in replaced) if replaced else None,
        close_wait_median_ns=int(statistics.median(waits)) if waits else None,
        lost_fin_ack=len(by_kind[LostFinAck]),
    )


def _present(items: Iterable[T], values: Iterable[object] | None = None) -> list[T]:
    """The *items* whose value (of *values*, else the item itself) is not None."""
    items = list(items)
    return list(itertools.compress(items, map(operator.is_not, items if values is None else values,
                                              itertools.repeat(None))))  # fmt: skip


_WASTED = operator.attrgetter("wasted_ns")
_RTTS = operator.attrgetter("wasted_rtts")
_CLOSE_WAIT = operator.attrgetter("close_wait_ns")


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """Counts over the whole input (the JSON ``summary`` object)."""

    packets: int = column("TCP/UDP packets analysed")
    tcp_connections: int = column("connection records")
    server_closed_first: int = column("connections whose responder sent the first close, a FIN")
    client_closed_first: int = column("connections whose originator sent the first close, a FIN")
    reset_first: int = column("connections whose first close was a RST (either side)")
    stale_reuse: int = column("connections the client wrote into after the server's FIN")
    stale_reuse_replaced: int = column("of those, the ones whose retry connection was found")
    wasted_ns: int = column("stale write -> replacement SYN, summed over the replaced ones", unit="ns")
    wasted_rtts_median: float | None = column("the median of the replaced ones' `wasted_rtts`")
    dns_lookups_median: float | None = column("the median of the replaced ones' `dns_lookups`")
    close_wait_median_ns: int | None = column(
        "the median time clients left server-closed connections half open", unit="ns"
    )
    fin_retransmits: int = column("FIN retransmission segments (both sides, all connections)", unit="segments")
    lost_fin_ack: int = column("`lost_fin_ack` findings")
    dns_queries: int = column("DNS query packets (UDP port 53; tshark's `dns.flags.response == 0`)")
    dns_responses: int = column("DNS response packets")
    dns_redundant: int = column("`redundant` DNS exchanges")
    dns_within_ttl: int = column("`within_ttl` DNS exchanges")
    dns_saved_by_ttl_floor: dict[str, int] = column(
        "TTL floor (s, as a string key) -> queries a per-client cache with that floor would have answered"
    )
    issues: int = column("problems found in the input (capture and DNS)")
    encap_undecoded: int = column(
        "IP packets inside an encapsulation that is not decoded (L2TP data, EtherIP, MPLS in IP, GRE of another "
        "kind, a fragmented tunnel packet): counted and skipped, with a warning; never a silent zero",
        unit="packets",
    )
    headline: str = column("one sentence for people")


def summary(
    totals: FindingTotals,
    conns: ConnectionTable,
    dns: DnsResult,
    *,
    packets: int,
    capture_issues: int,
    encap_undecoded: int = 0,
) -> Summary:
    """The summary from the finding totals, the connection table and the DNS result (and the reader's
    count of packets inside undecoded encapsulations)."""
    cc = conns.cols
    by_fin = cc["close_kind"] == CloseKind.FIN.code
    server_first = int(np.count_nonzero((cc["closed_first"] == Side.RESP.code) & by_fin))
    return Summary(
        packets=packets,
        tcp_connections=len(conns),
        server_closed_first=server_first,
        client_closed_first=int(np.count_nonzero((cc["closed_first"] == Side.ORIG.code) & by_fin)),
        reset_first=int(np.count_nonzero(cc["close_kind"] == CloseKind.RST.code)),
        stale_reuse=totals.stale_reuse,
        stale_reuse_replaced=totals.stale_reuse_replaced,
        wasted_ns=totals.wasted_ns,
        wasted_rtts_median=None if totals.wasted_rtts_median is None else round(totals.wasted_rtts_median, 2),
        dns_lookups_median=totals.dns_lookups_median,
        close_wait_median_ns=totals.close_wait_median_ns,
        fin_retransmits=int(cc["orig_fin_retransmits"].sum() + cc["resp_fin_retransmits"].sum()),
        lost_fin_ack=totals.lost_fin_ack,
        dns_queries=dns.query_packets,
        dns_responses=dns.response_packets,
        dns_redundant=dns.redundant,
        dns_within_ttl=dns.within_ttl,
        dns_saved_by_ttl_floor={str(k): v for k, v in dns.saved_by_ttl_floor.items()},
        issues=sum(dns.issue_counts.values()) + capture_issues,
        encap_undecoded=encap_undecoded,
        headline=headline(totals, server_first),
    )


#: The declared fields of :class:`Summary`.
SUMMARY_FIELDS: tuple[FieldSpec, ...] = fields_of(Summary)


def headline(findings: FindingTotals | Sequence[Finding], server_closed_first: int) -> str:
    """The one-sentence verdict, e.g. "3 requests paid for a dead connection: ..."."""
    t = findings if isinstance(findings, FindingTotals) else summarize(findings)
    n = t.stale_reuse
    if not n:
        if server_closed_first:
            return (
                f"No request was written into a dead connection; servers closed {server_closed_first} "
                "idle connection(s) first."
            )
        return "No request was written into a dead connection."
    req = "request" if n == 1 else "requests"
    if not t.stale_reuse_replaced:
        return f"{n} {req} went into a dead connection (no retry connection seen)."
    total = f"{t.wasted_ns / 1e6:.0f} ms" if t.wasted_ns < 10 * _NS else f"{t.wasted_ns / 1e9:.1f} s"
    parts = []
    if t.wasted_rtts_median is not None:
        r = round(t.wasted_rtts_median)
        parts.append(f"{r} RTT{'s' if r != 1 else ''}")
    lookups = round(t.dns_lookups_median or 0)
    if lookups:
        parts.append(f"{lookups} DNS lookup{'s' if lookups != 1 else ''}")
    each = f" {' and '.join(parts)} each," if parts else ""
    if t.stale_reuse_replaced == n:
        return f"{n} {req} paid for a dead connection:{each} {total} in all."
    return (
        f"{n} {req} went into dead connections; the {t.stale_reuse_replaced} retried on a new connection paid"
        f"{each} {total} in all."
    )
