"""Column-wise TCP flow accounting over packet batches, in bounded memory.

:class:`FlowTable` eats :class:`~halfclose.capture.PacketBatch` blocks in capture order and keeps,
per TCP connection, a fixed set of counters (first/last packet, packets and payload bytes each
way, highest sequence number each way, last new payload before the first FIN, ...) plus the few
packets that decide what happened to the connection ("events"): every SYN, FIN and RST, and every
payload segment sent after the connection's first FIN. Everything else is folded into the
counters batch by batch with numpy (sort by flow, ``reduceat``), so memory grows with the number
of connections and events, not with the number of packets.

Rules, in one place:

* A flow key is the unordered pair of endpoints (address, port). Endpoints are hashed to 64 bits
  (exactly, without collisions, for IPv4), the key is the sum of the two hashes, and direction 0
  is from the endpoint with the lower hash. A key collision is detected (the XOR of the two
  hashes must agree too) and reported as an error, never silently merged.
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

from halfclose.analysis.names import names_from_payloads
from halfclose.capture.columns import TH_ACK, TH_FIN, TH_RST, TH_SYN, PacketBatch
from halfclose.errors import InputError

__all__ = ["EVENT_DTYPE", "NO_TS", "FlowState", "FlowTable"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]

#: TCP rows handled at a time: small enough for the column passes to stay in the CPU caches
#: (measured: about a fifth faster than whole 262,144-row batches).
CHUNK_ROWS = 32_768

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
    """64-bit hash of (address, port). An IPv4 address is stored IPv4-mapped, so its top 16 bits
    are zero and ``lo ^ port << 48`` is exact; :func:`_mix` is a bijection, so IPv4 endpoints never
    collide."""
    return _mix((lo ^ (port.astype(np.uint64) << np.uint64(48))) + hi * _M1)


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
        for k in range(0, rows.size, 1000000):
            self._feed_tcp(batch, rows[k : k + 1000000], base_pos)
        return dns_rows.astype(np.int64)

    def _slots(self, ukey: U64) -> I64:
        """Global slot per distinct key (new keys get new slots)."""
        where = np.searchsorted(self._key_hash, ukey)
        known = np.zeros(ukey.shape[0], dtype=bool)
        inb = where < self._key_hash.shape[0]
        known[inb] = self._key_hash[where[inb]] == ukey[inb]
        uslot = np.empty(ukey.shape[0], dtype=np.int64)
        uslot[known] = self._key_slot[where[known]]
        new_keys = np.flatnonzero(~known)
        if new_keys.size:
            new_slots = self._nslots + np.arange(new_keys.size, dtype=np.int64)
            uslot[new_keys] = new_slots
            self._nslots += new_keys.size
            # merge the (sorted) new keys into the sorted table
            nk = ukey[new_keys]
            at = np.searchsorted(self._key_hash, nk)
            self._key_hash = np.insert(self._key_hash, at, nk)
            self._key_slot = np.insert(self._key_slot, at, new_slots)
            self._slot_flow = np.concatenate([self._slot_flow, np.full(new_keys.size, -1, np.int64)])
            self._slot_syn = np.concatenate([self._slot_syn, np.full(new_keys.size, -1, np.int64)])
        return uslot

    def _feed_tcp(self, batch: PacketBatch, rows: I64, base_pos: int) -> None:
        # --- one sort: by flow key (stable, so capture order within a key) ---
        es = _endpoint_hash(batch.src_hi[rows], batch.src_lo[rows], batch.sport[rows])
        ed = _endpoint_hash(batch.dst_hi[rows], batch.dst_lo[rows], batch.dport[rows])
        fwd = es <= ed
        key = es + ed  # symmetric; es and ed are well mixed already
        order = np.argsort(key, kind="stable")
        srow = rows[order]  # batch row per sorted row
        s_key = key[order]
        n = order.size
        grp_start = np.ones(n, dtype=bool)
        grp_start[1:] = s_key[1:] != s_key[:-1]
        kidx = np.cumsum(grp_start) - 1
        kstarts = np.flatnonzero(grp_start)
        s_fwd = fwd[order]
        # Collision check: a second, independent combination of the two endpoint hashes must
        # agree within each key (a false pass needs two 64-bit coincidences at once).
        k2 = (es ^ ed)[order]
        if not bool(np.all(k2 == k2[kstarts[kidx]])):
            raise InputError("two TCP flows share a 64-bit flow hash: halfclose cannot tell them apart")
        s_slot = self._slots(s_key[kstarts])[kidx]
        direction = (~s_fwd).astype(np.int64)
        flags = batch.tcp_flags[srow]
        seq32 = batch.seq[srow].astype(np.int64)
        plen = batch.payload_len[srow].astype(np.int64)
        ts = batch.ts_ns[srow]
        pos = srow.astype(np.int64) + base_pos

        ar = np.arange(n)

        # --- split keys into connections (new pure SYN with a new sequence number) ---
        # Worked on the pure SYNs only (few), then spread to all rows with one cumulative sum.
        pure_syn = (flags & (TH_SYN | TH_ACK)) == TH_SYN
        uslot = s_slot[kstarts]
        key_flow0 = self._slot_flow[uslot]
        syn_rows = np.flatnonzero(pure_syn)
        sk = kidx[syn_rows]
        sseq = seq32[syn_rows]
        same_prev = np.zeros(syn_rows.size, dtype=bool)
        same_prev[1:] = sk[1:] == sk[:-1]
        prev_seq = self._slot_syn[uslot[sk]]
        prev_seq[1:] = np.where(same_prev[1:], sseq[:-1], prev_seq[1:])
        had_before = (syn_rows != kstarts[sk]) | (key_flow0[sk] >= 0)
        split_rows = np.union1d(syn_rows[(prev_seq != sseq) & had_before], kstarts[key_flow0 < 0])
        new_ids = self._n + np.arange(split_rows.size, dtype=np.int64)
        self._n += split_rows.size
        self._ensure(self._n)
        mark = np.zeros(n, dtype=np.int64)
        mark[split_rows] = 1
        j = np.cumsum(mark) - 1  # the last split at or before each row
        use_split = j >= 0
        use_split[use_split] = kidx[split_rows[j[use_split]]] == kidx[use_split]
        flow = key_flow0[kidx]
        flow[use_split] = new_ids[j[use_split]]
        # carry slot state: the connection at each key's end, and its last pure SYN's seq
        last_in_key = np.append(kstarts[1:] - 1, n - 1)
        self._slot_flow[uslot] = flow[last_in_key]
        if syn_rows.size:
            last_syn = np.ones(syn_rows.size, dtype=bool)
            last_syn[:-1] = sk[1:] != sk[:-1]
            self._slot_syn[uslot[sk[last_syn]]] = sseq[last_syn]

        # --- initialise new connections from their first row ---
        s = self._s
        nf = new_ids
        fr = split_rows.astype(np.int64)
        r, fw = srow[fr], s_fwd[fr]
        s.a_hi[nf] = np.where(fw, batch.src_hi[r], batch.dst_hi[r])
        s.a_lo[nf] = np.where(fw, batch.src_lo[r], batch.dst_lo[r])
        s.a_port[nf] = np.where(fw, batch.sport[r], batch.dport[r])
        s.b_hi[nf] = np.where(fw, batch.dst_hi[r], batch.src_hi[r])
        s.b_lo[nf] = np.where(fw, batch.dst_lo[r], batch.src_lo[r])
        s.b_port[nf] = np.where(fw, batch.dport[r], batch.sport[r])
        s.ip_version[nf] = batch.ip_version[srow[fr]]
        s.first_ts[nf] = ts[fr]
        s.first_pos[nf] = pos[fr]
        s.first_dir[nf] = direction[fr]
        s.first_file[nf] = batch.file_index[srow[fr]]
        s.first_frame[nf] = batch.frame[srow[fr]]

        # --- per connection groups (contiguous in the sorted order), directions by masks ---
        gs = np.ones(n, dtype=bool)
        gs[1:] = flow[1:] != flow[:-1]
        starts = np.flatnonzero(gs)
        gflow = flow[starts]
        gidx = np.cumsum(gs) - 1
        syn = (flags & TH_SYN) != 0
        fin = (flags & TH_FIN) != 0
        rst = (flags & TH_RST) != 0
        has_len = plen > 0
        big = np.iinfo(np.int64).max

        is_d = (direction == 0, direction == 1)
        # relative sequence numbers: base = first sequence number seen in each direction
        base = np.empty((starts.size, 2), dtype=np.int64)
        for d in (0, 1):
            first_d = np.minimum.reduceat(np.where(is_d[d], ar, big), starts)
            carried = s.base_seq[gflow, d]
            fresh = np.where(first_d < big, seq32[np.minimum(first_d, n - 1)], _NONE)
            base[:, d] = np.where(carried >= 0, carried, fresh)
            s.base_seq[gflow, d] = base[:, d]
        rel = (seq32 - base[gidx, direction]) & 0xFFFFFFFF
        end = rel + plen + syn + fin
        # highest end before each row in its direction: grouped running max, plus carried state
        span = np.int64(1 << 34)
        off = gidx.astype(np.int64) * span
        prev = np.empty(n, dtype=np.int64)
        for d in (0, 1):
            vals = np.where(is_d[d], end, -1) + off
            run = np.maximum.accumulate(vals) - off
            p = np.empty(n, dtype=np.int64)
            p[0] = -1
            p[1:] = run[:-1]
            p[gs] = -1
            carried = s.max_end[gflow, d]
            p = np.maximum(p, carried[gidx])
            prev = np.where(is_d[d], p, prev)
            s.max_end[gflow, d] = np.maximum(carried, np.maximum.reduceat(np.where(is_d[d], end, -1), starts))
        new = has_len & (rel + plen > prev)
        ka = (~has_len & ~syn & ~fin & ~rst & (rel == prev - 1) & (prev > 0)) | (
            (plen == 1) & (rel + 1 == prev)
        )
        retr = has_len & ~new & ~ka

        # first FIN position per connection, including this batch
        fin_rows = np.flatnonzero(fin)
        if fin_rows.size:
            np.minimum.at(s.first_fin_pos, flow[fin_rows], pos[fin_rows])
        eff_fin = s.first_fin_pos[gflow][gidx]

        # counters: sums by bincount over (group, direction); first/last rows by occurrence
        ng = starts.size
        fdk = gidx * 2 + direction
        np.maximum.at(s.last_ts, gflow, np.maximum.reduceat(ts, starts))
        s.pkts[gflow] += np.bincount(fdk, minlength=2 * ng).reshape(ng, 2)
        s.bytes[gflow] += np.bincount(fdk, weights=plen, minlength=2 * ng).astype(np.int64).reshape(ng, 2)
        s.retrans[gflow] += np.bincount(fdk[retr], minlength=2 * ng).reshape(ng, 2)
        s.keepalive[gflow] += np.bincount(fdk[ka], minlength=2 * ng).reshape(ng, 2)
        pure_ack = ~syn & ~fin & ~rst & ~has_len & ((flags & TH_ACK) != 0)

        def occurrences(mask: B, *, last: bool = False) -> tuple[I64, I64]:
            """(group, row) of the first (or last) row of each group where *mask* holds."""
            idx = np.flatnonzero(mask)
            g = gidx[idx]
            edge = np.ones(idx.size, dtype=bool)
            if last:
                edge[:-1] = g[1:] != g[:-1]
            else:
                edge[1:] = g[1:] != g[:-1]
            return g[edge], idx[edge]

        name_rows: list[I64] = []
        name_fd: list[I64] = []
        for d in (0, 1):
            m = is_d[d]
            g, r = occurrences(new & m)
            f = gflow[g]
            take = pos[r] < s.first_data_pos[f, d]
            if take.any():
                name_rows.append(pos[r[take]] - base_pos)
                name_fd.append(f[take] * 2 + d)
                s.first_data_pos[f[take], d] = pos[r[take]]
                s.first_data_ts[f[take], d] = ts[r[take]]
            g, r = occurrences(new & m, last=True)
            f = gflow[g]
            s.last_data_ts[f, d] = np.maximum(s.last_data_ts[f, d], ts[r])
            g, r = occurrences(~syn & m)
            f = gflow[g]
            s.first_ack_ts[f, d] = np.minimum(s.first_ack_ts[f, d], ts[r])
            g, r = occurrences(pure_ack & m)
            f = gflow[g]
            take = pos[r] < s.first_pure_ack_pos[f, d]
            s.first_pure_ack_pos[f[take], d] = pos[r[take]]
            s.first_pure_ack_ts[f[take], d] = ts[r[take]]
        g, r = occurrences(new & (pos < eff_fin), last=True)
        f = gflow[g]
        s.last_data_before_fin_ts[f] = np.maximum(s.last_data_before_fin_ts[f], ts[r])

        # the first data segments' starts, for server names (SNI, Host), column-wise
        if name_rows:
            brow = np.concatenate(name_rows)
            fdn = np.concatenate(name_fd)
            idx, src, found = names_from_payloads(
                batch.data, batch.payload_off[brow], batch.payload_caplen[brow].astype(np.int64)
            )
            remap = np.array([self._name_ids.setdefault(x, len(self._name_ids)) for x in found], np.int64)
            has = idx >= 0
            if has.any():
                self._pn_fd.append(fdn[has])
                self._pn_name.append(remap[idx[has]])
                self._pn_src.append(src[has])

        # events: SYN, FIN, RST, and payload after the connection's first FIN
        ev = np.flatnonzero(syn | fin | rst | (has_len & (pos > eff_fin)))
        if ev.size:
            e = np.empty(ev.size, dtype=EVENT_DTYPE)
            e["flow"] = flow[ev]
            e["pos"] = pos[ev]
            e["ts"] = ts[ev]
            e["dir"] = direction[ev]
            e["flags"] = flags[ev]
            e["seq"] = rel[ev]
            e["len"] = plen[ev]
            e["new"] = new[ev]
            e["file"] = batch.file_index[srow[ev]]
            e["frame"] = batch.frame[srow[ev]]
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
