"""Compiled inner loops of the flow table: endpoint hashes, and one pass over the sorted packets.

Written in the subset of Python that numba compiles (integers and numpy arrays only): plain
Python for small inputs, compiled (and cached on disk) for the rest, with identical results, as
the capture kernels (:mod:`halfclose.capture.compiling`).

:func:`flow_pass` walks a batch's packets once, in capture order, and does per TCP packet what
the rules in :mod:`halfclose.analysis.flows` say: hash the two endpoints into a flow key, find the
key in a hash table, split keys into connections, relative sequence numbers, new data /
retransmission / keep-alive, the per-connection counters; it appends the event rows and the first
data segments (for server names, their payloads copied) to the flow table's buffers, and lists
the batch's DNS rows, so that nothing of a batch is kept after it. :func:`dns_take` copies the
DNS rows' columns and small message bodies for :class:`~halfclose.analysis.dns.DnsCollector`.
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
    "COUNTS",
    "C_BATCH_EVENTS",
    "C_DNS",
    "C_EVENTS",
    "C_FLOWS",
    "C_NAMES",
    "C_NAME_BYTES",
    "C_SLOTS",
    "DNS_BODY_LEN",
    "DNS_COLUMNS",
    "DNS_CUT",
    "DNS_DPORT",
    "DNS_DST_HI",
    "DNS_DST_LO",
    "DNS_FILE",
    "DNS_FRAME",
    "DNS_SPORT",
    "DNS_SRC_HI",
    "DNS_SRC_LO",
    "DNS_TS",
    "DNS_TXID",
    "DNS_VERSION",
    "EV_BITS",
    "EV_COLUMNS",
    "EV_FILE",
    "EV_FLOW",
    "EV_FRAME",
    "EV_LEN",
    "EV_POS",
    "EV_SEQ",
    "EV_TS",
    "NM_CAP",
    "NM_COLUMNS",
    "NM_FLOW_DIR",
    "NM_LEN",
    "NM_OFF",
    "closing_kind",
    "compiled",
    "dns_take",
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


#: Columns of the event rows :func:`flow_pass` appends (``events[k, EV_*]``); ``EV_BITS`` packs
#: direction (bits 0-7), flags (8-15), new data (16) and the closing-record code (24-31).
EV_FLOW, EV_POS, EV_TS, EV_SEQ, EV_LEN, EV_FILE, EV_FRAME, EV_BITS = range(8)
EV_COLUMNS = 8
#: Columns of the first-data rows (``names[k, NM_*]``): connection * 2 + direction, and where the
#: segment's captured payload was copied in ``name_data`` (offset, captured bytes), its length.
NM_FLOW_DIR, NM_OFF, NM_CAP, NM_LEN = range(4)
NM_COLUMNS = 4
#: ``counts`` of :func:`flow_pass`: key slots, connections, event rows, the batch's first event
#: row, first-data rows, bytes used in ``name_data``, DNS rows of the batch.
C_SLOTS, C_FLOWS, C_EVENTS, C_BATCH_EVENTS, C_NAMES, C_NAME_BYTES, C_DNS = range(7)
COUNTS = 7
_PROTO_TCP = 6
_PROTO_UDP = 17


@_jit
def flow_pass(
    start: Any, proto: Any, fragment: Any, src_hi: Any, src_lo: Any, sport: Any, dst_hi: Any, dst_lo: Any,
    dport: Any, tcp_flags: Any, seq: Any, ack: Any, payload_len: Any, ip_len: Any, ts_ns: Any, base_pos: Any,
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
    events: Any, names: Any, name_data: Any, dns_rows: Any,
) -> int:  # fmt: skip
    """One pass over a batch's packets in capture order, from row ``start``: its TCP rows
    (protocol 6, not a later IP fragment) are accounted, the rows of UDP to or from port 53 are
    listed in ``dns_rows`` (``counts[C_DNS]`` of them), the rest is skipped.

    Flow keys live in an open-addressing table (``ht_key`` -> slot in ``ht_slot``, -1 when empty;
    its size a power of two); per slot ``slot_key2`` (the collision check) and ``slot_flow`` (the
    current connection). A pure SYN starts a new connection on its key when the current one has
    already seen its direction starting at another sequence number (tshark's rule: a SYN/ACK, a
    RST or anything else captured before the SYN, its own data too, does not split the
    connection). ``counts`` (``C_*``) is read and updated; a new connection's endpoints (``a`` the
    sender of direction 0) and first packet (``first_*``) are taken from the row that opened it.
    Each event (SYN, FIN, RST, payload after the first FIN) gets a row in ``events`` (``EV_*``),
    each direction's first new data a row in ``names`` (``NM_*``) with its captured payload
    copied into ``name_data``. When all rows are done, each event row of the batch (from
    ``counts[C_BATCH_EVENTS]``) carrying new data gets the ``CLOSING_*`` code of its payload
    (:func:`closing_kind`, read with the connections' ``h2c`` as they are after the whole batch).

    Returns the number of rows done: the batch's length when all were, less when the key table is
    half full, the slot, connection, event or first-data arrays are full or ``name_data`` has no
    room for the row's payload (grow them and call again from there), or :data:`COLLISION` when
    two flows share a key.
    """
    golden = np.uint64(0x9E3779B97F4A7C15)
    s48 = np.uint64(48)
    mask = np.uint64(ht_key.shape[0] - 1)
    n = proto.shape[0]
    nslots = counts[C_SLOTS]
    nf = counts[C_FLOWS]
    nev = counts[C_EVENTS]
    nnm = counts[C_NAMES]
    nmb = counts[C_NAME_BYTES]
    ndns = counts[C_DNS]
    stop = n
    mask32 = np.int64(0xFFFFFFFF)
    half32 = np.int64(0x80000000)
    for i in range(start, n):
        r = i
        if proto[r] != _PROTO_TCP or fragment[r]:
            if proto[r] == _PROTO_UDP and not fragment[r] and (sport[r] == 53 or dport[r] == 53):
                dns_rows[ndns] = r
                ndns += 1
            continue
        if nev >= events.shape[0] or nnm >= names.shape[0] or nmb + np.int64(payload_caplen[r]) > name_data.shape[0]:
            stop = i
            break
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
                stop = i
                break
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
                stop = i
                break
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
        if syn or fin or rst or (has_len and pos > ffp):
            events[nev, EV_FLOW] = f
            events[nev, EV_POS] = pos
            events[nev, EV_TS] = ts
            events[nev, EV_SEQ] = rel
            events[nev, EV_LEN] = plen
            events[nev, EV_FILE] = file_index[r]
            events[nev, EV_FRAME] = frame[r]
            events[nev, EV_BITS] = d | (fl << 8) | ((1 if new else 0) << 16)
            nev += 1
        if name:
            cap = np.int64(payload_caplen[r])
            off = payload_off[r]
            for b in range(cap):  # (element by element: a slice copy would allocate)
                name_data[nmb + b] = data[off + b]
            names[nnm, NM_FLOW_DIR] = f * 2 + d
            names[nnm, NM_OFF] = nmb
            names[nnm, NM_CAP] = cap
            names[nnm, NM_LEN] = plen
            nnm += 1
            nmb += cap
    counts[C_SLOTS] = nslots
    counts[C_FLOWS] = nf
    counts[C_EVENTS] = nev
    counts[C_NAMES] = nnm
    counts[C_NAME_BYTES] = nmb
    counts[C_DNS] = ndns
    if stop < n:
        return int(stop)
    for k in range(counts[C_BATCH_EVENTS], nev):
        bits = events[k, EV_BITS]
        plen = events[k, EV_LEN]
        if (bits >> 16) & 1 and plen > 0 and plen <= CLOSING_SEGMENT_MAX:
            r = events[k, EV_POS] - base_pos
            code = closing_kind(data, payload_off[r], np.int64(payload_caplen[r]), plen, h2c[events[k, EV_FLOW]] != 0)
            events[k, EV_BITS] = bits | (np.int64(code) << 24)
    return int(n)


#: Columns of the DNS rows :func:`dns_take` appends (``cols[k, DNS_*]``): time, file, frame, IP
#: version, source and destination address halves (uint64 stored as int64) and ports, the
#: transaction id (-1: cut before it), the body's captured length (all after the id), whether the
#: payload was cut by the snap length.
DNS_TS, DNS_FILE, DNS_FRAME, DNS_VERSION, DNS_SRC_HI, DNS_SRC_LO, DNS_DST_HI, DNS_DST_LO = range(8)
DNS_SPORT, DNS_DPORT, DNS_TXID, DNS_BODY_LEN, DNS_CUT = range(8, 13)
DNS_COLUMNS = 13


@_jit
def dns_take(
    rows: Any, at: Any, ts_ns: Any, file_index: Any, frame: Any, ip_version: Any, src_hi: Any, src_lo: Any,
    dst_hi: Any, dst_lo: Any, sport: Any, dport: Any, payload_len: Any, payload_off: Any, payload_caplen: Any,
    data: Any, cols: Any, raw: Any, raw_at: Any, raw_rows: Any,
) -> int:  # fmt: skip
    """Copy the DNS packets at *rows* into ``cols`` from row *at* (``DNS_*``), and the body of each
    one at most ``raw.shape[1]`` bytes long into ``raw`` from row *raw_at* (whose rows must be zero
    past that length), its row of ``cols`` into ``raw_rows``; returns how many bodies went into ``raw`` (both arrays
    have room for all of *rows*)."""
    width = raw.shape[1]
    k = raw_at
    for j in range(rows.shape[0]):
        r = rows[j]
        o = at + j
        cap = np.int64(payload_caplen[r])
        off = payload_off[r]
        cols[o, DNS_TS] = ts_ns[r]
        cols[o, DNS_FILE] = file_index[r]
        cols[o, DNS_FRAME] = frame[r]
        cols[o, DNS_VERSION] = ip_version[r]
        cols[o, DNS_SRC_HI] = np.int64(src_hi[r])
        cols[o, DNS_SRC_LO] = np.int64(src_lo[r])
        cols[o, DNS_DST_HI] = np.int64(dst_hi[r])
        cols[o, DNS_DST_LO] = np.int64(dst_lo[r])
        cols[o, DNS_SPORT] = sport[r]
        cols[o, DNS_DPORT] = dport[r]
        cols[o, DNS_TXID] = np.int64(data[off]) * 256 + np.int64(data[off + 1]) if cap >= 2 else -1
        body: Any = max(cap - 2, 0)
        cols[o, DNS_BODY_LEN] = body
        cols[o, DNS_CUT] = 1 if cap < np.int64(payload_len[r]) else 0
        if body <= width:
            for b in range(body):  # (element by element: a slice copy would allocate)
                raw[k, b] = data[off + 2 + b]
            raw_rows[k] = o
            k += 1
    return int(k - raw_at)


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
