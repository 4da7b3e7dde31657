"""Findings over connection records and DNS exchanges: what the half-closes cost.

Kinds (:class:`FindingKind`), one frozen record class each (:class:`StaleReuse`,
:class:`SilentHalfClose`, :class:`LostFinAck`; :data:`Finding` is any of them), every field
declared with its doc line:

* ``stale_reuse``: the originator (client) sent new data after the responder's (server's) FIN.
  Evidence: the server FIN time, the stale write time and bytes' segments, what followed
  (``outcome``: ``rst`` when the server answered with RST, ``fin`` when the client then closed,
  ``none``), the replacement connection (the next connection from the same client address to the
  same server, by name when both have one else by address and port, opened after the stale write
  and within ``replacement_window``), ``wasted_ns`` (stale write -> replacement SYN),
  ``wasted_rtts`` (that over the handshake RTT of the stale connection, else of the replacement),
  and ``dns_lookups`` (queries for the server's name in between, from any client address since a
  device may ask over IPv4 for a server it reaches over IPv6; without a name, any query from the
  client's address).
* ``silent_half_close``: the server closed first with a FIN and sent no RST before the client's
  answer; ``close_wait_ns`` is how long the client left its side open (server FIN -> client
  FIN/RST, or the end of the capture, ``ended_by`` says which), ``idle_ns`` the idle time before
  the FIN.
* ``lost_fin_ack``: the server retransmitted its FIN (its first FIN went unacknowledged); the
  finding's time is the first retransmission (``first_retransmit_ns``), ``fin_ns`` the original
  FIN, ``answered_by_rst`` whether the client's RST followed the FIN. A tail-loss probe is not
  one: a FIN retransmitted once, sooner than any retransmission timeout (:data:`TLP_BEFORE_NS`),
  and then acknowledged by the client (its first ACK covering the FIN comes after the
  retransmission, with no RST of the client before it) only shows that the client's delayed ACK
  was late, not that anything was lost.

Server idle timeouts: for every server (name, else address:port), the idle times before its
idle closes that followed data: connections whose closing record (close_notify, GOAWAY) the
server sent, whoever sent the first FIN or RST, and server-first FINs without a closing record
(samples below ``min_idle`` are closes right after a response, e.g. ``Connection: close``, and
are left out); the inferred timeout is their median, reported with min, max, the 10th and 90th
percentiles and the interquartile spread.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from halfclose.analysis._common import MISSING_CODE, MISSING_INT, grouped_quantile, server_label
from halfclose.analysis.dns import DnsQueries, QueryTimes
from halfclose.analysis.schema import CodedEnum, FieldSpec, column, fields_of
from halfclose.analysis.tcp import CloseKind, ConnectionTable, HalfCloseEnd, Side

__all__ = [
    "FINDING_FIELDS",
    "TLP_BEFORE_NS",
    "EndedBy",
    "Finding",
    "FindingKind",
    "LostFinAck",
    "Outcome",
    "ServerTimeout",
    "SilentHalfClose",
    "StaleReuse",
    "find_lost_fin_acks",
    "find_silent_half_closes",
    "find_stale_reuse",
    "server_groups",
    "server_timeouts",
]

_NS = 1_000_000_000
I64 = npt.NDArray[np.int64]

#: A FIN retransmitted sooner than this after the FIN is a tail-loss probe: Linux's minimum
#: retransmission timeout (TCP_RTO_MIN, 200 ms); its probe goes out after 2 RTTs + 2 ms.
TLP_BEFORE_NS = 200_000_000


class FindingKind(CodedEnum):
    """What a finding is about."""

    STALE_REUSE = "stale_reuse"
    SILENT_HALF_CLOSE = "silent_half_close"
    LOST_FIN_ACK = "lost_fin_ack"


class Outcome(CodedEnum):
    """What followed a stale write."""

    RST = "rst"  # the server answered with RST
    FIN = "fin"  # the client closed
    CLIENT_RST = "client_rst"  # the client reset
    NONE = "none"


class EndedBy(CodedEnum):
    """What ended a server-closed connection's CLOSE_WAIT at the client."""

    SERVER_RST = "server_rst"
    CLIENT_FIN = "client_fin"
    CLIENT_RST = "client_rst"
    CAPTURE_END = "capture_end"


