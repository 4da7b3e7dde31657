"""Findings over connection records and DNS exchanges: what the half-closes cost.

Kinds (:class:`FindingKind`):

* ``stale_reuse``: the originator (client) sent new data after the responder's (server's) FIN.
  Evidence: the server FIN time, the stale write time and bytes' segments, what followed
  (``outcome``: ``rst`` when the server answered with RST, ``fin`` when the client then closed,
  ``none``), the replacement connection (the next connection from the same client address to the
  same server, by name when both have one else by address and port, opened after the stale write
  and within ``replacement_window``), ``wasted_ns`` (stale write -> replacement SYN),
  ``wasted_rtts`` (that over the handshake RTT of the stale connection, else of the replacement),
  and ``dns_lookups`` (queries from the client for the server's name in between).
* ``silent_half_close``: the server closed first with a FIN and sent no RST before the client's
  answer; ``close_wait_ns`` is how long the client left its side open (server FIN -> client
  FIN/RST, or the end of the capture, ``ended_by`` says which), ``idle_ns`` the idle time before
  the FIN.
* ``lost_fin_ack``: the server retransmitted its FIN (its first FIN went unacknowledged);
  ``answered_by_rst`` says whether the client's RST followed.

Server idle timeouts: for every server (name, else address:port), the idle times before its
server-first FINs that followed data (samples below ``min_idle`` are closes right after a
response, e.g. ``Connection: close``, and are left out); the inferred timeout is their median,
reported with min, max, the 10th and 90th percentiles and the interquartile spread.
"""

from __future__ import annotations

import bisect
import enum
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from halfclose.analysis.dns import DnsExchange
from halfclose.analysis.tcp import Connection, HalfCloseEnd, Side

__all__ = [
    "Finding",
    "FindingKind",
    "ServerTimeout",
    "find_lost_fin_acks",
    "find_silent_half_closes",
    "find_stale_reuse",
    "server_timeouts",
]

_NS = 1_000_000_000


