"""A lab run's figures, computed once from the app's records and the analysis of its capture (pure).

:func:`run_figures` turns what a run produced into one :class:`RunFigures` record, stored on the
run's :class:`~halfclose.lab.runner.LabResult`; ``lab run``, ``lab compare`` and ``lab matrix``
read their numbers from it and compute none of their own. The figures come from three sources,
kept apart because they can disagree:

* :class:`AppFigures`: what the app saw (its clock, its errors, its retries);
* :class:`WireFigures`: what the capture shows, from :mod:`halfclose.analysis`, so that the lab
  and ``halfclose analyze`` never disagree about the wire;
* :class:`LinkFigures`: the round trip asked of the emulated link next to the one measured.

The rules every figure follows are written once here: which requests are *post-idle*
(:func:`is_post_idle`), how a median and a p95 are taken (:func:`median`, :func:`quantile`),
how durations are rounded (:func:`ms`), and how long a request waited for a live connection
(:func:`waits_ns`). No sentence is made here: :mod:`halfclose.report` words them.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from halfclose.analysis import Analysis, CloseKind, ClosingRecord, Connection, Side
from halfclose.lab.app import RequestRecord
from halfclose.lab.config import LabConfig
from halfclose.lab.delayline import DelayCounters

__all__ = [
    "AppFigures",
    "LinkFigures",
    "RunFigures",
    "WireFigures",
    "app_figures",
    "is_post_idle",
    "link_figures",
    "median",
    "ms",
    "quantile",
    "run_figures",
    "waits_ns",
    "wire_figures",
]


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------


def is_post_idle(record: RequestRecord, config: LabConfig) -> bool:
    """True for a request that followed a gap longer than the server's idle timeout.

    Every request but the first follows a gap of ``config.gap_s``; when that gap is longer than
    the server's idle timeout, the connection the request finds has been closed by the server.
    """
    return record.index > 0 and config.gap_s > config.idle_timeout_s


def median(values: Sequence[float]) -> float | None:
    """The median (the mean of the two middle values for an even count); None for no values."""
    return float(statistics.median(values)) if values else None


def quantile(values: Sequence[float], q: float) -> float | None:
    """The *q* quantile by nearest rank, so that the p95 of a few values is one of them."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def ms(ns: float | None) -> float | None:
    """Nanoseconds as milliseconds, rounded to the microsecond (None stays None)."""
    return None if ns is None else round(ns / 1e6, 3)


def _in_rtts(value_ms: float | None, rtt_ms: float | None) -> float | None:
    return None if value_ms is None or not rtt_ms else round(value_ms / rtt_ms, 2)


# --------------------------------------------------------------------------------------------
# What the app saw
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AppFigures:
    """What the app saw of one run (the JSON ``summary`` of ``lab run``).

    Fields:
        requests: requests made; ok: how many got a complete response.
        post_idle: requests that followed a gap longer than the server's idle timeout.
        reused_dead: requests first written into (or failed on) a connection the server had closed.
        app_errors: requests that failed as the app saw them (after its own retry).
        app_retries: requests that succeeded after an error the app caught and retried.
        connections: distinct connections that carried a response (by local port).
        dns_lookups: name resolutions the app did, when the client can tell (-1 when it cannot).
        median_ms_dead / median_ms_other: median latency of reused-dead requests and of the rest.
        median_ms_post_idle / median_ms_warm: median latency after an idle gap, and of the first
            request or of requests that followed a short gap.
        p95_ms_post_idle: the p95 latency after an idle gap.
        http_versions: the HTTP versions of the responses, as the client reported them
            (``1.1``, ``2``, ``1.1+2``; "" when it cannot tell).
        keep_alive: the ``Keep-Alive`` header the server announced (the first seen), "" when none.
    """

    requests: int
    ok: int
    post_idle: int
    reused_dead: int
    app_errors: int
    app_retries: int
    connections: int
    dns_lookups: int
    median_ms_dead: float | None
    median_ms_other: float | None
    median_ms_post_idle: float | None
    median_ms_warm: float | None
    p95_ms_post_idle: float | None
    http_versions: str
    keep_alive: str


