"""Compiled inner loops of the flow table: endpoint hashes, and one pass over the sorted packets.

Written in the subset of Python that numba compiles (integers and numpy arrays only): plain
Python for small inputs, compiled (and cached on disk) for the rest, with identical results, as
the capture kernels (:mod:`halfclose.capture.compiling`).

:func:`flow_pass` walks a batch's TCP packets once, in capture order, and does per packet what the
rules in :mod:`halfclose.analysis.flows` say: hash the two endpoints into a flow key, find the
key in a hash table, split keys into connections, relative sequence numbers, new data /
retransmission / keep-alive, the per-connection counters, and which rows are events or first data
segments (for server names).
"""

# Long positional signatures are what numba compiles best.
# ruff: noqa: PLR0917

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np

from halfclose.analysis._common import mix64
from halfclose.capture.compiling import compiled as _compiled
from halfclose.capture.compiling import kernel

__all__ = [
    "CLOSING_AFTER_NS",
    "CLOSING_H2_GOAWAY",
    "CLOSING_LONGER",
    "CLOSING_NONE",
    "CLOSING_TLS_ALERT",
    "CLOSING_TLS_SHORT",
    "COLLISION",
    "closing_kind",
    "compiled",
    "flow_pass",
    "has_goaway",
    "rehash",
]

F = TypeVar("F", bound=Callable[..., Any])

#: What :func:`flow_pass` returns when two flows share a 64-bit key.
COLLISION = -1

_TH_FIN = 0x01
_TH_SYN = 0x02
_TH_RST = 0x04
_TH_ACK = 0x10
_NO_TS = np.iinfo(np.int64).max
#: A jump ahead in sequence space larger than this is no hole (a midstream start, a wrapped base).
_MAX_HOLE = np.int64(1 << 30)


def plain(f: F) -> F:
    """*f* as plain Python: the same integer arithmetic, 64-bit products wrapping silently."""

    @functools.wraps(f)
    def run(*args: Any) -> Any:
        with np.errstate(over="ignore"):
            return f(*args)

    return cast(F, run)


_jit = kernel()


def compiled() -> bool:
    """True when the kernels run as compiled code (see :mod:`halfclose.capture.compiling`)."""
    return _compiled()


#: What :func:`closing_kind` returns (the codes of ``ClosingRecord`` in :mod:`halfclose.analysis.tcp`).
CLOSING_NONE = 0
CLOSING_TLS_ALERT = 1
CLOSING_TLS_SHORT = 2
CLOSING_H2_GOAWAY = 3

#: Longest segment that can be a closing record (close_notify, GOAWAY: tens of bytes).
CLOSING_SEGMENT_MAX = 256
#: A run of closing records starts at least this long after the connection's last new data
#: (far below any idle timeout worth measuring; above the gaps between back-to-back segments).
CLOSING_AFTER_NS = 1_000_000
#: A later record of a run of closing records ending a silence more than this many times as long
#: as its first record's is the closing record: the first was a frame of the exchange (an HTTP/2
#: WINDOW_UPDATE, SETTINGS acknowledgement or a response's last empty DATA frame, ms after the
#: data), the later one the close at the idle timer. A side's records after its close (Go's
#: close_notify 1 s after its GOAWAY) and the peer's answers come sooner than that.
CLOSING_LONGER = 2
#: Longest encrypted TLS record taken for a closing one: a TLS 1.3 close_notify is 19 bytes of
#: record payload, an HTTP/2 GOAWAY inside TLS 1.3 34, inside TLS 1.2 AES-GCM 41, CBC up to 80.
TLS_SHORT_RECORD_MAX = 80

_H2_GOAWAY = 7


