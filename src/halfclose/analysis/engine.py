"""The whole analysis: packet batches in, :class:`Analysis` out.

:func:`analyze_batches` is the pure core (any iterable of :class:`PacketBatch`);
:func:`analyze` opens capture files with :func:`halfclose.capture.open_captures` and runs it.
"""

from __future__ import annotations

import queue
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from halfclose.analysis.dns import AnalysisIssue, DnsCollector, DnsResult, dns_name_lookup
from halfclose.analysis.findings import (
    Finding,
    FindingKind,
    ServerTimeout,
    find_lost_fin_acks,
    find_silent_half_closes,
    find_stale_reuse,
    server_timeouts,
)
from halfclose.analysis.flows import FlowTable
from halfclose.analysis.tcp import ConnectionTable, build_table
from halfclose.capture.columns import PacketBatch
from halfclose.capture.reader import CaptureIssue

__all__ = ["Analysis", "AnalysisOptions", "Summary", "analyze", "analyze_batches", "headline"]

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisOptions:
    """Knobs of the analysis (all have documented defaults).

    Fields:
        replacement_window_s: how soon after a stale write the retry's connection must start.
        dns_redundant_window_s: a query is redundant when the previous answer expired less than
            this long before and the addresses did not change.
        ttl_floors: TTL floors (s) whose savings are counted.
        min_idle_s: idle closes shorter than this are not idle-timeout samples.
    """

    replacement_window_s: float = 5.0
    dns_redundant_window_s: float = 60.0
    ttl_floors: tuple[int, ...] = (60, 300, 600)
    min_idle_s: float = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """Counts over the whole input (the JSON ``summary`` object).

    Fields:
        packets: TCP/UDP packets analysed.
        tcp_connections: connection records.
        server_closed_first: connections whose responder sent the first FIN (no RST before it).
        client_closed_first: connections whose originator sent the first FIN.
        reset_first: connections whose first close was a RST (either side).
        stale_reuse: connections the client wrote into after the server's FIN.
        stale_reuse_replaced: of those, the ones whose retry connection was found.
        wasted_ns: stale write -> replacement SYN, summed over the replaced ones.
        wasted_rtts_median, dns_lookups_median: per replaced stale reuse.
        close_wait_median_ns: median time the client left server-closed connections half open.
        fin_retransmits: FIN segments repeating an earlier FIN (both sides, all connections).
        lost_fin_ack: connections whose server retransmitted its FIN.
        dns_queries, dns_responses: DNS query / response packets (UDP port 53).
        dns_redundant, dns_within_ttl: see :mod:`halfclose.analysis.dns`.
        dns_saved_by_ttl_floor: floor (s, as a string key) -> queries a cache with that floor saves.
        issues: problems found in the input (capture and DNS).
        headline: one sentence for people.
    """

    packets: int
    tcp_connections: int
    server_closed_first: int
    client_closed_first: int
    reset_first: int
    stale_reuse: int
    stale_reuse_replaced: int
    wasted_ns: int
    wasted_rtts_median: float | None
    dns_lookups_median: float | None
    close_wait_median_ns: int | None
    fin_retransmits: int
    lost_fin_ack: int
    dns_queries: int
    dns_responses: int
    dns_redundant: int
    dns_within_ttl: int
    dns_saved_by_ttl_floor: dict[str, int]
    issues: int
    headline: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Analysis:
    """Everything :func:`analyze` found: summary, connections, findings, servers, DNS, issues.

    ``capture_issues`` are the reader's (file, byte offset, message); ``issues`` are analysis
    issues (DNS payloads cut or corrupt).
    """

    summary: Summary
    connections: ConnectionTable
    findings: tuple[Finding, ...]
    servers: tuple[ServerTimeout, ...]
    dns: DnsResult
    issues: tuple[AnalysisIssue, ...]
    capture_issues: tuple[CaptureIssue, ...] = field(default=())

    def profile(self) -> dict[str, float]:
        """Server name -> inferred idle timeout (s), for the client guard."""
        return {s.server: s.idle_timeout_s for s in self.servers}


def _num(f: Finding, key: str) -> float | None:
    v = f.evidence.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def headline(findings: Sequence[Finding], server_closed_first: int) -> str:
    """The one-sentence verdict, e.g. "3 requests paid for a dead connection: ..."."""
    stale = [f for f in findings if f.kind is FindingKind.STALE_REUSE]
    if not stale:
        if server_closed_first:
            return (
                f"No request was written into a dead connection; servers closed {server_closed_first} "
                "idle connection(s) first."
            )
        return "No request was written into a dead connection."
    replaced = [f for f in stale if f.evidence.get("wasted_ns") is not None]
    n = len(stale)
    req = "request" if n == 1 else "requests"
    if not replaced:
        return f"{n} {req} went into a dead connection (no retry connection seen)."
    total_ns = sum(int(f.evidence["wasted_ns"] or 0) for f in replaced)
    total = f"{total_ns / 1e6:.0f} ms" if total_ns < 10 * _NS else f"{total_ns / 1e9:.1f} s"
    rtts = [r for r in (_num(f, "wasted_rtts") for f in replaced) if r is not None]
    lookups = round(statistics.median(int(f.evidence.get("dns_lookups") or 0) for f in replaced))
    parts = []
    if rtts:
        r = round(statistics.median(rtts))
        parts.append(f"{r} RTT{'s' if r != 1 else ''}")
    if lookups:
        parts.append(f"{lookups} DNS lookup{'s' if lookups != 1 else ''}")
    each = f" {' and '.join(parts)} each," if parts else ""
    if len(replaced) == n:
        return f"{n} {req} paid for a dead connection:{each} {total} in all."
    return (
        f"{n} {req} went into dead connections; the {len(replaced)} retried on a new connection paid"
        f"{each} {total} in all."
    )