def app_figures(records: Sequence[RequestRecord], config: LabConfig) -> AppFigures:
    """The app's figures of *records* from a run made with *config*."""

    def latency(selected: Sequence[RequestRecord]) -> list[float]:
        return [r.latency_ns for r in selected]

    post_idle = [r for r in records if is_post_idle(r, config)]
    warm = [r for r in records if not is_post_idle(r, config)]
    dead = [r for r in records if r.reused_dead]
    other = [r for r in records if not r.reused_dead]
    lookups = [r.dns_lookups for r in records]
    return AppFigures(
        requests=len(records),
        ok=sum(r.ok for r in records),
        post_idle=len(post_idle),
        reused_dead=len(dead),
        app_errors=sum(not r.ok for r in records),
        app_retries=sum(1 for r in records if r.ok and r.error),
        connections=len({r.local_port for r in records if r.ok and r.local_port}),
        dns_lookups=-1 if any(n < 0 for n in lookups) else sum(lookups),
        median_ms_dead=ms(median(latency(dead))),
        median_ms_other=ms(median(latency(other))),
        median_ms_post_idle=ms(median(latency(post_idle))),
        median_ms_warm=ms(median(latency(warm))),
        p95_ms_post_idle=ms(quantile(latency(post_idle), 0.95)),
        http_versions="+".join(sorted({r.http_version for r in records if r.http_version})),
        keep_alive=next((r.keep_alive for r in records if r.keep_alive), ""),
    )


# --------------------------------------------------------------------------------------------
# What the capture shows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WireFigures:
    """One run's capture, seen from the phone (the JSON ``wire`` of ``lab run``).

    Fields:
        packets: TCP/UDP packets captured.
        payload_bytes: TCP payload bytes, both directions, all connections.
        tcp_connections: TCP connections (records of the analysis).
        server_closed_first: connections the server closed first with a FIN.
        server_reset_first: connections the server closed first with a RST.
        server_goaway_first: connections the server began closing with an HTTP/2 GOAWAY in the clear
            (h2c): the connection's closing record was the server's (also when the client's FIN or RST
            came first), or the server closed first with any GOAWAY before its close.
        server_close_notify_first: ... with a TLS alert in the clear (close_notify, up to TLS 1.2).
        server_tls_record_first: ... with short encrypted TLS records (TLS 1.3's close_notify, a GOAWAY
            inside TLS: the capture cannot tell which).
        stale_writes: connections on which the client sent payload after the server's FIN.
        server_rsts: connections that got a RST from the server.
        client_rsts: connections that got a RST from the client (a reset socket, or a reaper).
        rsts: connections reset by either side.
        server_fin_retransmits: FIN retransmissions by the server (its FIN went unacknowledged).
        client_close_unacked: connections the client closed first whose server FIN it did not
            acknowledge (the server retransmitted it): a final ACK lost, as when rules reject it.
        server_linger_ms_median: for server-closed connections, the median time from the server's
            FIN to the end of the connection for the server (the client's RST or FIN), in ms.
        dns_queries: DNS query packets.
        rtt_ms_median: median handshake round trip (SYN to SYN/ACK to ACK at the phone), in ms.
        handshakes: connections whose handshake RTT was measured.
    """

    packets: int
    payload_bytes: int
    tcp_connections: int
    server_closed_first: int
    server_reset_first: int
    server_goaway_first: int
    server_close_notify_first: int
    server_tls_record_first: int
    stale_writes: int
    server_rsts: int
    client_rsts: int
    rsts: int
    server_fin_retransmits: int
    client_close_unacked: int
    server_linger_ms_median: float | None
    dns_queries: int
    rtt_ms_median: float | None
    handshakes: int


def _linger_ns(conn: Connection) -> int | None:
    if conn.closed_first is not Side.RESP or conn.resp_fin_ns is None:
        return None
    ends = [t for t in (conn.orig_rst_ns, conn.orig_fin_ns) if t is not None and t >= conn.resp_fin_ns]
    return min(ends) - conn.resp_fin_ns if ends else None


def _server_closing_first(conns: Sequence[Connection], kind: ClosingRecord) -> int:
    def first(c: Connection) -> bool:
        if c.closing_side is Side.RESP and c.closing_record is kind:
            return True
        return (kind is ClosingRecord.H2_GOAWAY and c.closed_first is Side.RESP and c.resp_goaway_ns is not None
                and c.first_close_ns is not None and c.resp_goaway_ns <= c.first_close_ns)  # fmt: skip

    return sum(1 for c in conns if first(c))


def _handshake_rtts_ns(analysis: Analysis) -> list[int]:
    return [c.handshake_rtt_ns for c in analysis.connections if c.handshake_rtt_ns is not None]