@_jit
def closing_kind(data: Any, off: Any, cap: Any, plen: Any, h2c: Any) -> int:
    """Whether a segment's payload is made of closing records only: TLS records each an alert
    (content type 21) or a short application_data record (type 23, at most
    :data:`TLS_SHORT_RECORD_MAX` bytes: what an encrypted alert or GOAWAY is under TLS 1.3), or,
    on a cleartext HTTP/2 connection (*h2c*), HTTP/2 GOAWAY frames. Returns a ``CLOSING_*`` code.
    Only the captured bytes are read; records must fill the segment exactly (or run past the
    captured bytes)."""
    if plen == 0 or plen > CLOSING_SEGMENT_MAX or cap < 5:
        return CLOSING_NONE
    p: Any = 0
    alert = False
    if data[off] >= 20 and data[off] <= 23:
        while p + 5 <= cap:
            t = data[off + p]
            if data[off + p + 1] != 3 or data[off + p + 2] > 4:
                return CLOSING_NONE
            length = np.int64(data[off + p + 3]) * 256 + np.int64(data[off + p + 4])
            if t == 21:
                alert = True
            elif t != 23 or length > TLS_SHORT_RECORD_MAX:
                return CLOSING_NONE
            p += 5 + length
        if p != plen and not (cap < plen and p >= cap):
            return CLOSING_NONE
        return CLOSING_TLS_ALERT if alert else CLOSING_TLS_SHORT
    if not h2c or cap < 9:
        return CLOSING_NONE
    while p + 9 <= cap:
        length = (np.int64(data[off + p]) << 16) | (np.int64(data[off + p + 1]) << 8) | np.int64(data[off + p + 2])
        stream = (data[off + p + 5] & 0x7F) | data[off + p + 6] | data[off + p + 7] | data[off + p + 8]
        if data[off + p + 3] != _H2_GOAWAY or data[off + p + 4] != 0 or stream != 0 or length < 8:
            return CLOSING_NONE
        p += 9 + length
    if p != plen and not (cap < plen and p >= cap):
        return CLOSING_NONE
    return CLOSING_H2_GOAWAY


@_jit
def has_goaway(data: Any, off: Any, cap: Any) -> bool:
    """An HTTP/2 GOAWAY frame among the frames read from the start of a short cleartext segment (the
    segment taken to start at a frame boundary; reading stops at the first frame header that is
    not a known frame type or runs past the captured bytes)."""
    p: Any = 0
    for _ in range(32):
        if p + 9 > cap:
            return False
        t = data[off + p + 3]
        if t == _H2_GOAWAY:
            stream = (data[off + p + 5] & 0x7F) | data[off + p + 6] | data[off + p + 7] | data[off + p + 8]
            return bool(stream == 0)
        if t > 9:
            return False
        p += 9 + ((np.int64(data[off + p]) << 16) | (np.int64(data[off + p + 1]) << 8) | np.int64(data[off + p + 2]))
    return False


_mix = _jit(mix64)


@_jit
def _log_mark(marks: Any, f: Any, d: Any, count: Any, pos: Any) -> None:
    """Zeek's logarithmic history letters: the positions of a side's 1st, 10th and 100th event
    of a kind (``marks[f, 3 * d + k]``)."""
    if count == 1:
        marks[f, 3 * d] = pos
    elif count == 10:
        marks[f, 3 * d + 1] = pos
    elif count == 100:
        marks[f, 3 * d + 2] = pos


