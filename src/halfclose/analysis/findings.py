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
import itertools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from halfclose.analysis._common import (
    MISSING_CODE,
    MISSING_INT,
    grouped_quantile,
    optional_ints,
    records,
    server_label,
)
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


_OUTCOMES = np.array(tuple(Outcome), dtype=object)
_ENDED_BY = np.array(tuple(EndedBy), dtype=object)
_SIDES = np.array((*Side, None), dtype=object)  # by code, None at MISSING_CODE (-1)


def _after(times: I64, t: I64) -> npt.NDArray[np.bool_]:
    """Per row: *times* is present and not before *t*."""
    at: npt.NDArray[np.bool_] = (times != MISSING_INT) & (times >= t)
    return at


def _outcomes(t_w: I64, resp_rst: I64, orig_fin: I64, orig_rst: I64) -> list[Outcome]:
    """What followed each stale write: the server's RST, else the client's FIN, else its RST."""
    code = np.select(
        [_after(resp_rst, t_w), _after(orig_fin, t_w), _after(orig_rst, t_w)],
        [Outcome.RST.code, Outcome.FIN.code, Outcome.CLIENT_RST.code], Outcome.NONE.code,
    )  # fmt: skip
    out: list[Outcome] = _OUTCOMES[code].tolist()
    return out


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
    span = int(server.max()) + 1
    if (int(c["orig_h"].max()) + 1) * 65536 < np.iinfo(np.int64).max // span:  # one key: address, port, server
        key = (c["orig_h"] * 65536 + c["resp_p"]) * span + server
        order = np.lexsort((c["ts_ns"], key))
        new_group = np.ones(order.size, dtype=bool)
        new_group[1:] = key[order][1:] != key[order][:-1]
    else:
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
    t_w_all, fin_all = c["stale_write_ns"][stale], c["resp_fin_ns"][stale]
    writes = t_w_all.tolist()
    n = int(stale.size)
    repl_uids: list[str | None] = [None] * n
    wasted_l: list[int | None] = [None] * n
    rtts_l: list[float | None] = [None] * n
    rtt_l = optional_ints(c["handshake_rtt_ns"][stale])
    lookups_l = [0] * n
    for k, (i, t_w, lo, hi) in enumerate(zip(stale.tolist(), writes, g_lo.tolist(), g_hi.tolist(), strict=True)):
        j = bisect.bisect_left(ts_sorted, t_w, lo, hi)
        repl = -1
        while j < hi and ts_sorted[j] - t_w <= window:
            if order_l[j] != i:
                repl = order_l[j]
                break
            j += 1
        if repl < 0:
            continue
        syn = _opt(int(c["syn_ns"][repl]))
        t_r = syn if syn is not None else int(c["ts_ns"][repl])
        rtt = rtt_l[k] = rtt_l[k] or _opt(int(c["handshake_rtt_ns"][repl]))
        name = table.names[int(c["server_name"][i])] if named[i] else None
        # With a name: its queries from any client address (a phone asks over IPv4 for a
        # server it reaches over IPv6); without: any query from the same client address.
        qt = QueryTimes() if queries is None else (
            queries.every if name else queries.of(table.addresses[int(c["orig_h"][i])])
        )  # fmt: skip
        q_lo, q_hi = bisect.bisect_left(qt.times, t_w), bisect.bisect_right(qt.times, t_r)
        lookups_l[k] = sum(1 for q in qt.names[q_lo:q_hi] if not name or q == name)
        repl_uids[k], wasted = table.uid(repl), t_r - t_w
        wasted_l[k] = wasted
        rtts_l[k] = round(wasted / rtt, 2) if rtt else None
    uids = table.uid_texts(stale)
    return records(StaleReuse, n, {
        "ts_ns": writes, "uids": [(u,) if r is None else (u, r) for u, r in zip(uids, repl_uids, strict=True)],
        "server": table.servers(stale), "server_fin_ns": fin_all.tolist(), "stale_write_ns": writes,
        "write_after_fin_ns": (t_w_all - fin_all).tolist(), "stale_segments": c["stale_writes"][stale].tolist(),
        "outcome": _outcomes(t_w_all, *(c[x][stale] for x in ("resp_rst_ns", "orig_fin_ns", "orig_rst_ns"))),
        "replacement_uid": repl_uids, "wasted_ns": wasted_l, "wasted_rtts": rtts_l, "rtt_ns": rtt_l,
        "dns_lookups": lookups_l,
    })  # fmt: skip


