"""What a lab run showed, computed from the app's per-request records (pure)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from halfclose.lab.app import RequestRecord
from halfclose.lab.config import LabConfig
from halfclose.lab.figures import WireFigures

__all__ = ["LabSummary", "render_summary", "render_waits", "render_wire", "summarize"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LabSummary:
    """Counts and latencies of one run.

    Fields:
        requests: requests made; ok: how many got a complete response.
        post_idle: requests that followed a gap longer than the server's idle timeout.
        reused_dead: requests first written into (or failed on) a connection the server had closed.
        app_errors: requests that failed as the app saw them (after its own retry).
        connections: distinct connections that carried a response (by local port).
        dns_lookups: name resolutions the app did, when the client can tell (-1 when it cannot).
        median_ms_dead / median_ms_other: median latency of reused-dead requests and of the rest.
        median_ms_post_idle / median_ms_warm: median latency after an idle gap, and of the first
            request or of requests that followed a short gap.
    """

    requests: int
    ok: int
    post_idle: int
    reused_dead: int
    app_errors: int
    connections: int
    dns_lookups: int
    median_ms_dead: float | None
    median_ms_other: float | None
    median_ms_post_idle: float | None
    median_ms_warm: float | None


def _median_ms(values: Sequence[int]) -> float | None:
    return round(statistics.median(values) / 1e6, 3) if values else None


def summarize(records: Sequence[RequestRecord], config: LabConfig) -> LabSummary:
    """Summarize *records* of a run made with *config*."""
    idle_gap = config.gap_s > config.idle_timeout_s
    post_idle = [r for r in records if r.index > 0 and idle_gap]
    warm = [r for r in records if r not in post_idle]
    dead = [r for r in records if r.reused_dead]
    other = [r for r in records if not r.reused_dead]
    lookups = [r.dns_lookups for r in records]
    return LabSummary(
        requests=len(records),
        ok=sum(r.ok for r in records),
        post_idle=len(post_idle),
        reused_dead=len(dead),
        app_errors=sum(not r.ok for r in records),
        connections=len({r.local_port for r in records if r.ok and r.local_port}),
        dns_lookups=-1 if any(n < 0 for n in lookups) else sum(lookups),
        median_ms_dead=_median_ms([r.latency_ns for r in dead]),
        median_ms_other=_median_ms([r.latency_ns for r in other]),
        median_ms_post_idle=_median_ms([r.latency_ns for r in post_idle]),
        median_ms_warm=_median_ms([r.latency_ns for r in warm]),
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def render_wire(wire: WireFigures) -> str:
    """One line of what the capture shows."""
    rtt = "-" if wire.rtt_ms_median is None else f"{wire.rtt_ms_median:.2f} ms"
    return (
        f"on the wire: {wire.tcp_connections} TCP connections, {wire.stale_writes} with client payload after "
        f"the server's FIN, {wire.server_rsts} reset by the server, {wire.server_fin_retransmits} server FIN "
        f"retransmissions, {wire.dns_queries} DNS queries; handshake RTT median {rtt}"
    )


def render_summary(summary: LabSummary, config: LabConfig) -> list[str]:
    """The human summary of a run, as lines."""
    lines = [
        f"{summary.requests} requests with client {config.client.value}, {config.gap_s:g} s apart; "
        f"server idle timeout {config.idle_timeout_s:g} s ({config.server.value}), DNS TTL {config.dns_ttl_s} s "
        f"({config.dns.value}), fix: {config.fix.value}",
        f"{summary.ok} succeeded, {summary.app_errors} failed as the app saw them; "
        f"{summary.connections} connections carried responses"
        + (f"; {summary.dns_lookups} DNS lookups by the app" if summary.dns_lookups >= 0 else ""),
        f"{summary.reused_dead} of {summary.post_idle} post-idle requests found their reused connection closed "
        "by the server and were retried on a new connection",
    ]
    if summary.reused_dead:
        lines.append(
            f"median latency: {_ms(summary.median_ms_dead)} for those, {_ms(summary.median_ms_other)} for the others"
        )
    else:
        lines.append(
            f"median latency: {_ms(summary.median_ms_post_idle)} after an idle gap, "
            f"{_ms(summary.median_ms_warm)} otherwise"
        )
    return lines


def render_waits(records: Sequence[RequestRecord], waits_ns: dict[int, int], rtt_ms: float | None,
                 config: LabConfig) -> str:
    """One line: how long requests waited for a live connection, in ms and round trips."""
    idle_gap = config.gap_s > config.idle_timeout_s
    post = [waits_ns[r.index] for r in records if r.index > 0 and idle_gap and r.index in waits_ns]
    first = [waits_ns[r.index] for r in records if r.index == 0 and r.index in waits_ns]
    if not post:
        return "no post-idle request was matched to a connection in the capture"
    median = statistics.median(post) / 1e6
    rtts = f" = {median / rtt_ms:.1f} round trips" if rtt_ms else ""
    cold = f"; the first request waited {first[0] / 1e6:.1f} ms" if first else ""
    return (f"post-idle requests waited {median:.1f} ms{rtts} (median) for a live connection "
            f"(finding the old one dead, DNS, a new handshake){cold}")
