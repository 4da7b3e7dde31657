"""Findings over connection records and DNS exchanges: what the half-closes cost.

Kinds (:class:`FindingKind`):

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
  one: a FIN retransmitted once and then acknowledged by the client (its first ACK covering the
  FIN comes after the retransmission, with no RST of the client before it) only shows that the
  client's delayed ACK was late, not that anything was lost.

Server idle timeouts: for every server (name, else address:port), the idle times before its
server-first FINs that followed data (samples below ``min_idle`` are closes right after a
response, e.g. ``Connection: close``, and are left out); the inferred timeout is their median,
reported with min, max, the 10th and 90th percentiles and the interquartile spread.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from halfclose.analysis.dns import ANY_CLIENT
from halfclose.analysis.tcp import ENDS, NONE, ConnectionTable, HalfCloseEnd

__all__ = [
    "Finding",
    "FindingKind",
    "ServerTimeout",
    "find_lost_fin_acks",
    "find_silent_half_closes",
    "find_stale_reuse",
    "server_groups",
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
    (interquartile range), address (the responder address:port of the first sample).
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


def _server_of(table: ConnectionTable, i: int) -> str:
    c = table.cols
    ni = int(c["server_name"][i])
    if ni >= 0:
        return table.names[ni]
    a = table.addresses[int(c["resp_addr"][i])]
    p = int(c["resp_p"][i])
    return f"[{a}]:{p}" if int(c["ip_version"][i]) == 6 else f"{a}:{p}"


def _opt(v: Any) -> int | None:
    v = int(v)
    return None if v == NONE else v


def server_groups(table: ConnectionTable) -> npt.NDArray[np.int64]:
    """Per connection, a server id: the name when known, else the responder address and port."""
    c = table.cols
    named = c["server_name"] >= 0
    key = np.where(named, c["server_name"], len(table.names) + c["resp_addr"] * 65536 + c["resp_p"])
    return key.astype(np.int64)


def find_stale_reuse(
    table: ConnectionTable,
    dns_queries: dict[str, tuple[list[int], list[str]]] | None = None,
    *,
    replacement_window_s: float = 5.0,
) -> list[Finding]:
    """Stale-reuse findings, one per connection the client wrote into after the server's FIN."""
    c = table.cols
    window = int(replacement_window_s * _NS)
    stale = np.flatnonzero((c["stale_write_ns"] != NONE) & (c["resp_fin_ns"] != NONE))
    if not stale.size:
        return []
    # candidates: same client address, same server (name, else address) and port, by start time
    named = c["server_name"] >= 0
    server = np.where(named, c["server_name"], len(table.names) + c["resp_addr"])
    order = np.lexsort((c["ts_ns"], server, c["resp_p"], c["orig_addr"]))
    keys = np.stack([c["orig_addr"][order], c["resp_p"][order], server[order]], axis=1)
    new_group = np.ones(order.size, dtype=bool)
    new_group[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    gid_sorted = np.cumsum(new_group) - 1
    gid = np.empty_like(gid_sorted)
    gid[order] = gid_sorted
    g_lo = np.searchsorted(gid_sorted, gid[stale], "left")
    g_hi = np.searchsorted(gid_sorted, gid[stale], "right")
    ts_sorted = c["ts_ns"][order].tolist()
    order_l = order.tolist()
    queries = dns_queries or {}
    out: list[Finding] = []
    for k, i in enumerate(stale.tolist()):
        t_w = int(c["stale_write_ns"][i])
        fin = int(c["resp_fin_ns"][i])
        resp_rst, orig_fin, orig_rst = (_opt(c[x][i]) for x in ("resp_rst_ns", "orig_fin_ns", "orig_rst_ns"))
        outcome = "none"
        if resp_rst is not None and resp_rst >= t_w:
            outcome = "rst"
        elif orig_fin is not None and orig_fin >= t_w:
            outcome = "fin"
        elif orig_rst is not None and orig_rst >= t_w:
            outcome = "client_rst"
        j = bisect.bisect_left(ts_sorted, t_w, int(g_lo[k]), int(g_hi[k]))
        repl = -1
        while j < int(g_hi[k]) and ts_sorted[j] - t_w <= window:
            if order_l[j] != i:
                repl = order_l[j]
                break
            j += 1
        rtt = _opt(c["handshake_rtt_ns"][i])
        ev: dict[str, int | float | str | bool | None] = {
            "server_fin_ns": fin,
            "stale_write_ns": t_w,
            "write_after_fin_ns": t_w - fin,
            "stale_segments": int(c["stale_writes"][i]),
            "outcome": outcome,
            "replacement_uid": None,
            "wasted_ns": None,
            "wasted_rtts": None,
            "rtt_ns": rtt,
            "dns_lookups": 0,
        }
        uid = table.uids[i].decode()
        uids: tuple[str, ...] = (uid,)
        name = table.names[int(c["server_name"][i])] if named[i] else None
        if repl >= 0:
            syn = _opt(c["syn_ns"][repl])
            t_r = syn if syn is not None else int(c["ts_ns"][repl])
            rtt = rtt or _opt(c["handshake_rtt_ns"][repl])
            # With a name: its queries from any client address (a phone asks over IPv4 for a
            # server it reaches over IPv6); without: any query from the same client address.
            client = ANY_CLIENT if name else table.addresses[int(c["orig_addr"][i])]
            qt, qn = queries.get(client, ([], []))
            lo, hi = bisect.bisect_left(qt, t_w), bisect.bisect_right(qt, t_r)
            lookups = sum(1 for q in qn[lo:hi] if not name or q == name)
            ev.update(
                replacement_uid=table.uids[repl].decode(),
                wasted_ns=t_r - t_w,
                wasted_rtts=round((t_r - t_w) / rtt, 2) if rtt else None,
                rtt_ns=rtt,
                dns_lookups=lookups,
            )
            uids = (uid, table.uids[repl].decode())
        out.append(
            Finding(
                kind=FindingKind.STALE_REUSE, ts_ns=t_w, uids=uids, server=_server_of(table, i), evidence=ev
            )
        )
    return out


def find_silent_half_closes(table: ConnectionTable) -> list[Finding]:
    """Connections the server closed first with a FIN."""
    c = table.cols
    rows = np.flatnonzero((c["closed_first"] == 1) & (c["close_kind"] == 0))
    out: list[Finding] = []
    ends = c["half_close_end"][rows].tolist()
    rr = c["resp_rst_ns"][rows].tolist()
    orr = c["orig_rst_ns"][rows].tolist()
    fins = c["resp_fin_ns"][rows].tolist()
    idles = c["idle_before_close_ns"][rows].tolist()
    halves = c["half_closed_ns"][rows].tolist()
    stales = c["stale_write_ns"][rows].tolist()
    uids = table.uids[rows].tolist()
    end_rst, end_fin = ENDS.index(HalfCloseEnd.RST), ENDS.index(HalfCloseEnd.FIN)
    kind = FindingKind.SILENT_HALF_CLOSE
    for k, i in enumerate(rows.tolist()):
        end = ends[k]
        if end == end_rst and rr[k] != NONE and (orr[k] == NONE or rr[k] < orr[k]):
            ended_by = "server_rst"
        elif end == end_fin:
            ended_by = "client_fin"
        elif end == end_rst:
            ended_by = "client_rst"
        else:
            ended_by = "capture_end"
        out.append(
            Finding(
                kind=kind,
                ts_ns=fins[k],
                uids=(uids[k].decode(),),
                server=_server_of(table, i),
                evidence={
                    "idle_ns": None if idles[k] == NONE else idles[k],
                    "close_wait_ns": None if halves[k] == NONE else halves[k],
                    "ended_by": ended_by,
                    "stale_write": stales[k] != NONE,
                },
            )
        )
    return out


def find_lost_fin_acks(table: ConnectionTable) -> list[Finding]:
    """Connections whose server retransmitted its FIN."""
    c = table.cols
    acked = c["resp_fin_acked_ns"]
    orst_all = c["orig_rst_ns"]
    # a tail-loss probe: one retransmission, then the client's (late) ACK, no RST before it
    probe = (
        (c["resp_fin_retransmits"] == 1) & (acked != NONE) & (acked > c["resp_fin_retransmit_ns"])
        & ((orst_all == NONE) | (orst_all > acked))
    )  # fmt: skip
    rows = np.flatnonzero((c["resp_fin_retransmits"] > 0) & (c["resp_fin_ns"] != NONE) & ~probe)
    out: list[Finding] = []
    for i in rows.tolist():
        fin = int(c["resp_fin_ns"][i])
        retx = int(c["resp_fin_retransmit_ns"][i])
        orst = _opt(c["orig_rst_ns"][i])
        rst = orst is not None and orst >= fin
        cf = int(c["closed_first"][i])
        out.append(
            Finding(
                kind=FindingKind.LOST_FIN_ACK,
                ts_ns=retx,
                uids=(table.uids[i].decode(),),
                server=_server_of(table, i),
                evidence={
                    "fin_ns": fin,
                    "first_retransmit_ns": retx,
                    "fin_retransmits": int(c["resp_fin_retransmits"][i]),
                    "answered_by_rst": rst,
                    "client_rst_ns": orst if rst else None,
                    "closed_first": ("orig", "resp")[cf] if cf >= 0 else None,
                },
            )
        )
    return out


def server_timeouts(table: ConnectionTable, *, min_idle_s: float = 0.1) -> list[ServerTimeout]:
    """Inferred idle timeouts per server, most samples first."""
    c = table.cols
    idle = c["idle_before_close_ns"]
    rows = np.flatnonzero(
        (c["closed_first"] == 1) & (c["close_kind"] == 0) & (idle != NONE) & (idle >= int(min_idle_s * _NS))
    )
    if not rows.size:
        return []
    g = server_groups(table)[rows]
    vals = idle[rows] / _NS
    o = np.lexsort((vals, g))
    g, vals, rows = g[o], vals[o], rows[o]
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    stops = np.append(starts[1:], g.size)
    # quantiles of every group at once (numpy's default linear interpolation), values sorted
    size = stops - starts

    def quantile(q: float) -> npt.NDArray[np.float64]:
        p = q * (size - 1)
        lo = np.floor(p).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        a, b = vals[starts + lo], vals[starts + hi]
        out: npt.NDArray[np.float64] = a + (b - a) * (p - lo)
        return out

    q10, q25, q50, q75, q90 = (quantile(q).tolist() for q in (0.1, 0.25, 0.5, 0.75, 0.9))
    vmin, vmax = vals[starts].tolist(), vals[stops - 1].tolist()
    out: list[ServerTimeout] = []
    for k, (a, b) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
        i = int(rows[a])
        ap = table.addresses[int(c["resp_addr"][i])]
        port = int(c["resp_p"][i])
        out.append(
            ServerTimeout(
                server=_server_of(table, i),
                idle_timeout_s=round(q50[k], 3),
                samples=b - a,
                min_s=round(vmin[k], 3),
                p10_s=round(q10[k], 3),
                p90_s=round(q90[k], 3),
                max_s=round(vmax[k], 3),
                spread_s=round(q75[k] - q25[k], 3),
                address=f"[{ap}]:{port}" if int(c["ip_version"][i]) == 6 else f"{ap}:{port}",
            )
        )
    out.sort(key=lambda s: (-s.samples, s.server))
    return out
