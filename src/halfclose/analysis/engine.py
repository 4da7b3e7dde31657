"""The whole analysis: packet batches in, :class:`Analysis` out (pure: no files, no threads).

Each batch is split into its TCP rows and its UDP port-53 rows; the stages then run in one
direction: flows (:class:`~halfclose.analysis.flows.FlowTable`) -> connections
(:func:`~halfclose.analysis.tcp.build_table`) -> names (SNI and Host from the first data, then
DNS answers: :meth:`~halfclose.analysis.tcp.ConnectionTable.with_dns_names`) -> findings
(:mod:`halfclose.analysis.findings`) -> summary (:mod:`halfclose.analysis.summary`). Reading
capture files is the I/O edge's job: :func:`halfclose.analysis_io.analyze`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from halfclose.analysis.dns import AnalysisIssue, DnsCollector, DnsResult
from halfclose.analysis.findings import (
    Finding,
    ServerTimeout,
    find_lost_fin_acks,
    find_silent_half_closes,
    find_stale_reuse,
    server_timeouts,
)
from halfclose.analysis.flows import Accounted, FlowTable
from halfclose.analysis.summary import Summary, headline, summarize, summary
from halfclose.analysis.tcp import ConnectionTable, build_table
from halfclose.capture.columns import PacketBatch
from halfclose.capture.reader import CaptureIssue, FileStats

__all__ = [
    "Analysis",
    "AnalysisOptions",
    "Prepared",
    "Reading",
    "Summary",
    "analyze_batches",
    "analyze_prepared",
    "headline",
    "split_batch",
]

I64 = npt.NDArray[np.int64]


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
class Analysis:
    """Everything the analysis found: summary, connections, findings, servers, DNS, issues.

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


def split_batch(batch: PacketBatch) -> tuple[I64, I64]:
    """The row indexes of a batch's TCP packets and of its UDP packets to or from port 53
    (IP fragments other than the first carry no transport header and are in neither)."""
    whole = ~batch.fragment
    tcp = np.flatnonzero((batch.proto == 6) & whole)
    udp = (batch.proto == 17) & whole
    dns = np.flatnonzero(udp & ((batch.sport == 53) | (batch.dport == 53)))
    return tcp.astype(np.int64), dns.astype(np.int64)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch with what :meth:`Reading.prepare` found: its TCP and DNS rows and the flow
    table's compiled pass over the TCP ones."""

    batch: PacketBatch
    dns_rows: I64
    tcp: tuple[Accounted, ...]


class Reading:
    """The reading phase, batch by batch, in two steps: :meth:`prepare` (the rows' split and the
    compiled flow pass: numpy and compiled code that mostly runs without the GIL) and
    :meth:`take` (the rest: names, events, DNS). Each step sees the batches in capture order;
    :meth:`prepare` shares no state with :meth:`take`, so it may run in another thread, ahead."""

    def __init__(self) -> None:
        self.flows = FlowTable()
        self.dns = DnsCollector()
        self.packets = 0

    def prepare(self, batch: PacketBatch) -> Prepared:
        """The first step for *batch*."""
        tcp_rows, dns_rows = split_batch(batch)
        return Prepared(batch, dns_rows, self.flows.account(batch, tcp_rows))

    def take(self, prepared: Prepared) -> None:
        """The second step for a batch :meth:`prepare` returned."""
        batch = prepared.batch
        for part in prepared.tcp:
            self.flows.take(batch, part)
        self.dns.feed(batch, prepared.dns_rows)
        self.packets += len(batch)


def analyze_batches(
    batches: Iterable[PacketBatch],
    options: AnalysisOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    capture_issues: Callable[[], Sequence[CaptureIssue]] | None = None,
    capture_stats: Callable[[], FileStats] | None = None,
) -> Analysis:
    """Analyse packet batches (in capture order). *progress* gets the packet count after each
    batch; *capture_issues* and *capture_stats*, called at the end, give the reader's issues and
    its summed statistics."""
    reading = Reading()
    return analyze_prepared(
        reading, map(reading.prepare, batches), options, progress=progress, capture_issues=capture_issues,
        capture_stats=capture_stats,
    )  # fmt: skip


def analyze_prepared(
    reading: Reading,
    prepared: Iterable[Prepared],
    options: AnalysisOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    capture_issues: Callable[[], Sequence[CaptureIssue]] | None = None,
    capture_stats: Callable[[], FileStats] | None = None,
) -> Analysis:
    """:func:`analyze_batches` over batches that went through ``reading.prepare`` (in capture
    order; the preparing may be done in another thread, as :func:`halfclose.analysis_io.analyze`
    does)."""
    opts = options or AnalysisOptions()
    for item in prepared:
        if len(item.batch) == 0:
            continue
        reading.take(item)
        del item  # freed before the next batch is fetched
        if progress is not None:
            progress(reading.packets)
    flows, collector, packets = reading.flows, reading.dns, reading.packets
    dns = collector.result(window_s=opts.dns_redundant_window_s, floors=opts.ttl_floors)
    conns = build_table(flows.finish()).with_dns_names(dns.answers())
    found: list[Finding] = [
        *find_stale_reuse(conns, dns.queries(), replacement_window_s=opts.replacement_window_s),
        *find_silent_half_closes(conns),
        *find_lost_fin_acks(conns),
    ]
    findings = tuple(sorted(found, key=lambda f: (f.ts_ns, f.kind.value)))
    cap_issues = tuple(capture_issues()) if capture_issues is not None else ()
    undecoded = capture_stats().encap_undecoded if capture_stats is not None else 0
    return Analysis(
        summary=summary(
            summarize(findings), conns, dns, packets=packets, capture_issues=len(cap_issues), encap_undecoded=undecoded
        ),
        connections=conns,
        findings=findings,
        servers=tuple(server_timeouts(conns, min_idle_s=opts.min_idle_s)),
        dns=dns,
        issues=dns.issues,
        capture_issues=cap_issues,
    )