@enum.unique
class FindingKind(enum.StrEnum):
    """What a finding is about."""

    STALE_REUSE = "stale_reuse"
    SILENT_HALF_CLOSE = "silent_half_close"
    LOST_FIN_ACK = "lost_fin_ack"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One finding about one or two connections.

    Fields:
        kind: :class:`FindingKind`.
        ts_ns: when it happened (the stale write, the server FIN, the FIN retransmission).
        uids: the connections involved (for stale_reuse: the stale one, then the replacement).
        server: the server (name, else address:port).
        evidence: numbers and words behind the finding (documented per kind in the module
            docstring); only ints, floats, strings, booleans and None.
    """

    kind: FindingKind
    ts_ns: int
    uids: tuple[str, ...]
    server: str
    evidence: dict[str, int | float | str | bool | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTimeout:
    """The idle timeout inferred for one server from its idle closes (seconds).

    Fields: server, idle_timeout_s (median), samples, min_s, p10_s, p90_s, max_s, spread_s
    (interquartile range), address (the responder address:port seen most).
    """

    server: str
    idle_timeout_s: float
    samples: int
    min_s: float
    p10_s: float
    p90_s: float
    max_s: float
    spread_s: float
    address: str


def _server_key(c: Connection) -> tuple[str, str]:
    return (c.server_name or "", c.resp_h)


def find_stale_reuse(
    conns: Sequence[Connection],
    dns: Sequence[DnsExchange] = (),
    *,
    replacement_window_s: float = 5.0,
) -> list[Finding]:
    """Stale-reuse findings; *conns* ordered by first packet."""
    window = int(replacement_window_s * _NS)
    by_client: dict[str, list[Connection]] = defaultdict(list)
    for c in conns:
        by_client[c.orig_h].append(c)
    starts = {k: [c.ts_ns for c in v] for k, v in by_client.items()}
    dns_by_client: dict[str, list[DnsExchange]] = defaultdict(list)
    for ex in dns:
        if ex.queries:
            dns_by_client[ex.client_h].append(ex)
    dns_ts = {k: [ex.ts_ns for ex in v] for k, v in dns_by_client.items()}
    out: list[Finding] = []
    for c in conns:
        if c.stale_write_ns is None or c.resp_fin_ns is None:
            continue
        t_w = c.stale_write_ns
        outcome = "none"
        if c.resp_rst_ns is not None and c.resp_rst_ns >= t_w:
            outcome = "rst"
        elif c.orig_fin_ns is not None and c.orig_fin_ns >= t_w:
            outcome = "fin"
        elif c.orig_rst_ns is not None and c.orig_rst_ns >= t_w:
            outcome = "client_rst"
        cands = by_client[c.orig_h]
        st = starts[c.orig_h]
        repl: Connection | None = None
        i = bisect.bisect_left(st, t_w)
        while i < len(cands) and st[i] - t_w <= window:
            d = cands[i]
            same_server = (
                d.server_name == c.server_name
                if d.server_name and c.server_name
                else (d.resp_h == c.resp_h)
            )
            if d is not c and same_server and d.resp_p == c.resp_p:
                repl = d
                break
            i += 1
        ev: dict[str, int | float | str | bool | None] = {
            "server_fin_ns": c.resp_fin_ns,
            "stale_write_ns": t_w,
            "write_after_fin_ns": t_w - c.resp_fin_ns,
            "stale_segments": c.stale_writes,
            "outcome": outcome,
            "replacement_uid": None,
            "wasted_ns": None,
            "wasted_rtts": None,
            "rtt_ns": c.handshake_rtt_ns,
            "dns_lookups": 0,
        }
        uids: tuple[str, ...] = (c.uid,)
        if repl is not None:
            t_r = repl.syn_ns if repl.syn_ns is not None else repl.ts_ns
            rtt = c.handshake_rtt_ns or repl.handshake_rtt_ns
            qs = dns_by_client.get(c.orig_h, [])
            qt = dns_ts.get(c.orig_h, [])
            lo, hi = bisect.bisect_left(qt, t_w), bisect.bisect_right(qt, t_r)
            lookups = [ex for ex in qs[lo:hi] if not c.server_name or ex.qname == c.server_name]
            ev.update(
                replacement_uid=repl.uid,
                wasted_ns=t_r - t_w,
                wasted_rtts=round((t_r - t_w) / rtt, 2) if rtt else None,
                rtt_ns=rtt,
                dns_lookups=len(lookups),
            )
            uids = (c.uid, repl.uid)
        out.append(Finding(kind=FindingKind.STALE_REUSE, ts_ns=t_w, uids=uids, server=c.server, evidence=ev))
    return out


def find_silent_half_closes(conns: Sequence[Connection]) -> list[Finding]:
    """Connections the server closed first with a FIN (no RST of its own before the client's answer)."""
    out: list[Finding] = []
    for c in conns:
        if not c.is_server_closed_first() or c.resp_fin_ns is None:
            continue
        end = c.half_close_end
        if end is HalfCloseEnd.RST and c.resp_rst_ns is not None and (
            c.orig_rst_ns is None or c.resp_rst_ns < c.orig_rst_ns
        ):
            ended_by = "server_rst"
        elif end is HalfCloseEnd.FIN:
            ended_by = "client_fin"
        elif end is HalfCloseEnd.RST:
            ended_by = "client_rst"
        else:
            ended_by = "capture_end"
        out.append(
            Finding(
                kind=FindingKind.SILENT_HALF_CLOSE,
                ts_ns=c.resp_fin_ns,
                uids=(c.uid,),
                server=c.server,
                evidence={
                    "idle_ns": c.idle_before_close_ns,
                    "close_wait_ns": c.half_closed_ns,
                    "ended_by": ended_by,
                    "stale_write": c.stale_write_ns is not None,
                },
            )
        )
    return out


def find_lost_fin_acks(conns: Sequence[Connection]) -> list[Finding]:
    """Connections whose server retransmitted its FIN."""
    out: list[Finding] = []
    for c in conns:
        if c.resp_fin_retransmits <= 0 or c.resp_fin_ns is None:
            continue
        rst = c.orig_rst_ns is not None and c.orig_rst_ns >= c.resp_fin_ns
        out.append(
            Finding(
                kind=FindingKind.LOST_FIN_ACK,
                ts_ns=c.resp_fin_ns,
                uids=(c.uid,),
                server=c.server,
                evidence={
                    "fin_retransmits": c.resp_fin_retransmits,
                    "answered_by_rst": rst,
                    "client_rst_ns": c.orig_rst_ns if rst else None,
                    "closed_first": str(c.closed_first) if c.closed_first else None,
                },
            )
        )
    return out


def server_timeouts(conns: Sequence[Connection], *, min_idle_s: float = 0.1) -> list[ServerTimeout]:
    """Inferred idle timeouts per server, most samples first."""
    samples: dict[str, list[float]] = defaultdict(list)
    addrs: dict[str, list[str]] = defaultdict(list)
    for c in conns:
        if c.closed_first is not Side.RESP or not c.is_server_closed_first():
            continue
        if c.idle_before_close_ns is None or c.idle_before_close_ns < min_idle_s * _NS:
            continue
        samples[c.server].append(c.idle_before_close_ns / _NS)
        addrs[c.server].append(
            f"[{c.resp_h}]:{c.resp_p}" if c.ip_version == 6 else f"{c.resp_h}:{c.resp_p}"
        )
    out: list[ServerTimeout] = []
    for server, vals in samples.items():
        arr = np.asarray(vals)
        q10, q25, q75, q90 = (float(x) for x in np.quantile(arr, [0.1, 0.25, 0.75, 0.9]))
        out.append(
            ServerTimeout(
                server=server,
                idle_timeout_s=round(float(np.median(arr)), 3),
                samples=len(vals),
                min_s=round(float(arr.min()), 3),
                p10_s=round(q10, 3),
                p90_s=round(q90, 3),
                max_s=round(float(arr.max()), 3),
                spread_s=round(q75 - q25, 3),
                address=statistics.mode(addrs[server]),
            )
        )
    out.sort(key=lambda s: (-s.samples, s.server))
    return out
