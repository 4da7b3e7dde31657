"""The whole analysis: packet batches in, :class:`Analysis` out (pure: no files, no threads).

Each batch is split into its TCP rows and its UDP port-53 rows; the stages then run in one
direction: flows (:class:`~halfclose.analysis.flows.FlowTable`) -> connections
(:func:`~halfclose.analysis.tcp.build_table`) -> names (SNI and Host from the first data, then
DNS answers: :meth:`~halfclose.analysis.tcp.ConnectionTable.with_dns_names`) -> findings
(:mod:`halfclose.analysis.findings`) -> summary (:mod:`halfclose.analysis.summary`). Reading
capture files is the I/O edge's job: :func:`halfclose.analysis_io.analyze`.
"""

from __future__ import annotations

import itertools
import operator
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
from halfclose.analysis.flows import FlowTable
from halfclose.analysis.summary import Summary, headline, summarize, summary
from halfclose.analysis.tcp import ConnectionTable, build_table
from halfclose.capture.columns import PacketBatch
from halfclose.capture.reader import CaptureIssue, FileStats

__all__ = ["Analysis", "AnalysisOptions", "Summary", "analyze_batches", "headline"]

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
    opts = options or AnalysisOptions()
    flows = FlowTable()
    collector = DnsCollector()
    packets = 0
    for batch in batches:
        if len(batch) == 0:
            continue
        dns_rows = flows.feed(batch)  # (the flow table's pass also finds the DNS rows)
        collector.feed(batch, dns_rows)
        packets += len(batch)
        del batch, dns_rows  # freed before the next batch is fetched
        if progress is not None:
            progress(packets)
    dns = collector.result(window_s=opts.dns_redundant_window_s, floors=opts.ttl_floors)
    conns = build_table(flows.finish()).with_dns_names(dns.answers())
    found: list[Sequence[Finding]] = [
        find_stale_reuse(conns, dns.queries(), replacement_window_s=opts.replacement_window_s),
        find_silent_half_closes(conns),
        find_lost_fin_acks(conns),
    ]
    # by time, then kind: each list holds one kind, so the lists in kind order, then a stable sort by time
    found.sort(key=lambda one_kind: one_kind[0].kind.value if one_kind else "")
    findings = tuple(sorted(itertools.chain.from_iterable(found), key=operator.attrgetter("ts_ns")))
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