@_jit
def flow_pass(
    rows: Any, start: Any, src_hi: Any, src_lo: Any, sport: Any, dst_hi: Any, dst_lo: Any, dport: Any,
    tcp_flags: Any, seq: Any, ack: Any, payload_len: Any, ip_len: Any, ts_ns: Any, base_pos: Any,
    data: Any, payload_off: Any, payload_caplen: Any, ip_version: Any, file_index: Any, frame: Any, tunnel: Any,
    ht_key: Any, ht_slot: Any, slot_key2: Any, slot_flow: Any, counts: Any,
    a_hi: Any, a_lo: Any, a_port: Any, b_hi: Any, b_lo: Any, b_port: Any, first_ip_version: Any,
    first_ts: Any, first_pos: Any, first_dir: Any, first_file: Any, first_frame: Any, first_tunnel: Any,
    last_ts: Any, pkts: Any, nbytes: Any, ip_bytes: Any, base_seq: Any, max_end: Any,
    first_data_ts: Any, first_data_pos: Any, last_data_ts: Any, first_ack_ts: Any,
    first_pure_ack_pos: Any, first_pure_ack_ts: Any, retrans: Any, keepalive: Any,
    first_fin_pos: Any, last_data_before_fin_ts: Any,
    h2c: Any, run_last_ts: Any, closing_ts: Any, closing_kind_: Any, closing_ref_ts: Any, closing_dir: Any,
    goaway_ts: Any, fin_end: Any, fin_acked_ts: Any,
    hole_lo: Any, hole_hi: Any, missed: Any, gaps: Any, retx_pos: Any, gap_pos: Any,
    out_flow: Any, out_dir: Any, out_rel: Any, out_new: Any, out_event: Any, out_name: Any, out_closing: Any,
) -> int:  # fmt: skip
    """One pass over a batch's TCP rows (``rows`` index the packet columns) in capture order,
    from ``rows[start]``.

    Flow keys live in an open-addressing table (``ht_key`` -> slot in ``ht_slot``, -1 when empty;
    its size a power of two); per slot ``slot_key2`` (the collision check) and ``slot_flow`` (the
    current connection). A pure SYN starts a new connection on its key when the current one has
    already seen its direction starting at another sequence number (tshark's rule: a SYN/ACK, a
    RST or anything else captured before the SYN, its own data too, does not split the
    connection). ``counts`` holds
    [slots, connections] and is updated; a new connection's endpoints (``a`` the sender of
    direction 0) and first packet (``first_*``) are taken from the row that opened it. Per row it
    writes the connection, the direction, the relative sequence number, whether it carries new
    data, whether it is an event (SYN, FIN, RST, payload after the first FIN) and whether it is its
    direction's first new data. When all rows are done, each event carrying new data gets the
    ``CLOSING_*`` code of its payload in ``out_closing`` (:func:`closing_kind`, read with the
    connections' ``h2c`` as they are after the whole pass; 0 for every other row).

    Returns the number of rows done: ``rows.shape[0]`` when all were, less when the key table is
    half full or the slot or connection arrays are full (grow them and call again from there), or
    :data:`COLLISION` when two flows share a key.
    """
    golden = np.uint64(0x9E3779B97F4A7C15)
    s48 = np.uint64(48)
    mask = np.uint64(ht_key.shape[0] - 1)
    n = rows.shape[0]
    nslots = counts[0]
    nf = counts[1]
    mask32 = np.int64(0xFFFFFFFF)
    half32 = np.int64(0x80000000)
    for i in range(start, n):
        r = rows[i]
        es = _mix((src_lo[r] ^ (np.uint64(sport[r]) << s48)) + src_hi[r] * golden)
        ed = _mix((dst_lo[r] ^ (np.uint64(dport[r]) << s48)) + dst_hi[r] * golden)
        key = es + ed
        key2 = es ^ ed
        d = 0 if es <= ed else 1
        # the key's slot (linear probing)
        h = key & mask
        while True:
            sl = ht_slot[h]
            if sl < 0 or ht_key[h] == key:
                break
            h = (h + np.uint64(1)) & mask
        if sl < 0:
            if 2 * (nslots + 1) > ht_key.shape[0] or nslots >= slot_flow.shape[0]:
                counts[0] = nslots
                counts[1] = nf
                return int(i)
            sl = nslots
            nslots += 1
            ht_key[h] = key
            ht_slot[h] = sl
            slot_key2[sl] = key2
            slot_flow[sl] = -1
        elif slot_key2[sl] != key2:
            return COLLISION
        fl = np.int64(tcp_flags[r])
        s32 = np.int64(seq[r])
        pure_syn = (fl & (_TH_SYN | _TH_ACK)) == _TH_SYN
        # connection: a key's first connection, or a pure SYN whose direction the current
        # connection has seen with another sequence number
        f = slot_flow[sl]
        if f >= 0 and pure_syn and base_seq[f, d] >= 0 and s32 == ((base_seq[f, d] - 1) & mask32):
            # the SYN of a direction first seen after it (its data or ACK captured first): it
            # belongs to this connection and sequence numbers start from it
            base_seq[f, d] = s32
            if max_end[f, d] >= 0:
                max_end[f, d] += 1
            if fin_end[f, d] >= 0:
                fin_end[f, d] += 1
            if hole_hi[f, d] > hole_lo[f, d]:
                hole_lo[f, d] += 1
                hole_hi[f, d] += 1
        elif f < 0 or (pure_syn and base_seq[f, d] >= 0 and base_seq[f, d] != s32):
            if nf >= last_ts.shape[0]:
                counts[0] = nslots
                counts[1] = nf
                return int(i)
            f = nf
            nf += 1
            slot_flow[sl] = f
            if d == 0:
                a_hi[f], a_lo[f], a_port[f] = src_hi[r], src_lo[r], sport[r]
                b_hi[f], b_lo[f], b_port[f] = dst_hi[r], dst_lo[r], dport[r]
            else:
                a_hi[f], a_lo[f], a_port[f] = dst_hi[r], dst_lo[r], dport[r]
                b_hi[f], b_lo[f], b_port[f] = src_hi[r], src_lo[r], sport[r]
            first_ip_version[f] = ip_version[r]
            first_ts[f] = ts_ns[r]
            first_pos[f] = np.int64(r) + base_pos
            first_dir[f] = d
            first_file[f] = file_index[r]
            first_frame[f] = frame[r]
            first_tunnel[f] = tunnel[r]
        plen = np.int64(payload_len[r])
        ts = ts_ns[r]
        pos = np.int64(r) + base_pos
        syn = (fl & _TH_SYN) != 0
        fin = (fl & _TH_FIN) != 0
        rst = (fl & _TH_RST) != 0
        # relative sequence number and the highest end sent before in this direction
        if base_seq[f, d] < 0:
            base_seq[f, d] = s32
        rel = (s32 - base_seq[f, d]) & mask32
        end = rel + plen + (1 if syn else 0) + (1 if fin else 0)
        prev = max_end[f, d]
        max_end[f, d] = max(prev, end)
        has_len = plen > 0
        new = has_len and rel + plen > prev
        # sequence space: the hole a segment beyond the highest end leaves (one per direction,
        # the latest); a segment filling part of it is out of order, new data, no retransmission
        ooo = False
        if prev >= 0 and rel > prev and rel - prev < _MAX_HOLE and not rst:
            if hole_hi[f, d] > hole_lo[f, d]:
                missed[f, d] += hole_hi[f, d] - hole_lo[f, d]
            gaps[f, d] += 1
            _log_mark(gap_pos, f, d, gaps[f, d], pos)
            hole_lo[f, d] = prev
            hole_hi[f, d] = rel
        elif has_len and not new and rel < hole_hi[f, d] and rel + plen > hole_lo[f, d]:
            ooo = True
            new = True
            lo = hole_lo[f, d]
            hi = hole_hi[f, d]
            if rel <= lo:
                hole_lo[f, d] = min(hi, rel + plen)
            elif rel + plen >= hi:
                hole_hi[f, d] = rel
            elif rel - lo >= hi - (rel + plen):
                missed[f, d] += hi - (rel + plen)
                hole_hi[f, d] = rel
            else:
                missed[f, d] += rel - lo
                hole_lo[f, d] = rel + plen
        ka = (not has_len and not syn and not fin and not rst and rel == prev - 1 and prev > 0) or (
            plen == 1 and rel + 1 == prev
        )
        ffp_before = first_fin_pos[f]
        in_closing = False
        if ffp_before != _NO_TS and (fl & _TH_ACK) != 0 and fin_end[f, 1 - d] >= 0 and fin_acked_ts[f, 1 - d] == _NO_TS:
            # this segment acknowledges the peer's FIN when its ack number reaches past it
            rel_ack = (np.int64(ack[r]) - base_seq[f, 1 - d]) & mask32
            if ((rel_ack - fin_end[f, 1 - d]) & mask32) < half32:
                fin_acked_ts[f, 1 - d] = ts
        if new and not ooo and plen <= CLOSING_SEGMENT_MAX:
            # closing records: the trailing run of segments (either side's) before the first FIN
            # that are close_notify alerts, short encrypted records or h2c GOAWAY frames; its
            # closing record is the first, unless a later one ended a silence more than
            # CLOSING_LONGER times as long (only short segments read the run's state: bulk data
            # costs nothing here)
            off = payload_off[r]
            cap = np.int64(payload_caplen[r])
            if pos < ffp_before:
                last_any = max(last_data_ts[f, 0], last_data_ts[f, 1])
                # the run holds while its last record is the connection's last new data
                in_run = run_last_ts[f] >= 0 and run_last_ts[f] == last_any
                silence = ts - last_any
                kind = CLOSING_NONE
                # only after a silence (or continuing a run): the payload bytes of the rest of the
                # traffic are never read
                if in_run or silence >= CLOSING_AFTER_NS:
                    kind = closing_kind(data, off, cap, plen, h2c[f] != 0)
                if kind != CLOSING_NONE:
                    if not in_run or silence > CLOSING_LONGER * (closing_ts[f] - closing_ref_ts[f]):
                        closing_ts[f] = ts
                        closing_kind_[f] = kind
                        closing_ref_ts[f] = last_any
                        closing_dir[f] = d
                    run_last_ts[f] = ts
                    in_closing = True
            if h2c[f] != 0 and goaway_ts[f, d] == _NO_TS and has_goaway(data, off, cap):
                goaway_ts[f, d] = ts
        if fin and fin_end[f, d] < 0:
            fin_end[f, d] = end
        if fin and pos < first_fin_pos[f]:
            first_fin_pos[f] = pos
            if new and not in_closing:
                run_last_ts[f] = -1  # the FIN carries other data: no run before it
        ffp = first_fin_pos[f]
        # counters
        last_ts[f] = max(last_ts[f], ts)
        pkts[f, d] += 1
        nbytes[f, d] += plen
        ip_bytes[f, d] += np.int64(ip_len[r])
        if has_len and not new and not ka:
            retrans[f, d] += 1
            _log_mark(retx_pos, f, d, retrans[f, d], pos)
        if ka:
            keepalive[f, d] += 1
        name = False
        if new:
            if pos < first_data_pos[f, d]:
                first_data_pos[f, d] = pos
                first_data_ts[f, d] = ts
                name = True
                off = payload_off[r]
                if payload_caplen[r] >= 4 and data[off] == 80 and data[off + 1] == 82 and data[off + 2] == 73 \
                        and data[off + 3] == 32:
                    h2c[f] = 1  # "PRI ": the HTTP/2 connection preface in the clear
            last_data_ts[f, d] = max(last_data_ts[f, d], ts)
            # out-of-order data that precedes this side's FIN in sequence space came before it
            if pos < ffp or (ooo and fin_end[f, d] >= 0 and rel + plen < fin_end[f, d]):
                last_data_before_fin_ts[f] = max(last_data_before_fin_ts[f], ts)
        if not syn:
            first_ack_ts[f, d] = min(first_ack_ts[f, d], ts)
            if (
                not fin and not rst and not has_len and (fl & _TH_ACK) != 0
                and pos < first_pure_ack_pos[f, d]
            ):  # fmt: skip
                first_pure_ack_pos[f, d] = pos
                first_pure_ack_ts[f, d] = ts
        out_flow[i] = f
        out_dir[i] = d
        out_rel[i] = rel
        out_new[i] = new
        out_event[i] = syn or fin or rst or (has_len and pos > ffp)
        out_name[i] = name
    counts[0] = nslots
    counts[1] = nf
    for i in range(n):
        out_closing[i] = CLOSING_NONE
        if out_event[i] and out_new[i]:
            r = rows[i]
            plen = np.int64(payload_len[r])
            if plen > 0 and plen <= CLOSING_SEGMENT_MAX:
                out_closing[i] = closing_kind(
                    data, payload_off[r], np.int64(payload_caplen[r]), plen, h2c[out_flow[i]] != 0
                )
    return int(n)


@_jit
def rehash(keys: Any, slots: Any, ht_key: Any, ht_slot: Any) -> None:
    """Insert (key, slot) pairs into an empty open-addressing table (size a power of two)."""
    mask = np.uint64(ht_key.shape[0] - 1)
    for i in range(keys.shape[0]):
        h = keys[i] & mask
        while ht_slot[h] >= 0:
            h = (h + np.uint64(1)) & mask
        ht_key[h] = keys[i]
        ht_slot[h] = slots[i]