@dataclass(frozen=True, slots=True, kw_only=True)
class _FindingBase:
    """What every finding has: its time, its connections and its server."""

    kind: ClassVar[FindingKind]
    ts_ns: int = column("when it happened", unit="ns")
    uids: tuple[str, ...] = column("the connections involved")
    server: str = column("the server (name, else address:port)")


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleReuse(_FindingBase):
    """The client sent new data after the server's FIN (``ts_ns``: the stale write; ``uids``: the
    stale connection, then the replacement when one was found)."""

    kind: ClassVar[FindingKind] = FindingKind.STALE_REUSE
    server_fin_ns: int = column("the server's FIN", unit="ns")
    stale_write_ns: int = column("the client's first new data after it", unit="ns")
    write_after_fin_ns: int = column("the one minus the other", unit="ns")
    stale_segments: int = column("segments of new data the client sent after the FIN", unit="segments")
    outcome: Outcome = column(
        "`rst` (the server answered with RST), `fin` (the client closed), `client_rst`, or `none`"
    )
    replacement_uid: str | None = column(
        "the replacement connection: the next connection from the same client address to the same server "
        "(same name when known, else the same address) and port, starting after the stale write and within "
        "`--replacement-window` (default 5 s); also the second uid"
    )
    wasted_ns: int | None = column("stale write -> the replacement's SYN", unit="ns")
    wasted_rtts: float | None = column("that over the stale connection's handshake RTT, else the replacement's")
    rtt_ns: int | None = column("that RTT", unit="ns")
    dns_lookups: int = column(
        "DNS queries for the server's name in between, from any client address, since a phone may ask over "
        "IPv4 for a server it reaches over IPv6 (on a capture of many hosts, other hosts' queries for the "
        "same name in those moments count too); without a name, any query from the client's address"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SilentHalfClose(_FindingBase):
    """The server closed first with a FIN (``ts_ns``: that FIN)."""

    kind: ClassVar[FindingKind] = FindingKind.SILENT_HALF_CLOSE
    idle_ns: int | None = column("the idle time before the server's close (`idle_before_close_ns`)", unit="ns")
    close_wait_ns: int | None = column("server FIN -> the client's FIN or RST, or the end", unit="ns")
    ended_by: EndedBy = column("what ended it")
    stale_write: bool = column("whether a stale write followed")


@dataclass(frozen=True, slots=True, kw_only=True)
class LostFinAck(_FindingBase):
    """The server retransmitted its FIN, and not as a tail-loss probe answered by the client's ACK
    (``ts_ns``: the first retransmission)."""

    kind: ClassVar[FindingKind] = FindingKind.LOST_FIN_ACK
    fin_ns: int = column("the original FIN", unit="ns")
    first_retransmit_ns: int = column("its first retransmission", unit="ns")
    fin_retransmits: int = column("how many retransmissions", unit="segments")
    answered_by_rst: bool = column("the client's RST came after the FIN")
    client_rst_ns: int | None = column("that RST", unit="ns")
    closed_first: Side | None = column("the side that closed first")


#: Any finding.
Finding = StaleReuse | SilentHalfClose | LostFinAck

#: The declared fields of each finding kind (the common ones first).
FINDING_FIELDS: dict[FindingKind, tuple[FieldSpec, ...]] = {
    cls.kind: fields_of(cls) for cls in (StaleReuse, SilentHalfClose, LostFinAck)
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTimeout:
    """The idle timeout inferred for one server from its idle closes (seconds)."""

    server: str = column("the server (name, else address:port)")
    idle_timeout_s: float = column("the median idle time before its closes", unit="s")
    samples: int = column("idle closes measured")
    min_s: float = column("the shortest", unit="s")
    p10_s: float = column("10th percentile", unit="s")
    p90_s: float = column("90th percentile", unit="s")
    max_s: float = column("the longest", unit="s")
    spread_s: float = column("interquartile range", unit="s")
    address: str = column("the responder address:port of the first sample")


def _opt(v: int) -> int | None:
    return None if v == MISSING_INT else v


def server_groups(table: ConnectionTable) -> I64:
    """Per connection, a server id: the name when known, else the responder address and port."""
    c = table.cols
    named = c["server_name"] != MISSING_CODE
    key = np.where(named, c["server_name"], len(table.names) + c["resp_h"] * 65536 + c["resp_p"])
    return key.astype(np.int64)


def _outcome(t_w: int, resp_rst: int | None, orig_fin: int | None, orig_rst: int | None) -> Outcome:
    if resp_rst is not None and resp_rst >= t_w:
        return Outcome.RST
    if orig_fin is not None and orig_fin >= t_w:
        return Outcome.FIN
    if orig_rst is not None and orig_rst >= t_w:
        return Outcome.CLIENT_RST
    return Outcome.NONE


def find_stale_reuse(
    table: ConnectionTable, queries: DnsQueries | None = None, *, replacement_window_s: float = 5.0
) -> list[StaleReuse]:
    """Stale-reuse findings, one per connection the client wrote into after the server's FIN."""
    c = table.cols
    window = int(replacement_window_s * _NS)
    stale = np.flatnonzero((c["stale_write_ns"] != MISSING_INT) & (c["resp_fin_ns"] != MISSING_INT))
    if not stale.size:
        return []
    # candidates: same client address, same server (name, else address) and port, by start time
    named = c["server_name"] != MISSING_CODE
    server = np.where(named, c["server_name"], len(table.names) + c["resp_h"])
    order = np.lexsort((c["ts_ns"], server, c["resp_p"], c["orig_h"]))
    keys = np.stack([c["orig_h"][order], c["resp_p"][order], server[order]], axis=1)
    new_group = np.ones(order.size, dtype=bool)
    new_group[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    gid_sorted = np.cumsum(new_group) - 1
    gid = np.empty_like(gid_sorted)
    gid[order] = gid_sorted
    g_lo = np.searchsorted(gid_sorted, gid[stale], "left")
    g_hi = np.searchsorted(gid_sorted, gid[stale], "right")
    ts_sorted = c["ts_ns"][order].tolist()
    order_l = order.tolist()
    lo_l, hi_l = g_lo.tolist(), g_hi.tolist()
    own = {name: c[name][stale].tolist() for name in (
        "stale_write_ns", "resp_fin_ns", "handshake_rtt_ns", "stale_writes", "resp_rst_ns", "orig_fin_ns",
        "orig_rst_ns")}  # fmt: skip
    uids, servers = table.uid_texts(stale), table.servers(stale)
    out: list[StaleReuse] = []
    for k, i in enumerate(stale.tolist()):
        t_w = own["stale_write_ns"][k]
        fin = own["resp_fin_ns"][k]
        j = bisect.bisect_left(ts_sorted, t_w, lo_l[k], hi_l[k])
        repl = -1
        while j < hi_l[k] and ts_sorted[j] - t_w <= window:
            if order_l[j] != i:
                repl = order_l[j]
                break
            j += 1
        rtt = _opt(own["handshake_rtt_ns"][k])
        uid = uids[k]
        repl_uid = wasted = None
        rtts = None
        lookups = 0
        if repl >= 0:
            syn = _opt(int(c["syn_ns"][repl]))
            t_r = syn if syn is not None else int(c["ts_ns"][repl])
            rtt = rtt or _opt(int(c["handshake_rtt_ns"][repl]))
            name = table.names[int(c["server_name"][i])] if named[i] else None
            # With a name: its queries from any client address (a phone asks over IPv4 for a
            # server it reaches over IPv6); without: any query from the same client address.
            qt = QueryTimes() if queries is None else (
                queries.every if name else queries.of(table.addresses[int(c["orig_h"][i])])
            )  # fmt: skip
            lo, hi = bisect.bisect_left(qt.times, t_w), bisect.bisect_right(qt.times, t_r)
            lookups = sum(1 for q in qt.names[lo:hi] if not name or q == name)
            repl_uid, wasted = table.uid(repl), t_r - t_w
            rtts = round(wasted / rtt, 2) if rtt else None
        out.append(
            StaleReuse(
                ts_ns=t_w, uids=(uid,) if repl_uid is None else (uid, repl_uid), server=servers[k],
                server_fin_ns=fin, stale_write_ns=t_w, write_after_fin_ns=t_w - fin,
                stale_segments=own["stale_writes"][k],
                outcome=_outcome(t_w, *(_opt(own[x][k]) for x in ("resp_rst_ns", "orig_fin_ns", "orig_rst_ns"))),
                replacement_uid=repl_uid, wasted_ns=wasted, wasted_rtts=rtts, rtt_ns=rtt, dns_lookups=lookups,
            )
        )  # fmt: skip
    return out


def _server_first(c: dict[str, I64]) -> npt.NDArray[np.bool_]:
    first: npt.NDArray[np.bool_] = (c["closed_first"] == Side.RESP.code) & (c["close_kind"] == CloseKind.FIN.code)
    return first


def find_silent_half_closes(table: ConnectionTable) -> list[SilentHalfClose]:
    """Connections the server closed first with a FIN."""
    c = table.cols
    rows = np.flatnonzero(_server_first(c))
    out: list[SilentHalfClose] = []
    ends = c["half_close_end"][rows].tolist()
    rr = c["resp_rst_ns"][rows].tolist()
    orr = c["orig_rst_ns"][rows].tolist()
    fins = c["resp_fin_ns"][rows].tolist()
    idles = c["idle_before_close_ns"][rows].tolist()
    halves = c["half_closed_ns"][rows].tolist()
    stales = c["stale_write_ns"][rows].tolist()
    uids, servers = table.uid_texts(rows), table.servers(rows)
    end_rst, end_fin = HalfCloseEnd.RST.code, HalfCloseEnd.FIN.code
    server_rst, client_fin, client_rst, capture_end = (
        EndedBy.SERVER_RST, EndedBy.CLIENT_FIN, EndedBy.CLIENT_RST, EndedBy.CAPTURE_END
    )  # fmt: skip
    for k, end in enumerate(ends):
        if end == end_rst and rr[k] != MISSING_INT and (orr[k] == MISSING_INT or rr[k] < orr[k]):
            ended_by = server_rst
        elif end == end_fin:
            ended_by = client_fin
        elif end == end_rst:
            ended_by = client_rst
        else:
            ended_by = capture_end
        idle, half = idles[k], halves[k]
        out.append(
            SilentHalfClose(
                ts_ns=fins[k], uids=(uids[k],), server=servers[k], idle_ns=None if idle == MISSING_INT else idle,
                close_wait_ns=None if half == MISSING_INT else half, ended_by=ended_by,
                stale_write=stales[k] != MISSING_INT,
            )
        )  # fmt: skip
    return out


def find_lost_fin_acks(table: ConnectionTable) -> list[LostFinAck]:
    """Connections whose server retransmitted its FIN, other than tail-loss probes."""
    c = table.cols
    acked = c["resp_fin_acked_ns"]
    orst_all = c["orig_rst_ns"]
    retx_ns = c["resp_fin_retransmit_ns"]
    # a tail-loss probe: one retransmission sooner than any retransmission timeout could fire,
    # then the client's (late) ACK, no RST before it
    probe = (
        (c["resp_fin_retransmits"] == 1) & (retx_ns - c["resp_fin_ns"] < TLP_BEFORE_NS)
        & (acked != MISSING_INT) & (acked > retx_ns) & ((orst_all == MISSING_INT) | (orst_all > acked))
    )  # fmt: skip
    rows = np.flatnonzero((c["resp_fin_retransmits"] > 0) & (c["resp_fin_ns"] != MISSING_INT) & ~probe)
    out: list[LostFinAck] = []
    fins, retxs, orsts = (c[name][rows].tolist() for name in ("resp_fin_ns", "resp_fin_retransmit_ns", "orig_rst_ns"))
    counts, firsts = c["resp_fin_retransmits"][rows].tolist(), c["closed_first"][rows].tolist()
    uids, servers = table.uid_texts(rows), table.servers(rows)
    sides = tuple(Side)
    for k, fin in enumerate(fins):
        retx = retxs[k]
        orst = _opt(orsts[k])
        rst = orst is not None and orst >= fin
        out.append(
            LostFinAck(
                ts_ns=retx, uids=(uids[k],), server=servers[k], fin_ns=fin, first_retransmit_ns=retx,
                fin_retransmits=counts[k], answered_by_rst=rst, client_rst_ns=orst if rst else None,
                closed_first=None if firsts[k] == MISSING_CODE else sides[firsts[k]],
            )
        )  # fmt: skip
    return out


def _server_idle_close(c: dict[str, I64]) -> npt.NDArray[np.bool_]:
    """The server closed at its idle timer: its closing record, else its FIN first."""
    side = c["closing_side"]
    by_server: npt.NDArray[np.bool_] = (side == Side.RESP.code) | ((side == MISSING_CODE) & _server_first(c))
    return by_server


def server_timeouts(table: ConnectionTable, *, min_idle_s: float = 0.1) -> list[ServerTimeout]:
    """Inferred idle timeouts per server, most samples first."""
    c = table.cols
    idle = c["idle_before_close_ns"]
    rows = np.flatnonzero(_server_idle_close(c) & (idle != MISSING_INT) & (idle >= int(min_idle_s * _NS)))
    if not rows.size:
        return []
    g = server_groups(table)[rows]
    vals = idle[rows] / _NS
    o = np.lexsort((vals, g))
    g, vals, rows = g[o], vals[o], rows[o]
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    stops = np.append(starts[1:], g.size)
    size = stops - starts
    q10, q25, q50, q75, q90 = (grouped_quantile(vals, starts, size, q).tolist() for q in (0.1, 0.25, 0.5, 0.75, 0.9))
    vmin, vmax = vals[starts].tolist(), vals[stops - 1].tolist()
    out: list[ServerTimeout] = []
    for k, (a, b) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
        i = int(rows[a])
        address = server_label(table.addresses[int(c["resp_h"][i])], int(c["resp_p"][i]), int(c["ip_version"][i]))
        out.append(
            ServerTimeout(
                server=table.server_of(i), idle_timeout_s=round(q50[k], 3), samples=b - a, min_s=round(vmin[k], 3),
                p10_s=round(q10[k], 3), p90_s=round(q90[k], 3), max_s=round(vmax[k], 3),
                spread_s=round(q75[k] - q25[k], 3), address=address,
            )
        )  # fmt: skip
    out.sort(key=lambda s: (-s.samples, s.server))
    return out
