"""What a lab run's capture shows, taken from :mod:`halfclose.analysis` (pure).

The lab's own figures (latency, errors) come from the app; everything said about the wire comes
from the analysis of the capture, so that the lab and ``halfclose analyze`` never disagree.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from halfclose.analysis import Analysis, Connection, Side
from halfclose.lab.app import RequestRecord

__all__ = ["WireFigures", "setup_delays_ns", "wire_figures"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WireFigures:
    """One run's capture, seen from the phone.

    Fields:
        packets: TCP/UDP packets captured.
        payload_bytes: TCP payload bytes, both directions, all connections.
        tcp_connections: TCP connections (records of the analysis).
        server_closed_first: connections the server closed first with a FIN.
        stale_writes: connections on which the client sent payload after the server's FIN.
        server_rsts: connections that got a RST from the server.
        client_rsts: connections that got a RST from the client (a reset socket, or a reaper).
        server_fin_retransmits: FIN retransmissions by the server (its FIN went unacknowledged).
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
    stale_writes: int
    server_rsts: int
    client_rsts: int
    server_fin_retransmits: int
    server_linger_ms_median: float | None
    dns_queries: int
    rtt_ms_median: float | None
    handshakes: int


def _median_ms(values: Sequence[int]) -> float | None:
    return round(statistics.median(values) / 1e6, 3) if values else None


def _linger_ns(conn: Connection) -> int | None:
    if conn.closed_first is not Side.RESP or conn.resp_fin_ns is None:
        return None
    ends = [t for t in (conn.orig_rst_ns, conn.orig_fin_ns) if t is not None and t >= conn.resp_fin_ns]
    return min(ends) - conn.resp_fin_ns if ends else None


def wire_figures(analysis: Analysis) -> WireFigures:
    """Figures of a lab capture, where the phone originates every connection."""
    conns = analysis.connections
    rtts = [c.handshake_rtt_ns for c in conns if c.handshake_rtt_ns is not None]
    lingers = [n for n in (_linger_ns(c) for c in conns) if n is not None]
    return WireFigures(
        packets=analysis.summary.packets,
        payload_bytes=sum(c.orig_bytes + c.resp_bytes for c in conns),
        tcp_connections=len(conns),
        server_closed_first=analysis.summary.server_closed_first,
        stale_writes=sum(1 for c in conns if c.stale_writes),
        server_rsts=sum(1 for c in conns if c.resp_rst_ns is not None),
        client_rsts=sum(1 for c in conns if c.orig_rst_ns is not None),
        server_fin_retransmits=sum(c.resp_fin_retransmits for c in conns),
        server_linger_ms_median=_median_ms(lingers),
        dns_queries=analysis.summary.dns_queries,
        rtt_ms_median=_median_ms(rtts),
        handshakes=len(rtts),
    )


def setup_delays_ns(
    records: Sequence[RequestRecord], analysis: Analysis, *, syn_data: Mapping[int, Sequence[int]] | None = None
) -> dict[int, int]:
    """Request index -> how long the request waited for a live connection, in ns.

    That is from the request's start (the app's clock) to the moment its first byte could go on
    the wire in the connection that carried it (the capture's clock): the end of the handshake
    (the SYN plus its round trip), or, for a connection whose SYN carried data (*syn_data*: client
    port -> times of such SYNs, TCP Fast Open), the SYN itself. Discovering a dead connection,
    asking DNS again and opening a new connection all land here. A request that went out on a
    connection opened before it started waited 0. Requests whose connection is not in the capture
    are left out. Both clocks are the host's realtime clock.
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
        in_syn = conn.syn_ns in (syn_data or {}).get(conn.orig_p, ())
        delays[record.index] = conn.syn_ns + (0 if in_syn else conn.handshake_rtt_ns or 0) - record.start_ns
    return delays