def _server_first(c: dict[str, I64]) -> npt.NDArray[np.bool_]:
    first: npt.NDArray[np.bool_] = (c["closed_first"] == Side.RESP.code) & (c["close_kind"] == CloseKind.FIN.code)
    return first


def find_silent_half_closes(table: ConnectionTable) -> list[SilentHalfClose]:
    """Connections the server closed first with a FIN."""
    c = table.cols
    rows = np.flatnonzero(_server_first(c))
    end = c["half_close_end"][rows]
    rr, orr = c["resp_rst_ns"][rows], c["orig_rst_ns"][rows]
    by_rst = end == HalfCloseEnd.RST.code
    ended_by = np.select(
        [by_rst & (rr != MISSING_INT) & ((orr == MISSING_INT) | (rr < orr)), end == HalfCloseEnd.FIN.code, by_rst],
        [EndedBy.SERVER_RST.code, EndedBy.CLIENT_FIN.code, EndedBy.CLIENT_RST.code], EndedBy.CAPTURE_END.code,
    )  # fmt: skip
    return records(SilentHalfClose, int(rows.size), {
        "ts_ns": c["resp_fin_ns"][rows].tolist(), "uids": list(zip(table.uid_texts(rows))),
        "server": table.servers(rows), "idle_ns": optional_ints(c["idle_before_close_ns"][rows]),
        "close_wait_ns": optional_ints(c["half_closed_ns"][rows]), "ended_by": _ENDED_BY[ended_by].tolist(),
        "stale_write": (c["stale_write_ns"][rows] != MISSING_INT).tolist(),
    })  # fmt: skip


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
    fin, orst = c["resp_fin_ns"][rows], orst_all[rows]
    rst = _after(orst, fin)
    retx = retx_ns[rows].tolist()
    return records(LostFinAck, int(rows.size), {
        "ts_ns": retx, "uids": list(zip(table.uid_texts(rows))), "server": table.servers(rows),
        "fin_ns": fin.tolist(), "first_retransmit_ns": retx,
        "fin_retransmits": c["resp_fin_retransmits"][rows].tolist(),
        "answered_by_rst": rst.tolist(), "client_rst_ns": optional_ints(np.where(rst, orst, MISSING_INT)),
        "closed_first": _SIDES[c["closed_first"][rows]].tolist(),
    })  # fmt: skip


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
    q10, q25, q50, q75, q90 = (grouped_quantile(vals, starts, size, q) for q in (0.1, 0.25, 0.5, 0.75, 0.9))
    first = rows[starts]
    ends = zip(c["resp_h"][first].tolist(), c["resp_p"][first].tolist(), c["ip_version"][first].tolist(), strict=True)
    address = [server_label(table.addresses[ai], port, v) for ai, port, v in ends]

    def seconds(values: npt.NDArray[np.float64]) -> list[float]:
        return list(map(round, values.tolist(), itertools.repeat(3)))

    out = records(ServerTimeout, int(starts.size), {
        "server": table.servers(first), "idle_timeout_s": seconds(q50), "samples": size.tolist(),
        "min_s": seconds(vals[starts]), "p10_s": seconds(q10), "p90_s": seconds(q90), "max_s": seconds(vals[stops - 1]),
        "spread_s": seconds(q75 - q25), "address": address,
    })  # fmt: skip
    out.sort(key=lambda s: (-s.samples, s.server))
    return out
