"""Column-wise TCP flow accounting over packet batches, in bounded memory.

:class:`FlowTable` eats :class:`~halfclose.capture.PacketBatch` blocks in capture order and keeps,
per TCP connection, a fixed set of counters (first/last packet, packets and payload bytes each
way, highest sequence number each way, last new payload before the first FIN, ...) plus the few
packets that decide what happened to the connection ("events"): every SYN, FIN and RST, and every
payload segment sent after the connection's first FIN. Everything else is folded into the
counters batch by batch (one compiled pass over the packets in capture order, in
:mod:`halfclose.analysis._flowkernel`), so memory grows with the number of connections
and events, not with the number of packets.

Rules, in one place:

* A flow key is the unordered pair of endpoints (address, port). Endpoints are hashed to 64 bits
  (exactly, without collisions, for IPv4), the key is the sum of the two hashes, and direction 0
  is from the endpoint with the lower hash. A key collision is detected (the XOR of the two
  hashes must agree too) and reported as an error, never silently merged.
* A pure SYN (SYN without ACK) starts a new connection on its key when the current connection has
  already seen the SYN's direction with another first sequence number, as tshark's ``tcp.stream``
  decides: ports reused for a new connection get a new record; a SYN retransmission, and a SYN
  captured after its SYN/ACK or after the RST that answers it (multi-queue ``-i any`` captures,
  captures in the middle of a path), do not.
* Sequence numbers are made relative to the first one seen in each direction (32-bit wrap-around
  handled; connections moving more than 4 GiB one way are not).
* A segment carries *new data* when its payload reaches beyond the highest sequence number sent
  before in that direction. Payload that does not is a retransmission, except a TCP keep-alive
  probe: zero-length with ``seq = next - 1``, or one byte ending at ``next``. Keep-alive probes and
  retransmissions are not activity: idle times are measured from the last new data.
* Sequence space: a segment starting beyond the highest end sent before leaves a hole (the latest
  one per direction is kept). Payload that fills part of it is *out of order*: new data, not a
  retransmission, and when it precedes its side's FIN in sequence space it counts as data before
  that FIN (also when captured after it). Hole bytes never filled are ``missed_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from halfclose.analysis import _flowkernel as fk
from halfclose.analysis._flowkernel import COLLISION, flow_pass, rehash
from halfclose.analysis.names import PayloadNames, names_from_payloads, services_from_payloads
from halfclose.capture.columns import PacketBatch
from halfclose.errors import InputError

__all__ = ["EVENT_DTYPE", "NO_TS", "FlowState", "FlowTable", "Flows"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

#: "Not seen yet" in the counters that keep a minimum (first times and positions): the identity
#: of min, never leaves the flow table (the connection table turns it into MISSING_INT).
NO_TS = np.iinfo(np.int64).max
#: "Not seen yet" in the counters that keep a maximum (last times, sequence numbers).
_NO_MAX = -1

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
        ("closing", np.uint8),  # payload made of closing records only (a kernel CLOSING_* code; 0: not)
        ("file", np.int32),
        ("frame", np.int64),
    ]
)

def _grow(arr: npt.NDArray[np.generic], size: int, fill: object) -> npt.NDArray[np.generic]:
    if arr.shape[0] >= size:
        return arr
    new_len = max(size, arr.shape[0] * 3 // 2, 1024)  # 1.5x: less slack than doubling
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
    first_tunnel: npt.NDArray[np.uint8]  # the first packet's encapsulation (a capture Tunnel code)
    service: I64  # per side: the Service code of its first new data, MISSING_CODE (-1) for none
    pkts: I64
    bytes: I64
    ip_bytes: I64  # IP lengths summed (Zeek's orig_ip_bytes / resp_ip_bytes)
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
    h2c: npt.NDArray[np.int8]  # 1: a side's first data was the cleartext HTTP/2 preface
    run_last_ts: I64  # the current run of closing records (either side): its last record's time, -1: none
    closing_ts: I64  # ... its closing record (see halfclose.analysis.tcp), NO_TS: none
    closing_kind: I64  # ... its kind (a ``CLOSING_*`` code of the kernel)
    closing_ref_ts: I64  # ... the last new data (either way) before it, -1 when none
    closing_dir: I64  # ... its sender's direction
    goaway_ts: I64  # first h2c GOAWAY frame per side
    fin_end: I64  # relative sequence number after each side's first FIN, -1: none
    fin_acked_ts: I64  # the peer's first ACK covering each side's FIN
    hole_lo: I64  # the latest sequence hole per side (relative), empty when hole_hi <= hole_lo
    hole_hi: I64
    missed: I64  # bytes of earlier holes never filled
    gaps: I64  # holes opened per side
    retx_pos: I64  # [:, 3 * d + k]: position of side d's 1st, 10th, 100th retransmission (NO_TS: none)
    gap_pos: I64  # ... of its 1st, 10th, 100th hole


_ARRAY_FIELDS = tuple(f.name for f in fields(FlowState) if f.name != "n")
#: The arrays the compiled pass keeps (``service`` is filled where the first data segments are read).
_KERNEL_FIELDS = tuple(f for f in _ARRAY_FIELDS if f != "service")
#: First-data segments whose names and services are read together (their payloads copied aside
#: until then): the column-wise readers cost about the same for a few rows as for thousands.
_NAME_ROWS = 4096
#: Room to start with for event rows, first-data rows and their payload bytes (grown as needed:
#: the compiled pass stops at a full buffer and goes on from there). Untouched room costs no
#: memory; growing leaves the old buffer's pages behind in the heap, so there is room for the
#: events of some 20,000 connections from the start.
_FIRST_ROWS = (1 << 17, 2 * _NAME_ROWS, 1 << 21)


@dataclass(frozen=True, slots=True, kw_only=True)
class Flows:
    """What the flow table hands on: counters, events (:data:`EVENT_DTYPE`) and first-data names."""

    state: FlowState
    events: npt.NDArray[np.void]
    names: PayloadNames


class FlowTable:
    """Accumulates TCP connections over batches; see the module docstring for the rules."""

    def __init__(self) -> None:
        self._pos = 0
        # Flow keys: an open-addressing table key -> slot; per slot the second key (collision
        # check) and the current connection.
        self._ht_key: U64 = np.zeros(1 << 12, dtype=np.uint64)
        self._ht_slot: I64 = np.full(1 << 12, -1, dtype=np.int64)
        self._slot_key2: U64 = np.zeros(1 << 11, dtype=np.uint64)
        self._slot_flow: I64 = np.full(1 << 11, -1, dtype=np.int64)
        self._counts: I64 = np.zeros(fk.COUNTS, dtype=np.int64)  # the kernel's C_* counts
        self._service: I64 = np.empty((0, 2), np.int64)  # FlowState.service, filled by _take_names
        self._n = 0
        self._cap = 0  # connections the state arrays have room for
        self._done: Flows | None = None  # what finish gave
        self._dns_rows: I64 = np.empty(0, np.int64)  # the compiled pass's list of a batch's DNS rows
        self._events: I64 = np.empty((_FIRST_ROWS[0], fk.EV_COLUMNS), np.int64)  # the kernel's EV_* rows
        self._names: I64 = np.empty((_FIRST_ROWS[1], fk.NM_COLUMNS), np.int64)  # first-data rows (NM_*) not read yet
        self._name_data: npt.NDArray[np.uint8] = np.empty(_FIRST_ROWS[2], np.uint8)  # their payloads
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
            first_tunnel=np.empty(0, np.uint8),
            service=self._service,
            pkts=np.empty((0, 2), np.int64),
            bytes=np.empty((0, 2), np.int64),
            ip_bytes=np.empty((0, 2), np.int64),
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
            h2c=np.empty(0, np.int8),
            run_last_ts=z64,
            closing_ts=z64,
            closing_kind=z64,
            closing_ref_ts=z64,
            closing_dir=z64,
            goaway_ts=np.empty((0, 2), np.int64),
            fin_end=np.empty((0, 2), np.int64),
            fin_acked_ts=np.empty((0, 2), np.int64),
            hole_lo=np.empty((0, 2), np.int64),
            hole_hi=np.empty((0, 2), np.int64),
            missed=np.empty((0, 2), np.int64),
            gaps=np.empty((0, 2), np.int64),
            retx_pos=np.empty((0, 6), np.int64),
            gap_pos=np.empty((0, 6), np.int64),
        )

    # -- growth -----------------------------------------------------------------------------

    _FILL: ClassVar[dict[str, object]] = {
        "first_ts": NO_TS,
        "last_ts": _NO_MAX,
        "first_pos": NO_TS,
        "base_seq": _NO_MAX,
        "max_end": _NO_MAX,
        "first_data_ts": NO_TS,
        "first_data_pos": NO_TS,
        "last_data_ts": _NO_MAX,
        "first_ack_ts": NO_TS,
        "first_pure_ack_pos": NO_TS,
        "first_pure_ack_ts": NO_TS,
        "first_fin_pos": NO_TS,
        "last_data_before_fin_ts": _NO_MAX,
        "run_last_ts": _NO_MAX,
        "closing_ts": NO_TS,
        "closing_ref_ts": _NO_MAX,
        "goaway_ts": NO_TS,
        "fin_end": _NO_MAX,
        "fin_acked_ts": NO_TS,
        "service": -1,
        "retx_pos": NO_TS,
        "gap_pos": NO_TS,
    }

    def _ensure(self, n: int) -> None:
        s = self._s
        for name in _KERNEL_FIELDS:
            arr = getattr(s, name)
            if arr.shape[0] < n:
                setattr(s, name, _grow(arr, n, self._FILL.get(name, 0)))
        self._cap = int(s.last_ts.shape[0])

    # -- feeding ----------------------------------------------------------------------------

    def feed(self, batch: PacketBatch) -> I64:
        """Account the batch's TCP packets (every row counts for positions) in one compiled pass,
        without the GIL for nearly all of its time; returns the rows of its UDP packets to or
        from port 53 (for :class:`~halfclose.analysis.dns.DnsCollector`; IP fragments other than
        the first carry no transport header and are neither TCP nor DNS rows). Batches come in
        capture order."""
        if self._done is not None:
            raise RuntimeError("the flow table is finished: it takes no more batches")
        n = len(batch)
        base_pos = self._pos
        self._pos += n
        c = self._counts
        c[fk.C_BATCH_EVENTS] = c[fk.C_EVENTS]
        c[fk.C_DNS] = 0
        if self._dns_rows.shape[0] < n:
            self._dns_rows = np.empty(max(n, 1 << 14), np.int64)
        dns_rows = self._dns_rows  # (one buffer for every batch: its DNS rows are copied out)
        s = self._s
        done = 0
        while True:
            if self._n >= self._cap:
                self._ensure(max(self._n * 3 // 2, 1024))
            done = flow_pass(
                done, batch.proto, batch.fragment, batch.src_hi, batch.src_lo, batch.sport, batch.dst_hi,
                batch.dst_lo, batch.dport, batch.tcp_flags, batch.seq, batch.ack, batch.payload_len, batch.ip_len,
                batch.ts_ns, base_pos, batch.data, batch.payload_off, batch.payload_caplen,
                batch.ip_version, batch.file_index, batch.frame, batch.tunnel,
                self._ht_key, self._ht_slot, self._slot_key2, self._slot_flow, c,
                s.a_hi, s.a_lo, s.a_port, s.b_hi, s.b_lo, s.b_port, s.ip_version,
                s.first_ts, s.first_pos, s.first_dir, s.first_file, s.first_frame, s.first_tunnel,
                s.last_ts, s.pkts, s.bytes, s.ip_bytes, s.base_seq, s.max_end,
                s.first_data_ts, s.first_data_pos, s.last_data_ts, s.first_ack_ts,
                s.first_pure_ack_pos, s.first_pure_ack_ts, s.retrans, s.keepalive,
                s.first_fin_pos, s.last_data_before_fin_ts,
                s.h2c, s.run_last_ts, s.closing_ts, s.closing_kind, s.closing_ref_ts, s.closing_dir,
                s.goaway_ts, s.fin_end, s.fin_acked_ts,
                s.hole_lo, s.hole_hi, s.missed, s.gaps, s.retx_pos, s.gap_pos,
                self._events, self._names, self._name_data, dns_rows,
            )  # fmt: skip
            if done == COLLISION:
                raise InputError("two TCP flows share a 64-bit flow hash: halfclose cannot tell them apart")
            self._n = int(c[fk.C_FLOWS])
            if done == n:
                break
            self._grow_for(int(batch.payload_caplen[done]))
        if c[fk.C_NAMES] >= _NAME_ROWS:
            self._take_names()
        return dns_rows[: int(c[fk.C_DNS])].copy()

    def _grow_for(self, payload: int) -> None:
        """Room for what stopped the compiled pass (a row with *payload* captured bytes next)."""
        c = self._counts
        if self._n >= self._cap:
            return  # the pass's next call grows the connection arrays
        if c[fk.C_EVENTS] >= self._events.shape[0]:
            self._events = _grow(self._events, self._events.shape[0] * 2, 0)  # type: ignore[assignment]
        elif c[fk.C_NAMES] >= self._names.shape[0]:
            self._names = _grow(self._names, self._names.shape[0] * 2, 0)  # type: ignore[assignment]
        elif int(c[fk.C_NAME_BYTES]) + payload > self._name_data.shape[0]:
            grown = np.empty(max(self._name_data.shape[0] * 2, int(c[fk.C_NAME_BYTES]) + payload), np.uint8)
            grown[: int(c[fk.C_NAME_BYTES])] = self._name_data[: int(c[fk.C_NAME_BYTES])]
            self._name_data = grown
        else:
            self._grow_keys()

    def _grow_keys(self) -> None:
        """Double the key table (rehashing) and the per-slot arrays."""
        nslots = int(self._counts[0])
        size = self._ht_key.shape[0] * 2
        if 2 * (nslots + 1) > self._ht_key.shape[0]:
            live = self._ht_slot >= 0
            keys, slots = self._ht_key[live], self._ht_slot[live]
            self._ht_key = np.zeros(size, dtype=np.uint64)
            self._ht_slot = np.full(size, -1, dtype=np.int64)
            rehash(keys, slots, self._ht_key, self._ht_slot)
        if nslots >= self._slot_flow.shape[0]:
            self._slot_key2 = _grow(self._slot_key2, nslots * 2, 0)  # type: ignore[assignment]
            self._slot_flow = _grow(self._slot_flow, nslots * 2, -1)  # type: ignore[assignment]

    def _take_names(self) -> None:
        """The waiting first data segments' server names (SNI, Host) and services, column-wise."""
        c = self._counts
        k = int(c[fk.C_NAMES])
        self._service = _grow(self._service, self._n, -1)  # type: ignore[assignment]
        if k:
            rows = self._names[:k]
            fdn = rows[:, fk.NM_FLOW_DIR].copy()
            off, cap, plen = rows[:, fk.NM_OFF].copy(), rows[:, fk.NM_CAP].copy(), rows[:, fk.NM_LEN].copy()
            data = self._name_data
            self._service.reshape(-1)[fdn] = services_from_payloads(data, off, cap, plen)
            got = names_from_payloads(data, off, cap)
            has = np.flatnonzero(got.name >= 0)
            if has.size:
                # names numbered by first appearance (in capture order, however many were read together)
                used, first = np.unique(got.name[has], return_index=True)
                remap = np.full(len(got.names), -1, np.int64)
                for x in used[np.argsort(first)].tolist():
                    remap[x] = self._name_ids.setdefault(got.names[x], len(self._name_ids))
                self._pn_fd.append(fdn[has])
                self._pn_name.append(remap[got.name[has]])
                self._pn_src.append(got.source[has])
        c[fk.C_NAMES] = 0
        c[fk.C_NAME_BYTES] = 0

    # -- results ----------------------------------------------------------------------------

    def payload_names(self) -> PayloadNames:
        """Names found in first data segments (TLS SNI, HTTP Host)."""

        def cat(parts: list[I64]) -> I64:
            return np.concatenate(parts) if parts else np.empty(0, np.int64)

        return PayloadNames(flow_dir=cat(self._pn_fd), name=cat(self._pn_name), source=cat(self._pn_src),
                            names=tuple(self._name_ids))  # fmt: skip

    def finish(self) -> Flows:
        """The per-connection state (trimmed to the connections seen), the events sorted by
        connection then capture order, and the first-data names. The table takes no batches
        after it (its buffers are let go); calling it again gives the same."""
        if self._done is not None:
            return self._done
        self._take_names()
        s = self._s
        n = self._n
        service: I64 = self._service[:n]
        out = FlowState(n=n, service=service, **{k: getattr(s, k)[:n] for k in _KERNEL_FIELDS})
        events = self._sorted_events()
        # the buffers are not needed any more (the table lives on while later stages run)
        self._events = np.empty((0, fk.EV_COLUMNS), np.int64)
        self._counts[fk.C_EVENTS] = self._counts[fk.C_BATCH_EVENTS] = 0
        self._names = np.empty((0, fk.NM_COLUMNS), np.int64)
        self._name_data = np.empty(0, np.uint8)
        self._done = Flows(state=out, events=events, names=self.payload_names())
        return self._done

    def _sorted_events(self) -> npt.NDArray[np.void]:
        """The event rows as :data:`EVENT_DTYPE`, sorted by connection, then capture order."""
        rows = self._events[: int(self._counts[fk.C_EVENTS])]
        order = np.lexsort((rows[:, fk.EV_POS], rows[:, fk.EV_FLOW]))
        ev = np.empty(order.size, dtype=EVENT_DTYPE)
        for name, col in (("flow", fk.EV_FLOW), ("pos", fk.EV_POS), ("ts", fk.EV_TS), ("seq", fk.EV_SEQ),
                          ("len", fk.EV_LEN), ("file", fk.EV_FILE), ("frame", fk.EV_FRAME)):  # fmt: skip
            ev[name] = rows[order, col]
        bits = rows[order, fk.EV_BITS]
        ev["dir"] = bits & 0xFF
        ev["flags"] = (bits >> 8) & 0xFF
        ev["new"] = (bits >> 16) & 1
        ev["closing"] = (bits >> 24) & 0xFF
        return ev