def wire_figures(analysis: Analysis) -> WireFigures:
    """Figures of a lab capture, where the phone originates every connection."""
    conns = analysis.connections
    rtts = _handshake_rtts_ns(analysis)
    lingers = [n for n in (_linger_ns(c) for c in conns) if n is not None]
    return WireFigures(
        packets=analysis.summary.packets,
        payload_bytes=sum(c.orig_bytes + c.resp_bytes for c in conns),
        tcp_connections=len(conns),
        server_closed_first=analysis.summary.server_closed_first,
        server_reset_first=sum(1 for c in conns if c.closed_first is Side.RESP and c.close_kind is CloseKind.RST),
        server_goaway_first=_server_closing_first(conns, ClosingRecord.H2_GOAWAY),
        server_close_notify_first=_server_closing_first(conns, ClosingRecord.TLS_ALERT),
        server_tls_record_first=_server_closing_first(conns, ClosingRecord.TLS_SHORT),
        stale_writes=sum(1 for c in conns if c.stale_writes),
        server_rsts=sum(1 for c in conns if c.resp_rst_ns is not None),
        client_rsts=sum(1 for c in conns if c.orig_rst_ns is not None),
        rsts=sum(1 for c in conns if c.orig_rst_ns is not None or c.resp_rst_ns is not None),
        server_fin_retransmits=sum(c.resp_fin_retransmits for c in conns),
        client_close_unacked=sum(1 for c in conns if c.closed_first is Side.ORIG and c.close_kind is CloseKind.FIN
                                 and c.resp_fin_retransmits),
        server_linger_ms_median=ms(median(lingers)),
        dns_queries=analysis.summary.dns_queries,
        rtt_ms_median=ms(median(rtts)),
        handshakes=len(rtts),
    )


def _rode_in_syn(conn: Connection, syn_data: Mapping[int, Sequence[int]]) -> bool:
    return conn.syn_ns is not None and conn.syn_ns in syn_data.get(conn.orig_p, ())


def waits_ns(
    records: Sequence[RequestRecord], analysis: Analysis, syn_data: Mapping[int, Sequence[int]] | None = None
) -> dict[int, int]:
    """Request index -> how long the request waited for a live connection, in ns.

    That is from the request's start (the app's clock) to the moment its first byte could go on
    the wire in the connection that carried it (the capture's clock): the end of the handshake
    (the SYN plus its round trip), or, for a connection whose SYN carried data (*syn_data*: client
    port -> times of such SYNs, TCP Fast Open; see :mod:`halfclose.lab.syndata`), the SYN itself.
    Discovering a dead connection, asking DNS again and opening a new connection all land here.
    A request that went out on a connection opened before it started waited 0. Requests whose
    connection is not in the capture are left out. Both clocks are the host's realtime clock.
    """
    by_port: dict[int, list[Connection]] = {}
    for conn in analysis.connections:
        by_port.setdefault(conn.orig_p, []).append(conn)
    delays: dict[int, int] = {}
    for record in records:
        candidates = [
            c for c in by_port.get(record.local_port, [])
            if c.ts_ns <= record.start_ns + record.latency_ns and c.end_ns >= record.start_ns
        ]
        if not record.ok or not candidates:
            continue
        conn = candidates[-1]
        if conn.syn_ns is None or conn.syn_ns < record.start_ns:
            delays[record.index] = 0
            continue
        in_syn = _rode_in_syn(conn, syn_data or {})
        delays[record.index] = conn.syn_ns + (0 if in_syn else conn.handshake_rtt_ns or 0) - record.start_ns
    return delays


# --------------------------------------------------------------------------------------------
# The link
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkFigures:
    """The round trip a lab run asked for next to the one its capture shows (JSON ``link``).

    Fields:
        mode: ``bridge``, ``netem`` or ``forwarder``.
        rtt_ms_asked, jitter_ms, loss_pct, seed: what was asked.
        handshakes: TCP handshakes measured in the capture (at the phone).
        rtt_ms_median, rtt_ms_min, rtt_ms_max: their round trips (None without handshakes or
            when the capture could not be read).
        counters: the forwarder's counters (forwarder mode only).
        note: why a measurement is missing, else empty.
    """

    mode: str
    rtt_ms_asked: float
    jitter_ms: float
    loss_pct: float
    seed: int
    handshakes: int
    rtt_ms_median: float | None
    rtt_ms_min: float | None
    rtt_ms_max: float | None
    counters: dict[str, dict[str, int]] | None
    note: str = ""


