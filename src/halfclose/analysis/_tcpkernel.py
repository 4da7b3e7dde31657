"""Compiled inner loops of the connection table: one pass over each connection's events, and the
Community ID hashes.

Written in the subset of Python that numba compiles (integers and numpy arrays only), as the flow
kernels (:mod:`halfclose.analysis._flowkernel`): plain Python for small inputs, compiled for the
rest, with identical results. The rules they follow are written in :mod:`halfclose.analysis.tcp`;
:func:`connection_pass` applies them to the events of one connection at a time (the flow table
hands them sorted by connection, then capture position).
"""

# Long positional signatures are what numba compiles best.
# ruff: noqa: PLR0917

from __future__ import annotations

from typing import Any

import numpy as np

from halfclose.analysis._flowkernel import CLOSING_AFTER_NS
from halfclose.capture.compiling import kernel

__all__ = [
    "CLOSED_FIRST",
    "CLOSE_KIND",
    "COLUMNS",
    "FIRST_CLOSE_NS",
    "LAST_DATA_BEFORE_FIN",
    "ORIG",
    "ORIG_BY",
    "ORIG_BY_FIRST",
    "ORIG_BY_PORT",
    "ORIG_BY_SYN",
    "ORIG_BY_SYNACK",
    "ORIG_FIN_NS",
    "ORIG_FIN_RETX",
    "ORIG_FIN_RETX_NS",
    "ORIG_RST_NS",
    "RESP_FIN_NS",
    "RESP_FIN_RETX",
    "RESP_FIN_RETX_NS",
    "RESP_RST_NS",
    "RTT_NS",
    "SAW_SYN",
    "SAW_SYNACK",
    "STALE_WRITES",
    "STALE_WRITE_NS",
    "SYN_NS",
    "UNBROKEN_CLOSING",
    "community_id_texts",
    "connection_pass",
]

_jit = kernel()

_TH_FIN = 0x01
_TH_SYN = 0x02
_TH_RST = 0x04
_TH_ACK = 0x10
_NO_TS = np.iinfo(np.int64).max
_MISSING = np.iinfo(np.int64).min

#: The rows of :func:`connection_pass`'s output (one column per connection): the originator's
#: direction and the rule that chose it, whether the originator's pure SYN and the responder's
#: SYN/ACK were seen, the handshake's SYN and round trip, the first close (time, FIN 0 / RST 1,
#: its side: originator 0, responder 1; -1 for none), each side's first FIN and RST, FIN
#: retransmissions (how many, the first), stale writes (the first, how many), the last new data
#: before the first close, and whether the run of closing records is unbroken at that close.
ORIG, ORIG_BY, SAW_SYN, SAW_SYNACK, SYN_NS, RTT_NS = 0, 1, 2, 3, 4, 5
FIRST_CLOSE_NS, CLOSE_KIND, CLOSED_FIRST = 6, 7, 8
ORIG_FIN_NS, RESP_FIN_NS, ORIG_RST_NS, RESP_RST_NS = 9, 10, 11, 12
ORIG_FIN_RETX, RESP_FIN_RETX, ORIG_FIN_RETX_NS, RESP_FIN_RETX_NS = 13, 14, 15, 16
STALE_WRITE_NS, STALE_WRITES, LAST_DATA_BEFORE_FIN, UNBROKEN_CLOSING = 17, 18, 19, 20
COLUMNS = 21
#: The originator rules, in the order of ``OrigBy``.
ORIG_BY_SYN, ORIG_BY_SYNACK, ORIG_BY_PORT, ORIG_BY_FIRST = 0, 1, 2, 3

#: History letters a connection's state adds beside its events: retransmissions and gaps (three
#: marks a side), the flipped direction, each side's first pure ACK and first data.
_STATE_LETTERS = 17
#: Up to this many FINs in a connection, each is checked against the earlier ones; more are sorted.
_FEW_FINS = 8
# the history letters (lower case: the responder's; the originator's are 32 lower)
_S, _H, _F, _E, _R, _D, _Q, _I, _T, _G, _A = (ord(c) for c in "shferdqitga")
_FLIP = ord("^")
_ONE, _COLON, _PAD = ord("1"), ord(":"), ord("=")


