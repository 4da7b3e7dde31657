"""Column-wise TCP flow accounting over packet batches, in bounded memory.

:class:`FlowTable` eats :class:`~halfclose.capture.PacketBatch` blocks in capture order and keeps,
per TCP connection, a fixed set of counters (first/last packet, packets and payload bytes each
way, highest sequence number each way, last new payload before the first FIN, ...) plus the few
packets that decide what happened to the connection ("events"): every SYN, FIN and RST, and every
payload segment sent after the connection's first FIN. Everything else is folded into the
counters batch by batch with numpy (sort by flow, ``reduceat``), so memory grows with the number
of connections and events, not with the number of packets.

Rules, in one place:

* A flow key is the unordered pair of endpoints (address, port). Endpoints are hashed to 64 bits;
  direction 0 is from the endpoint with the lower hash. Hash collisions are detected (the full
  addresses are compared within each key) and reported as an error, never silently merged.
* A pure SYN (SYN without ACK) starts a new connection on its key unless it repeats the sequence
  number of the previous pure SYN on that key (a SYN retransmission): ports reused for a new
  connection get a new record, as with tshark's ``tcp.stream``.
* Sequence numbers are made relative to the first one seen in each direction (32-bit wrap-around
  handled; connections moving more than 4 GiB one way are not).
* A segment carries *new data* when its payload reaches beyond the highest sequence number sent
  before in that direction. Payload that does not is a retransmission, except a TCP keep-alive
  probe: zero-length with ``seq = next - 1``, or one byte ending at ``next``. Keep-alive probes and
  retransmissions are not activity: idle times are measured from the last new data.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from halfclose.capture.columns import TH_ACK, TH_FIN, TH_RST, TH_SYN, PacketBatch
from halfclose.analysis.names import names_from_payloads
from halfclose.errors import InputError

__all__ = ["EVENT_DTYPE", "NO_TS", "FlowState", "FlowTable"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]

#: Marker for "no such timestamp / position" in int64 columns.
NO_TS = np.iinfo(np.int64).max
_NONE = -1

#: One row per event packet (SYN, FIN, RST, payload after the first FIN), in capture order.
EVENT_DTYPE = np.dtype(
    [
        ("flow", np.int64),  # connection index in the table
        ("pos", np.int64),  # packet position over all batches (capture order)
        ("ts", np.int64),  # ns
        ("dir", np.uint8),  # 0: from endpoint a, 1: from endpoint b
        ("flags", np.uint8),
        ("seq", np.int64),  # relative sequence number
        ("len", np.int64),  # payload length on the wire
        ("new", np.bool_),  # carries new data
        ("file", np.int32),
        ("frame", np.int64),
    ]
)

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _mix(x: U64) -> U64:
    """splitmix64 finaliser, element-wise (wraps modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * _M2
    x = (x ^ (x >> np.uint64(27))) * _M3
    return x ^ (x >> np.uint64(31))


def _endpoint_hash(hi: U64, lo: U64, port: npt.NDArray[np.uint16]) -> U64:
    h = _mix(hi * _M1 + lo)
    return _mix(h + port.astype(np.uint64) * _M1 + np.uint64(1))


def _grow(arr: npt.NDArray[np.generic], size: int, fill: object) -> npt.NDArray[np.generic]:
    if arr.shape[0] >= size:
        return arr
    new_len = max(size, arr.shape[0] * 2, 1024)
    shape = (new_len, *arr.shape[1:])
    out = np.full(shape, fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


@dataclass(slots=True, kw_only=True)
class FlowState:
    """Per-connection counters, one row per connection (``[:, d]`` = direction *d*).

    All timestamps are ns, :data:`NO_TS` when absent; positions count packets over all batches.
    """

    n: int
    a_hi: U64
    a_lo: U64
    a_port: npt.NDArray[np.uint16]
    b_hi: U64
    b_lo: U64
    b_port: npt.NDArray[np.uint16]
    ip_version: npt.NDArray[np.uint8]
    first_ts: I64
    last_ts: I64
    first_pos: I64
    first_dir: npt.NDArray[np.uint8]
    first_file: npt.NDArray[np.int32]
    first_frame: I64
    pkts: I64
    bytes: I64
    base_seq: I64  # -1: not set
    max_end: I64  # -1: nothing sent
    first_data_ts: I64
    first_data_pos: I64
    last_data_ts: I64
    first_ack_ts: I64  # first segment without SYN (the handshake's ACK, or later)
    first_pure_ack_pos: I64
    first_pure_ack_ts: I64
    retrans: I64
    keepalive: I64
    first_fin_pos: I64  # either direction
    last_data_before_fin_ts: I64  # -1 when none


_ARRAY_FIELDS = tuple(f.name for f in fields(FlowState) if f.name != "n")


class FlowTable:
    """Accumulates TCP connections over batches; see the module docstring for the rules."""

    def __init__(self) -> None:
        self._pos = 0
        # Flow keys: sorted hashes -> slot; per slot the current connection and its last pure SYN seq.
        self._key_hash: U64 = np.empty(0, dtype=np.uint64)
        self._key_slot: I64 = np.empty(0, dtype=np.int64)
        self._slot_flow: I64 = np.empty(0, dtype=np.int64)
        self._slot_syn: I64 = np.empty(0, dtype=np.int64)
        self._nslots = 0
        self._n = 0
        self._events: list[npt.NDArray[np.void]] = []
        self._name_ids: dict[str, int] = {}
        self._pn_fd: list[I64] = []
        self._pn_name: list[I64] = []
        self._pn_src: list[I64] = []
        z64 = np.empty(0, dtype=np.int64)
        self._s = FlowState(
            n=0,
            a_hi=np.empty(0, np.uint64),
            a_lo=np.empty(0, np.uint64),
            a_port=np.empty(0, np.uint16),
            b_hi=np.empty(0, np.uint64),
            b_lo=np.empty(0, np.uint64),
            b_port=np.empty(0, np.uint16),
            ip_version=np.empty(0, np.uint8),
            first_ts=z64,
            last_ts=z64,
            first_pos=z64,
            first_dir=np.empty(0, np.uint8),
            first_file=np.empty(0, np.int32),
            first_frame=z64,
            pkts=np.empty((0, 2), np.int64),
            bytes=np.empty((0, 2), np.int64),
            base_seq=np.empty((0, 2), np.int64),
            max_end=np.empty((0, 2), np.int64),
            first_data_ts=np.empty((0, 2), np.int64),
            first_data_pos=np.empty((0, 2), np.int64),
            last_data_ts=np.empty((0, 2), np.int64),
            first_ack_ts=np.empty((0, 2), np.int64),
            first_pure_ack_pos=np.empty((0, 2), np.int64),
            first_pure_ack_ts=np.empty((0, 2), np.int64),
            retrans=np.empty((0, 2), np.int64),
            keepalive=np.empty((0, 2), np.int64),
            first_fin_pos=z64,
            last_data_before_fin_ts=z64,
        )

    # -- growth -----------------------------------------------------------------------------

    _FILL: ClassVar[dict[str, object]] = {
        "first_ts": NO_TS,
        "last_ts": _NONE,
        "first_pos": NO_TS,
        "base_seq": _NONE,
        "max_end": _NONE,
        "first_data_ts": NO_TS,
        "first_data_pos": NO_TS,
        "last_data_ts": _NONE,
        "first_ack_ts": NO_TS,
        "first_pure_ack_pos": NO_TS,
        "first_pure_ack_ts": NO_TS,
        "first_fin_pos": NO_TS,
        "last_data_before_fin_ts": _NONE,
    }

    def _ensure(self, n: int) -> None:
        s = self._s
        for name in _ARRAY_FIELDS:
            arr = getattr(s, name)
            if arr.shape[0] < n:
                setattr(s, name, _grow(arr, n, self._FILL.get(name, 0)))

    # -- feeding ----------------------------------------------------------------------------

    def feed(self, batch: PacketBatch) -> npt.NDArray[np.int64]:
        """Account the TCP packets of *batch*; return the positions of its UDP port-53 rows' indices.

        Returns the row indices (into *batch*) of UDP packets to or from port 53, for DNS.
        """
        n_rows = len(batch)
        base_pos = self._pos
        self._pos += n_rows
        udp = (batch.proto == 17) & ~batch.fragment
        dns_rows = np.flatnonzero(udp & ((batch.sport == 53) | (batch.dport == 53)))
        rows = np.flatnonzero((batch.proto == 6) & ~batch.fragment)
        if rows.size:
            self._feed_tcp(batch, rows, base_pos)
        return dns_rows.astype(np.int64)

    def _slots_for(self, batch: PacketBatch, rows: I64) -> tuple[I64, npt.NDArray[np.uint8], B]:
        """Slot index per row, direction per row, and whether the slot is new in this batch."""
        src_hi, src_lo = batch.src_hi[rows], batch.src_lo[rows]
        dst_hi, dst_lo = batch.dst_hi[rows], batch.dst_lo[rows]
        es = _endpoint_hash(src_hi, src_lo, batch.sport[rows])
        ed = _endpoint_hash(dst_hi, dst_lo, batch.dport[rows])
        fwd = es <= ed
        lo_e = np.where(fwd, es, ed)
        hi_e = np.where(fwd, ed, es)
        key = _mix(lo_e * _M1 + hi_e)
        direction = (~fwd).astype(np.uint8)
        ukey, first_idx, inv = np.unique(key, return_index=True, return_inverse=True)
        # Collision check: every row of a key has the same endpoints as the key's first row.
        a_hi = np.where(fwd, src_hi, dst_hi)
        a_lo = np.where(fwd, src_lo, dst_lo)
        b_hi = np.where(fwd, dst_hi, src_hi)
        b_lo = np.where(fwd, dst_lo, src_lo)
        pa = np.where(fwd, batch.sport[rows], batch.dport[rows])
        pb = np.where(fwd, batch.dport[rows], batch.sport[rows])
        ref = first_idx[inv]
        same = (
            (a_hi == a_hi[ref]) & (a_lo == a_lo[ref]) & (b_hi == b_hi[ref]) & (b_lo == b_lo[ref])
            & (pa == pa[ref]) & (pb == pb[ref])
        )
        if not bool(np.all(same)):
            raise InputError("two TCP flows share a 64-bit flow hash: halfclose cannot tell them apart")
        # Map batch keys to global slots.
        where = np.searchsorted(self._key_hash, ukey)
        known = np.zeros(ukey.shape[0], dtype=bool)
        inb = where < self._key_hash.shape[0]
        known[inb] = self._key_hash[where[inb]] == ukey[inb]
        uslot = np.empty(ukey.shape[0], dtype=np.int64)
        uslot[known] = self._key_slot[where[known]]
        new_keys = np.flatnonzero(~known)
        new_slots = self._nslots + np.arange(new_keys.size, dtype=np.int64)
        uslot[new_keys] = new_slots
        if new_keys.size:
            self._nslots += new_keys.size
            allh = np.concatenate([self._key_hash, ukey[new_keys]])
            alls = np.concatenate([self._key_slot, new_slots])
            order = np.argsort(allh, kind="stable")
            self._key_hash, self._key_slot = allh[order], alls[order]
            self._slot_flow = np.concatenate([self._slot_flow, np.full(new_keys.size, -1, np.int64)])
            self._slot_syn = np.concatenate([self._slot_syn, np.full(new_keys.size, -1, np.int64)])
        return uslot[inv], direction, fwd

    def _feed_tcp(self, batch: PacketBatch, rows: I64, base_pos: int) -> None:
        slot, direction, fwd = self._slots_for(batch, rows)
        flags = batch.tcp_flags[rows]
        seq32 = batch.seq[rows].astype(np.int64)
        plen = batch.payload_len[rows].astype(np.int64)
        ts = batch.ts_ns[rows]
        pos = rows.astype(np.int64) + base_pos

        # --- split keys into connections (new pure SYN with a new sequence number) ---
        order = np.argsort(slot, kind="stable")
        s_slot = slot[order]
        grp_start = np.ones(order.size, dtype=bool)
        grp_start[1:] = s_slot[1:] != s_slot[:-1]
        pure_syn = ((flags & (TH_SYN | TH_ACK)) == TH_SYN)[order]
        s_seq = seq32[order]
        # previous pure-SYN seq within the slot, before each row (carried value for the slot)
        syn_idx = np.where(pure_syn, np.arange(order.size), -1)
        last_syn = np.maximum.accumulate(syn_idx)
        prev_syn_row = np.empty_like(last_syn)
        prev_syn_row[0] = -1
        prev_syn_row[1:] = last_syn[:-1]
        # ignore a previous SYN that belongs to another slot
        valid_prev = prev_syn_row >= 0
        valid_prev[valid_prev] = s_slot[prev_syn_row[valid_prev]] == s_slot[valid_prev]
        prev_syn_seq = np.where(valid_prev, s_seq[np.maximum(prev_syn_row, 0)], self._slot_syn[s_slot])
        had_before = ~grp_start | (self._slot_flow[s_slot] >= 0)
        split = (pure_syn & (prev_syn_seq != s_seq) & had_before) | ~had_before
        split_rows = np.flatnonzero(split)
        new_ids = self._n + np.arange(split_rows.size, dtype=np.int64)
        self._n += split_rows.size
        self._ensure(self._n)
        lastsplit = np.maximum.accumulate(np.where(split, np.arange(order.size), -1))
        use_split = lastsplit >= 0
        use_split[use_split] = s_slot[lastsplit[use_split]] == s_slot[use_split]
        split_ord = np.cumsum(split) - 1
        s_flow = self._slot_flow[s_slot].copy()
        s_flow[use_split] = new_ids[split_ord[use_split]]
        # carry slot state
        last_in_slot = np.flatnonzero(np.append(grp_start[1:], True))
        self._slot_flow[s_slot[last_in_slot]] = s_flow[last_in_slot]
        syn_carry = last_syn[last_in_slot]
        ok = syn_carry >= 0
        ok[ok] = s_slot[syn_carry[ok]] == s_slot[last_in_slot[ok]]
        self._slot_syn[s_slot[last_in_slot[ok]]] = s_seq[syn_carry[ok]]
        flow = np.empty_like(s_flow)
        flow[order] = s_flow

        # --- initialise new connections from their first row ---
        s = self._s
        first_rows = order[split_rows]
        nf = new_ids
        r = rows[first_rows]
        fw = fwd[first_rows]
        s.a_hi[nf] = np.where(fw, batch.src_hi[r], batch.dst_hi[r])
        s.a_lo[nf] = np.where(fw, batch.src_lo[r], batch.dst_lo[r])
        s.a_port[nf] = np.where(fw, batch.sport[r], batch.dport[r])
        s.b_hi[nf] = np.where(fw, batch.dst_hi[r], batch.src_hi[r])
        s.b_lo[nf] = np.where(fw, batch.dst_lo[r], batch.src_lo[r])
        s.b_port[nf] = np.where(fw, batch.dport[r], batch.sport[r])
        s.ip_version[nf] = batch.ip_version[r]
        s.first_ts[nf] = ts[first_rows]
        s.first_pos[nf] = pos[first_rows]
        s.first_dir[nf] = direction[first_rows]
        s.first_file[nf] = batch.file_index[r]
        s.first_frame[nf] = batch.frame[r]

        # --- per (connection, direction) groups, in capture order ---
        fd = flow * 2 + direction
        o = np.argsort(fd, kind="stable")
        g_fd = fd[o]
        gs = np.ones(o.size, dtype=bool)
        gs[1:] = g_fd[1:] != g_fd[:-1]
        starts = np.flatnonzero(gs)
        gflow = g_fd[starts] // 2
        gdir = g_fd[starts] % 2
        gidx = np.cumsum(gs) - 1  # group ordinal per sorted row
        o_flags = flags[o]
        o_len = plen[o]
        o_ts = ts[o]
        o_pos = pos[o]
        o_seq32 = seq32[o]

        base = s.base_seq[gflow, gdir]
        unset = base < 0
        base = np.where(unset, o_seq32[starts], base)
        s.base_seq[gflow, gdir] = base
        rel = (o_seq32 - base[gidx]) & 0xFFFFFFFF
        syn = (o_flags & TH_SYN) != 0
        fin = (o_flags & TH_FIN) != 0
        rst = (o_flags & TH_RST) != 0
        end = rel + o_len + syn + fin
        # highest end before each row: grouped exclusive running max, combined with carried state
        span = np.int64(1 << 34)
        off = gidx.astype(np.int64) * span
        run = np.maximum.accumulate(end + off) - off
        prev = np.empty_like(run)
        prev[0] = -1
        prev[1:] = run[:-1]
        prev[gs] = -1
        prev = np.maximum(prev, s.max_end[gflow, gdir][gidx])
        s.max_end[gflow, gdir] = np.maximum.reduceat(np.maximum(end, prev), starts)

        has_len = o_len > 0
        new = has_len & (rel + o_len > prev)
        ka = (~has_len & ~syn & ~fin & ~rst & (rel == prev - 1) & (prev > 0)) | (
            (o_len == 1) & (rel + 1 == prev)
        )
        retr = has_len & ~new & ~ka

        # first FIN position per connection, including this batch
        fin_pos = np.where(fin, o_pos, NO_TS)
        gfinmin = np.minimum.reduceat(fin_pos, starts)
        np.minimum.at(s.first_fin_pos, gflow, gfinmin)
        eff_fin = s.first_fin_pos[gflow][gidx]

        # counters
        s.pkts[gflow, gdir] += np.diff(np.append(starts, o.size))
        s.bytes[gflow, gdir] += np.add.reduceat(o_len, starts)
        s.retrans[gflow, gdir] += np.add.reduceat(retr.astype(np.int64), starts)
        s.keepalive[gflow, gdir] += np.add.reduceat(ka.astype(np.int64), starts)
        np.maximum.at(s.last_ts, gflow, np.maximum.reduceat(o_ts, starts))

        def gmin(values: I64, mask: B) -> I64:
            return np.minimum.reduceat(np.where(mask, values, NO_TS), starts)

        def gmax(values: I64, mask: B) -> I64:
            return np.maximum.reduceat(np.where(mask, values, _NONE), starts)

        fd_pos = gmin(o_pos, new)
        fd_ts = gmin(o_ts, new)
        take = fd_pos < s.first_data_pos[gflow, gdir]
        # the first data segment's start, for server names (SNI, Host), column-wise
        got = np.flatnonzero(take & (fd_pos != NO_TS))
        if got.size:
            brow = fd_pos[got] - base_pos
            idx, src, found = names_from_payloads(
                batch.data, batch.payload_off[brow], batch.payload_caplen[brow].astype(np.int64)
            )
            remap = np.array([self._name_ids.setdefault(x, len(self._name_ids)) for x in found], np.int64)
            has = idx >= 0
            if has.any():
                self._pn_fd.append((gflow[got] * 2 + gdir[got])[has])
                self._pn_name.append(remap[idx[has]])
                self._pn_src.append(src[has])
        s.first_data_pos[gflow, gdir] = np.minimum(s.first_data_pos[gflow, gdir], fd_pos)
        s.first_data_ts[gflow, gdir] = np.where(take, fd_ts, s.first_data_ts[gflow, gdir])
        s.last_data_ts[gflow, gdir] = np.maximum(s.last_data_ts[gflow, gdir], gmax(o_ts, new))
        nosyn = ~syn
        s.first_ack_ts[gflow, gdir] = np.minimum(s.first_ack_ts[gflow, gdir], gmin(o_ts, nosyn))
        pure_ack = ~syn & ~fin & ~rst & ~has_len & ((o_flags & TH_ACK) != 0)
        pa_pos = gmin(o_pos, pure_ack)
        take = pa_pos < s.first_pure_ack_pos[gflow, gdir]
        s.first_pure_ack_pos[gflow, gdir] = np.where(take, pa_pos, s.first_pure_ack_pos[gflow, gdir])
        s.first_pure_ack_ts[gflow, gdir] = np.where(
            take, gmin(o_ts, pure_ack), s.first_pure_ack_ts[gflow, gdir]
        )
        np.maximum.at(s.last_data_before_fin_ts, gflow, gmax(o_ts, new & (o_pos < eff_fin)))

        # events: SYN, FIN, RST, and payload after the connection's first FIN
        ev = np.flatnonzero(syn | fin | rst | (has_len & (o_pos > eff_fin)))
        if ev.size:
            e = np.empty(ev.size, dtype=EVENT_DTYPE)
            e["flow"] = g_fd[ev] // 2
            e["pos"] = o_pos[ev]
            e["ts"] = o_ts[ev]
            e["dir"] = g_fd[ev] % 2
            e["flags"] = o_flags[ev]
            e["seq"] = rel[ev]
            e["len"] = o_len[ev]
            e["new"] = new[ev]
            src = rows[o[ev]]
            e["file"] = batch.file_index[src]
            e["frame"] = batch.frame[src]
            self._events.append(e)

    # -- results ----------------------------------------------------------------------------

    @property
    def packets_seen(self) -> int:
        """Rows fed so far (all protocols)."""
        return self._pos

    def payload_names(self) -> tuple[I64, I64, I64, tuple[str, ...]]:
        """Names found in first data segments: (connection*2+direction, name index, source code,
        names); source 0 is TLS SNI, 1 the HTTP Host header."""
        def cat(parts: list[I64]) -> I64:
            return np.concatenate(parts) if parts else np.empty(0, np.int64)

        return cat(self._pn_fd), cat(self._pn_name), cat(self._pn_src), tuple(self._name_ids)

    def finish(self) -> tuple[FlowState, npt.NDArray[np.void]]:
        """The per-connection state (trimmed to the connections seen) and the events sorted by
        connection then capture order."""
        s = self._s
        n = self._n
        out = FlowState(n=n, **{k: getattr(s, k)[:n] for k in _ARRAY_FIELDS})
        if self._events:
            ev = np.concatenate(self._events)
            ev = ev[np.lexsort((ev["pos"], ev["flow"]))]
        else:
            ev = np.empty(0, dtype=EVENT_DTYPE)
        return out, ev