def analyze_batches(
    batches: Iterable[PacketBatch],
    options: AnalysisOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    capture_issues: Callable[[], Sequence[CaptureIssue]] | None = None,
) -> Analysis:
    """Analyse packet batches (in capture order). *progress* gets the packet count after each batch."""
    opts = options or AnalysisOptions()
    table = FlowTable()
    collector = DnsCollector()
    for batch in batches:
        if len(batch) == 0:
            continue
        collector.feed(batch, table.feed(batch))
        if progress is not None:
            progress(table.packets_seen)
    dns = collector.result(window_s=opts.dns_redundant_window_s, floors=opts.ttl_floors)
    state, events = table.finish()
    conns = build_table(state, events, table.payload_names(), dns_name_lookup(dns.exchanges))
    stale = find_stale_reuse(conns, dns.queries_by_client(), replacement_window_s=opts.replacement_window_s)
    silent = find_silent_half_closes(conns)
    lost = find_lost_fin_acks(conns)
    findings = sorted([*stale, *silent, *lost], key=lambda f: (f.ts_ns, f.kind.value))
    servers = server_timeouts(conns, min_idle_s=opts.min_idle_s)
    cap_issues = tuple(capture_issues()) if capture_issues is not None else ()
    replaced = [f for f in stale if f.evidence.get("wasted_ns") is not None]
    rtts = [r for r in (_num(f, "wasted_rtts") for f in replaced) if r is not None]
    close_waits = [int(w) for w in (_num(f, "close_wait_ns") for f in silent) if w is not None]
    cc = conns.cols
    server_first = int(np.count_nonzero((cc["closed_first"] == 1) & (cc["close_kind"] == 0)))
    summary = Summary(
        packets=table.packets_seen,
        tcp_connections=len(conns),
        server_closed_first=server_first,
        client_closed_first=int(np.count_nonzero((cc["closed_first"] == 0) & (cc["close_kind"] == 0))),
        reset_first=int(np.count_nonzero(cc["close_kind"] == 1)),
        stale_reuse=len(stale),
        stale_reuse_replaced=len(replaced),
        wasted_ns=sum(int(f.evidence["wasted_ns"] or 0) for f in replaced),
        wasted_rtts_median=round(statistics.median(rtts), 2) if rtts else None,
        dns_lookups_median=(
            statistics.median(int(f.evidence.get("dns_lookups") or 0) for f in replaced) if replaced else None
        ),
        close_wait_median_ns=int(statistics.median(close_waits)) if close_waits else None,
        fin_retransmits=int(cc["orig_fin_retransmits"].sum() + cc["resp_fin_retransmits"].sum()),
        lost_fin_ack=len(lost),
        dns_queries=dns.query_packets,
        dns_responses=dns.response_packets,
        dns_redundant=dns.redundant,
        dns_within_ttl=dns.within_ttl,
        dns_saved_by_ttl_floor={str(k): v for k, v in dns.saved_by_ttl_floor.items()},
        issues=sum(dns.issue_counts.values()) + len(cap_issues),
        headline=headline(findings, server_first),
    )
    return Analysis(
        summary=summary,
        connections=conns,
        findings=tuple(findings),
        servers=tuple(servers),
        dns=dns,
        issues=dns.issues,
        capture_issues=cap_issues,
    )


def analyze(
    sources: Sequence[str | Path] | str | Path,
    options: AnalysisOptions | None = None,
    *,
    progress: Callable[[int, int | None], None] | None = None,
) -> Analysis:
    """Read capture files (``"-"`` for stdin) and analyse them.

    *progress*, if given, is called as ``progress(bytes_done, bytes_total_or_None)``.

    Raises:
        InputError: a file cannot be opened or is not a capture (the message names it).
    """
    from halfclose.capture import open_captures

    names = [sources] if isinstance(sources, str | Path) else list(sources)
    with open_captures(names, progress=progress) as reader:
        return analyze_batches(prefetch(reader), options, capture_issues=lambda: reader.issues)


_DONE = object()


def prefetch(batches: Iterable[PacketBatch], depth: int = 2) -> Iterator[PacketBatch]:
    """*batches*, produced by a worker thread up to *depth* batches ahead.

    The compiled capture and flow kernels release the GIL, so reading the next batch overlaps
    analysing this one (on two cores, most of the reading time). The worker's exceptions are
    raised here; closing the iterator early stops the worker before returning.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
            except queue.Full:
                continue
            return True
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))

    worker = threading.Thread(target=work, name="halfclose-capture-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield cast(PacketBatch, item)
    finally:
        stop.set()
        worker.join()


@dataclass(frozen=True, slots=True)
class _Failed:
    exc: BaseException