@_jit
def connection_pass(
    flow: Any, dirs: Any, ts: Any, pos: Any, seq: Any, length: Any, new: Any, flags: Any, closing: Any,
    order: Any, a_port: Any, b_port: Any, first_dir: Any, first_ack_ts: Any, last_data_before_fin_ts: Any,
    closing_ts: Any, run_last_ts: Any, closing_ref_ts: Any, missed: Any, hole_lo: Any, hole_hi: Any,
    retx_pos: Any, gap_pos: Any, first_pure_ack_pos: Any, first_data_pos: Any, answer_ns: Any,
    out: Any, hist: Any, hist_off: Any,
) -> int:  # fmt: skip
    """One pass over the events (columns sorted by connection, then position) of the connections
    ``order[0], order[1], ...`` (each connection once): writes ``out[:, i]`` (the rows named by
    this module's constants) of connection *i*, and the history letters of the *k*-th connection
    of *order* to ``hist[hist_off[k]:hist_off[k + 1]]`` (*hist* holds at least 5 letters per event
    and 17 per connection). Returns the number of letters written."""
    n = order.shape[0]
    m = flow.shape[0]
    start = np.zeros(n + 1, np.int64)
    for r in range(m):
        start[flow[r] + 1] += 1
    for i in range(n):
        start[i + 1] += start[i]
    retx_row = np.zeros(m, np.bool_)
    ev_pos = np.empty(5 * m + 1, np.int64)
    ev_let = np.empty(5 * m + 1, np.uint8)
    st_pos = np.empty(_STATE_LETTERS, np.int64)
    st_let = np.empty(_STATE_LETTERS, np.uint8)
    fin_rows = np.empty(m + 1, np.int64)
    fin_first = np.empty(2, np.int64)
    rst_first = np.empty(2, np.int64)
    last_data = np.empty(2, np.int64)
    fin_ns = np.empty(2, np.int64)
    fin_pos = np.empty(2, np.int64)
    rst_ns = np.empty(2, np.int64)
    retx_n = np.empty(2, np.int64)
    retx_first = np.empty(2, np.int64)
    own_close = np.empty(2, np.int64)
    first_after = np.empty(2, np.int64)
    first_multi = np.empty(2, np.int64)
    first_bad = np.empty(2, np.int64)
    w = 0
    for k in range(n):
        i = order[k]
        r0, r1 = start[i], start[i + 1]
        # pass 1: what does not depend on the originator
        first_syn = -1
        first_synack = -1
        close_row = -1
        nfin = 0
        for d in range(2):
            fin_first[d] = -1
            rst_first[d] = -1
            last_data[d] = -1
        for r in range(r0, r1):
            f = int(flags[r])
            d = int(dirs[r])
            if (f & (_TH_SYN | _TH_ACK)) == _TH_SYN and first_syn < 0:
                first_syn = r
            if (f & (_TH_SYN | _TH_ACK)) == (_TH_SYN | _TH_ACK) and first_synack < 0:
                first_synack = r
            if f & _TH_FIN:
                if fin_first[d] < 0:
                    fin_first[d] = r
                fin_rows[nfin] = r
                nfin += 1
            if f & _TH_RST and rst_first[d] < 0:
                rst_first[d] = r
            if f & (_TH_FIN | _TH_RST) and close_row < 0:
                close_row = r
            if length[r] > 0 and new[r]:
                last_data[d] = r
        # the originator: the first pure SYN's sender, the first SYN/ACK's receiver, the higher port,
        # the first packet's sender
        if a_port[i] > b_port[i]:
            o, rule = 0, ORIG_BY_PORT
        elif a_port[i] < b_port[i]:
            o, rule = 1, ORIG_BY_PORT
        else:
            o, rule = int(first_dir[i]), ORIG_BY_FIRST
        if first_synack >= 0:
            o, rule = 1 - int(dirs[first_synack]), ORIG_BY_SYNACK
        if first_syn >= 0:
            o, rule = int(dirs[first_syn]), ORIG_BY_SYN
        # the handshake: the responder's first SYN/ACK, the originator's last SYN before it (else
        # its first SYN: captured after the SYN/ACK)
        synack_i = -1
        syn_i = -1
        first_orig_syn = -1
        for r in range(r0, r1):
            f = int(flags[r])
            mine = int(dirs[r]) == o
            if (f & (_TH_SYN | _TH_ACK)) == (_TH_SYN | _TH_ACK) and not mine and synack_i < 0:
                synack_i = r
            if (f & (_TH_SYN | _TH_ACK)) == _TH_SYN and mine:
                if first_orig_syn < 0:
                    first_orig_syn = r
                if synack_i < 0:
                    syn_i = r
        if syn_i < 0:
            syn_i = first_orig_syn
        syn_ns = ts[syn_i] if syn_i >= 0 else _MISSING
        synack_ns = ts[synack_i] if synack_i >= 0 else _MISSING
        ack_ns = first_ack_ts[i, o]
        rtt = _MISSING
        if syn_i >= 0 and synack_i >= 0 and ack_ns != _NO_TS and ack_ns >= synack_ns and ack_ns >= syn_ns:
            rtt = ack_ns - syn_ns
        # FIN retransmissions: a FIN ending where an earlier FIN of its side ended
        for d in range(2):
            retx_n[d] = 0
            retx_first[d] = -1
        if 1 < nfin <= _FEW_FINS:  # against each earlier FIN
            for q in range(1, nfin):
                r = fin_rows[q]
                for p in range(q):
                    rp = fin_rows[p]
                    if dirs[rp] == dirs[r] and seq[rp] + length[rp] == seq[r] + length[r]:
                        retx_row[r] = True
                        break
        elif nfin > _FEW_FINS:  # by one stable sort of their ends
            keys = np.empty(nfin, np.int64)
            for q in range(nfin):
                r = fin_rows[q]
                keys[q] = (seq[r] + length[r]) * 2 + int(dirs[r])
            by_end = np.argsort(keys, kind="mergesort")  # stable: equal ends in capture order
            for q in range(1, nfin):
                if keys[by_end[q]] == keys[by_end[q - 1]]:
                    retx_row[fin_rows[by_end[q]]] = True
        if nfin > 1:
            for q in range(nfin):
                r = fin_rows[q]
                if retx_row[r]:
                    d = int(dirs[r])
                    retx_n[d] += 1
                    if retx_first[d] < 0:
                        retx_first[d] = r
        for d in range(2):
            fin_ns[d] = ts[fin_first[d]] if fin_first[d] >= 0 else _MISSING
            fin_pos[d] = pos[fin_first[d]] if fin_first[d] >= 0 else _NO_TS
            rst_ns[d] = ts[rst_first[d]] if rst_first[d] >= 0 else _MISSING
            own_close[d] = _NO_TS
            if fin_first[d] >= 0:
                own_close[d] = fin_ns[d]
            if rst_first[d] >= 0 and rst_ns[d] < own_close[d]:
                own_close[d] = rst_ns[d]
        # the first close; data captured after it but sent before it counts up to it
        first_close = ts[close_row] if close_row >= 0 else _MISSING
        ld = last_data_before_fin_ts[i]
        if close_row >= 0 and ld > first_close:
            ld = first_close
        last = run_last_ts[i]
        unbroken = close_row >= 0 and closing_ts[i] != _NO_TS and 0 <= last <= first_close
        unbroken = unbroken and (last == ld or last == first_close)  # noqa: PLR1714, SIM109 (compiled)
        before_fin = closing_ref_ts[i] if unbroken else ld
        # pass 2: data after the peer's FIN (a side's own closing record answering it is none),
        # the stale writes, the event letters of the history
        stale_first = -1
        stale_n = 0
        prev_other = np.int64(-1)
        ne = 0
        for d in range(2):
            first_after[d] = -1
            first_multi[d] = -1
            first_bad[d] = -1
        for r in range(r0, r1):
            f = int(flags[r])
            d = int(dirs[r])
            mine = d == o
            data = length[r] > 0 and new[r]
            after = False
            if data and pos[r] > fin_pos[1 - d]:
                after = True
                if closing[r] != 0 and r == last_data[d] and ts[r] - max(before_fin, prev_other) >= CLOSING_AFTER_NS:
                    soon = ts[r] - fin_ns[1 - d] <= answer_ns
                    if own_close[d] != _NO_TS and own_close[d] - ts[r] <= answer_ns:
                        soon = True
                    after = not soon
            if data and closing[r] == 0:
                prev_other = ts[r]
            if after and mine:
                stale_n += 1
                if stale_first < 0:
                    stale_first = r
            # this row's letters, in the order of the letters' kinds
            if r == first_syn:
                ev_pos[ne], ev_let[ne] = pos[r], _S - 32 * (mine)
                ne += 1
            if r == synack_i:
                ev_pos[ne], ev_let[ne] = pos[r], _H - 32 * (mine)
                ne += 1
            if f & _TH_FIN:
                ev_pos[ne], ev_let[ne] = pos[r], (_E if retx_row[r] else _F) - 32 * (mine)
                ne += 1
            if f & _TH_RST:
                ev_pos[ne], ev_let[ne] = pos[r], _R - 32 * (mine)
                ne += 1
            if after and first_after[d] < 0:
                first_after[d] = r
                ev_pos[ne], ev_let[ne] = pos[r], _D - 32 * (mine)
                ne += 1
            if f & _TH_SYN and f & (_TH_FIN | _TH_RST) and first_multi[d] < 0:
                first_multi[d] = r
                ev_pos[ne], ev_let[ne] = pos[r], _Q - 32 * (mine)
                ne += 1
            if f & _TH_FIN and f & _TH_RST and not f & _TH_SYN and first_bad[d] < 0:
                first_bad[d] = r
                ev_pos[ne], ev_let[ne] = pos[r], _I - 32 * (mine)
                ne += 1
        # the state's letters, in the order of their kinds, then by position (stable)
        ns = 0
        for col in range(6):
            if retx_pos[i, col] != _NO_TS:
                st_pos[ns], st_let[ns] = retx_pos[i, col], _T - 32 * (o == col // 3)
                ns += 1
        for col in range(6):
            side = col // 3
            lost = missed[i, side] + max(hole_hi[i, side] - hole_lo[i, side], 0) > 0
            if gap_pos[i, col] != _NO_TS and lost:
                st_pos[ns], st_let[ns] = gap_pos[i, col], _G - 32 * (o == side)
                ns += 1
        if int(first_dir[i]) != o:
            st_pos[ns], st_let[ns] = -1, _FLIP
            ns += 1
        for d in range(2):
            if first_pure_ack_pos[i, d] != _NO_TS:
                st_pos[ns], st_let[ns] = first_pure_ack_pos[i, d], _A - 32 * (o == d)
                ns += 1
        for d in range(2):
            if first_data_pos[i, d] != _NO_TS:
                st_pos[ns], st_let[ns] = first_data_pos[i, d], _D - 32 * (o == d)
                ns += 1
        for a in range(1, ns):
            p, c = st_pos[a], st_let[a]
            b = a
            while b > 0 and st_pos[b - 1] > p:
                st_pos[b], st_let[b] = st_pos[b - 1], st_let[b - 1]
                b -= 1
            st_pos[b], st_let[b] = p, c
        # merged: at one position the events' letters come first
        hist_off[k] = w
        e = 0
        s = 0
        while e < ne or s < ns:
            if s >= ns or (e < ne and ev_pos[e] <= st_pos[s]):
                hist[w] = ev_let[e]
                e += 1
            else:
                hist[w] = st_let[s]
                s += 1
            w += 1
        out[ORIG, i] = o
        out[ORIG_BY, i] = rule
        out[SAW_SYN, i] = 1 if first_orig_syn >= 0 else 0
        out[SAW_SYNACK, i] = 1 if synack_i >= 0 else 0
        out[SYN_NS, i] = syn_ns
        out[RTT_NS, i] = rtt
        out[FIRST_CLOSE_NS, i] = first_close
        out[CLOSE_KIND, i] = -1 if close_row < 0 else (0 if int(flags[close_row]) & _TH_FIN else 1)
        out[CLOSED_FIRST, i] = -1 if close_row < 0 else (0 if int(dirs[close_row]) == o else 1)
        out[ORIG_FIN_NS, i] = fin_ns[o]
        out[RESP_FIN_NS, i] = fin_ns[1 - o]
        out[ORIG_RST_NS, i] = rst_ns[o]
        out[RESP_RST_NS, i] = rst_ns[1 - o]
        out[ORIG_FIN_RETX, i] = retx_n[o]
        out[RESP_FIN_RETX, i] = retx_n[1 - o]
        out[ORIG_FIN_RETX_NS, i] = ts[retx_first[o]] if retx_first[o] >= 0 else _MISSING
        out[RESP_FIN_RETX_NS, i] = ts[retx_first[1 - o]] if retx_first[1 - o] >= 0 else _MISSING
        out[STALE_WRITE_NS, i] = ts[stale_first] if stale_first >= 0 else _MISSING
        out[STALE_WRITES, i] = stale_n
        out[LAST_DATA_BEFORE_FIN, i] = ld
        out[UNBROKEN_CLOSING, i] = 1 if unbroken else 0
    hist_off[n] = w
    return w


_B64 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", dtype=np.uint8)
_SHA1_H = np.array([0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0], dtype=np.uint64)
_M32 = np.uint64(0xFFFFFFFF)
_K0, _K1, _K2, _K3 = np.uint64(0x5A827999), np.uint64(0x6ED9EBA1), np.uint64(0x8F1BBCDC), np.uint64(0xCA62C1D6)
_2, _5, _27, _30 = np.uint64(2), np.uint64(5), np.uint64(27), np.uint64(30)  # rotation shifts
@_jit
def community_id_texts(
    ver: Any, oa: Any, ob: Any, ra: Any, rb: Any, op: Any, rp: Any, proto: Any, seed: Any, out: Any
) -> None:  # fmt: skip
    """The Community ID v1 of each row (as :func:`halfclose.analysis.tcp.community_ids` spells the
    rule) into ``out[i, :30]``, ASCII (``1:`` and 28 base64 characters); SHA-1 of one block."""
    block = np.zeros(64, np.uint8)
    wd = np.zeros(80, np.uint64)
    digest = np.zeros(21, np.uint8)
    values = np.zeros(9, np.uint64)  # the message's fields (network order) and their sizes
    sizes = np.zeros(9, np.int64)
    h = np.zeros(5, np.uint64)  # the compression's result, added to the initial words
    for i in range(ver.shape[0]):
        swap = oa[i] > ra[i] or (oa[i] == ra[i] and (ob[i] > rb[i] or (ob[i] == rb[i] and op[i] > rp[i])))
        ah, al, ap = (ra[i], rb[i], rp[i]) if swap else (oa[i], ob[i], op[i])
        bh, bl, bp = (oa[i], ob[i], op[i]) if swap else (ra[i], rb[i], rp[i])
        values[0], sizes[0] = np.uint64(seed), 2
        if ver[i] == 4:  # the last 4 bytes of lo
            values[1], values[2], sizes[1], sizes[2] = al, bl, 4, 4
            nf = 3
        else:
            values[1], values[2], values[3], values[4] = ah, al, bh, bl
            sizes[1], sizes[2], sizes[3], sizes[4] = 8, 8, 8, 8
            nf = 5
        values[nf], values[nf + 1], values[nf + 2], values[nf + 3] = np.uint64(proto), 0, np.uint64(ap), np.uint64(bp)
        sizes[nf], sizes[nf + 1], sizes[nf + 2], sizes[nf + 3] = 1, 1, 2, 2
        block[:] = 0
        at = 0
        for q in range(nf + 4):
            for y in range(sizes[q]):
                block[at] = np.uint8((values[q] >> np.uint64(8 * (sizes[q] - 1 - y))) & np.uint64(0xFF))
                at += 1
        block[at] = 0x80
        bits = np.uint64(8 * at)
        for y in range(8):
            block[56 + y] = np.uint8((bits >> np.uint64(56 - 8 * y)) & np.uint64(0xFF))
        for t in range(16):
            wd[t] = ((np.uint64(block[4 * t]) << np.uint64(24)) | (np.uint64(block[4 * t + 1]) << np.uint64(16))
                     | (np.uint64(block[4 * t + 2]) << np.uint64(8)) | np.uint64(block[4 * t + 3]))  # fmt: skip
        for t in range(16, 80):
            x = wd[t - 3] ^ wd[t - 8] ^ wd[t - 14] ^ wd[t - 16]
            wd[t] = ((x << np.uint64(1)) | (x >> np.uint64(31))) & _M32
        a, b, c, d, e = _SHA1_H[0], _SHA1_H[1], _SHA1_H[2], _SHA1_H[3], _SHA1_H[4]
        # the four kinds of rounds, each in a loop of its own (no branch a round)
        for t in range(20):
            f = (b & c) | ((b ^ _M32) & d)
            rot = ((a << _5) | (a >> _27)) & _M32
            a, b, c, d, e = (rot + f + e + _K0 + wd[t]) & _M32, a, ((b << _30) | (b >> _2)) & _M32, c, d
        for t in range(20, 40):
            rot = ((a << _5) | (a >> _27)) & _M32
            a, b, c, d, e = (rot + (b ^ c ^ d) + e + _K1 + wd[t]) & _M32, a, ((b << _30) | (b >> _2)) & _M32, c, d
        for t in range(40, 60):
            f = (b & c) | (b & d) | (c & d)
            rot = ((a << _5) | (a >> _27)) & _M32
            a, b, c, d, e = (rot + f + e + _K2 + wd[t]) & _M32, a, ((b << _30) | (b >> _2)) & _M32, c, d
        for t in range(60, 80):
            rot = ((a << _5) | (a >> _27)) & _M32
            a, b, c, d, e = (rot + (b ^ c ^ d) + e + _K3 + wd[t]) & _M32, a, ((b << _30) | (b >> _2)) & _M32, c, d
        h[0], h[1], h[2], h[3], h[4] = a, b, c, d, e
        for j in range(5):
            word = (_SHA1_H[j] + h[j]) & _M32
            for q in range(4):
                digest[4 * j + q] = np.uint8((word >> np.uint64(24 - 8 * q)) & np.uint64(0xFF))
        digest[20] = 0
        out[i, 0] = _ONE
        out[i, 1] = _COLON
        for g in range(7):  # 21 bytes (the digest and a zero byte): 28 characters, the last one "="
            v = np.uint64(digest[3 * g]) << np.uint64(16)
            v |= (np.uint64(digest[3 * g + 1]) << np.uint64(8)) | np.uint64(digest[3 * g + 2])
            for q in range(4):
                out[i, 2 + 4 * g + q] = _B64[(v >> np.uint64(18 - 6 * q)) & np.uint64(63)]
        out[i, 29] = _PAD