def link_figures(
    *,
    mode: str,
    counters: DelayCounters | None,
    rtts_ns: Sequence[int] | None,
    rtt_ms: float = 0.0,
    jitter_ms: float = 0.0,
    loss_pct: float = 0.0,
    seed: int = 0,
) -> LinkFigures:
    """Put the handshake round trips measured in a run's capture next to what was asked.

    *mode* is how the link was joined, *counters* the stopped forwarder's (None without one),
    *rtts_ns* the TCP handshake round trips seen at the phone (None when the capture could not
    be analysed).
    """
    values = sorted(rtts_ns or ())
    return LinkFigures(
        mode=mode,
        rtt_ms_asked=rtt_ms,
        jitter_ms=jitter_ms,
        loss_pct=loss_pct,
        seed=seed,
        handshakes=len(values),
        rtt_ms_median=ms(median(values)),
        rtt_ms_min=ms(values[0]) if values else None,
        rtt_ms_max=ms(values[-1]) if values else None,
        counters=counters.to_dict() if counters is not None else None,
        note="" if rtts_ns is not None else "the capture could not be analysed",
    )


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFigures:
    """Every figure of one lab run.

    Fields:
        app, wire, link: by source (see the classes).
        waits_ns: request index -> time it waited for a live connection (see :func:`waits_ns`).
        post_idle_wait_ms: median of that wait over the post-idle requests, in ms.
        post_idle_wait_rtts: the same in round trips of the capture's median handshake: the
            extra round trips a post-idle request cost.
        first_wait_ms: the first request's wait (a cold start: DNS and a handshake).
        post_idle_rtts_median, post_idle_rtts_p95: post-idle latency in round trips.
        post_idle_beyond_rtt_ms: median post-idle latency minus the capture's median handshake
            round trip, in ms (what a post-idle request cost beyond the one round trip any
            request costs).
        dns_queries_per_request: DNS query packets over requests made.
        syn_data_conns: connections whose SYN carried data (TCP Fast Open), from the capture.
    """

    app: AppFigures
    wire: WireFigures
    link: LinkFigures
    waits_ns: Mapping[int, int]
    post_idle_wait_ms: float | None
    post_idle_wait_rtts: float | None
    first_wait_ms: float | None
    post_idle_rtts_median: float | None
    post_idle_rtts_p95: float | None
    post_idle_beyond_rtt_ms: float | None
    dns_queries_per_request: float | None
    syn_data_conns: int

    def to_json(self) -> dict[str, object]:
        """The JSON object: the three sources by name, the joined figures beside them."""
        data: dict[str, object] = {"summary": asdict(self.app), "wire": asdict(self.wire), "link": asdict(self.link),
                                   "waits_ns": {str(k): v for k, v in self.waits_ns.items()}}
        for name in ("post_idle_wait_ms", "post_idle_wait_rtts", "first_wait_ms", "post_idle_rtts_median",
                     "post_idle_rtts_p95", "post_idle_beyond_rtt_ms", "dns_queries_per_request", "syn_data_conns"):
            data[name] = getattr(self, name)
        return data


def run_figures(
    records: Sequence[RequestRecord],
    analysis: Analysis,
    config: LabConfig,
    *,
    link_mode: str,
    counters: DelayCounters | None = None,
    syn_data: Mapping[int, Sequence[int]] | None = None,
) -> RunFigures:
    """All figures of a run made with *config*: the app's *records*, the *analysis* of its capture,
    the link joined in *link_mode* (with the forwarder's *counters*, if one ran), and the SYNs of
    the capture that carried data (*syn_data*, see :func:`waits_ns`)."""
    app = app_figures(records, config)
    link = link_figures(mode=link_mode, counters=counters, rtts_ns=_handshake_rtts_ns(analysis),
                        rtt_ms=config.rtt_ms, jitter_ms=config.jitter_ms, loss_pct=config.loss_pct,
                        seed=config.seed)
    wire = wire_figures(analysis)
    syn_data = syn_data or {}
    waits = waits_ns(records, analysis, syn_data)
    post_waits = [waits[r.index] for r in records if is_post_idle(r, config) and r.index in waits]
    wait_ms = ms(median(post_waits))
    rtt = wire.rtt_ms_median
    return RunFigures(
        app=app,
        wire=wire,
        link=link,
        waits_ns=waits,
        post_idle_wait_ms=wait_ms,
        post_idle_wait_rtts=_in_rtts(wait_ms, rtt),
        first_wait_ms=ms(waits[0]) if 0 in waits else None,
        post_idle_rtts_median=_in_rtts(app.median_ms_post_idle, rtt),
        post_idle_rtts_p95=_in_rtts(app.p95_ms_post_idle, rtt),
        post_idle_beyond_rtt_ms=(None if app.median_ms_post_idle is None or rtt is None
                                 else round(app.median_ms_post_idle - rtt, 3)),
        dns_queries_per_request=round(wire.dns_queries / app.requests, 2) if app.requests else None,
        syn_data_conns=sum(1 for c in analysis.connections if _rode_in_syn(c, syn_data)),
    )
