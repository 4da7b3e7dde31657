"""Connection records: one per TCP connection, in the spirit of Zeek's conn.log.

The counters come from :class:`~halfclose.analysis.flows.FlowTable`; this module decides, per
connection, who the originator is, how it was closed and by whom, and writes the record. All
rules live here:

Originator (first rule that applies, recorded in ``orig_by``):
    ``syn``: the sender of the first pure SYN; ``synack``: the receiver of the first SYN/ACK;
    ``port``: midstream, the side with the higher port is the originator (clients use ephemeral
    ports); ``first``: ports equal, the sender of the first packet seen.

``conn_state`` (first rule that applies; codes as in Zeek, closed set :class:`ConnState`):
    midstream (no SYN and no SYN/ACK): OTH.
    SYN, no SYN/ACK: RSTOS0 if the originator then sent RST, SH if it sent FIN, REJ if the
    responder answered with RST, else S0.
    SYN/ACK but no SYN seen: RSTRH if the responder sent RST, SHR if it sent FIN, else OTH.
    Established (SYN and SYN/ACK): RSTO / RSTR when the first RST came from the originator /
    responder; else SF when both sent FIN, S2 when only the originator did, S3 when only the
    responder did, S1 when neither.

``history`` letters (upper case: originator, lower case: responder), in capture order:
    ``S`` pure SYN, ``H`` SYN/ACK, ``A`` first pure ACK, ``D`` first new data, ``F`` FIN (once per
    distinct sequence number), ``R`` RST (each), ``T`` a FIN retransmission (same sequence number),
    and ``D`` again for the first new data sent after the peer's FIN (what Zeek cannot show:
    a stale write reads ``...f...D...r``).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from halfclose.analysis.flows import _M1, NO_TS, FlowState, _mix
from halfclose.analysis.names import NameSource
from halfclose.capture.columns import TH_ACK, TH_FIN, TH_RST, TH_SYN

__all__ = [
    "CONN_STATE_DOC",
    "CloseKind",
    "ConnState",
    "Connection",
    "ConnectionTable",
    "HalfCloseEnd",
    "OrigBy",
    "Side",
    "build_table",
    "format_address",
]


@enum.unique
class ConnState(enum.StrEnum):
    """Connection state summary codes (Zeek's set)."""

    S0 = "S0"
    S1 = "S1"
    SF = "SF"
    REJ = "REJ"
    S2 = "S2"
    S3 = "S3"
    RSTO = "RSTO"
    RSTR = "RSTR"
    RSTOS0 = "RSTOS0"
    RSTRH = "RSTRH"
    SH = "SH"
    SHR = "SHR"
    OTH = "OTH"


#: One line per code, for docs and ``--help``.
CONN_STATE_DOC: dict[ConnState, str] = {
    ConnState.S0: "SYN seen, no reply",
    ConnState.S1: "established, not closed",
    ConnState.SF: "established, both sides sent FIN, no RST",
    ConnState.REJ: "SYN answered by RST",
    ConnState.S2: "established, originator sent FIN, responder did not",
    ConnState.S3: "established, responder sent FIN, originator did not",
    ConnState.RSTO: "established, originator sent the first RST",
    ConnState.RSTR: "established, responder sent the first RST",
    ConnState.RSTOS0: "SYN then RST from the originator, no SYN/ACK",
    ConnState.RSTRH: "SYN/ACK then RST from the responder, no SYN seen",
    ConnState.SH: "SYN then FIN from the originator, no SYN/ACK",
    ConnState.SHR: "SYN/ACK then FIN from the responder, no SYN seen",
    ConnState.OTH: "midstream: no SYN seen",
}


@enum.unique
class Side(enum.StrEnum):
    """A connection's side."""

    ORIG = "orig"
    RESP = "resp"


@enum.unique
class CloseKind(enum.StrEnum):
    """How a side closed: FIN (orderly) or RST (abort)."""

    FIN = "fin"
    RST = "rst"


@enum.unique
class HalfCloseEnd(enum.StrEnum):
    """What ended the half-closed phase that the first FIN opened."""

    FIN = "fin"  # the other side's FIN
    RST = "rst"  # a RST from either side
    CAPTURE_END = "capture_end"  # nothing: the last packet of the connection is taken


@enum.unique
class ClosingRecord(enum.StrEnum):
    """The first closing record a side sent before its FIN (see the module docstring)."""

    TLS_ALERT = "tls_alert"  # a TLS alert record (content type 21, visible up to TLS 1.2)
    TLS_SHORT = "tls_short"  # short encrypted records only (TLS 1.3 close_notify, GOAWAY in TLS)
    H2_GOAWAY = "h2_goaway"  # a cleartext HTTP/2 GOAWAY frame (h2c)


@enum.unique
class OrigBy(enum.StrEnum):
    """Which rule chose the originator (see the module docstring)."""

    SYN = "syn"
    SYNACK = "synack"
    PORT = "port"
    FIRST = "first"


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """One TCP connection. Times are integer ns since the epoch; durations integer ns.

    Fields:
        uid: stable id, ``C`` + 16 base-32 characters of a hash of the first packet's time and the
            four-tuple (the same capture always gives the same uids).
        ts_ns / end_ns / duration_ns: first packet, last packet, their difference.
        ip_version: 4 or 6.
        orig_h, orig_p, resp_h, resp_p: originator and responder address and port.
        orig_by: the rule that chose the originator (:class:`OrigBy`).
        orig_pkts, resp_pkts: packets sent by each side.
        orig_bytes, resp_bytes: TCP payload bytes sent by each side, from IP lengths, counting
            retransmissions (unlike Zeek, which uses sequence numbers).
        conn_state, history: see the module docstring.
        syn_ns: the SYN the handshake completed with (the last one before the SYN/ACK).
        handshake_rtt_ns: SYN -> SYN/ACK -> ACK, as seen at the capture point (the sum of both
            legs, a full round trip wherever the capture was taken); None without a full handshake.
        closed_first, close_kind, first_close_ns: the side that sent the first FIN or RST, which it
            was, and when.
        orig_fin_ns, resp_fin_ns, orig_rst_ns, resp_rst_ns: each side's first FIN and first RST.
        idle_before_close_ns: first FIN minus the last new data (either way) before it; None when
            the first close was a RST or no data preceded the FIN. Keep-alive probes and
            retransmissions are not data.
        half_closed_ns, half_close_end: from the first FIN to the other side's FIN or to a RST from
            either side, else to the connection's last packet (``capture_end``).
        orig_fin_retransmits, resp_fin_retransmits: FIN segments repeating an earlier FIN's
            sequence number.
        orig_retransmits, resp_retransmits: payload segments carrying no new data (not keep-alives).
        orig_keepalives, resp_keepalives: TCP keep-alive probes.
        stale_write_ns: the first new data the originator sent after the responder's FIN
            (a request written into a half-closed connection); stale_writes counts such segments.
        server_name, server_name_source: the responder's name, from TLS SNI, the HTTP Host header,
            or a DNS answer seen earlier in the capture mapping the responder's address to a name.
        file_index, first_frame: where the first packet is (input file, 1-based record number).
    """

    uid: str
    ts_ns: int
    end_ns: int
    duration_ns: int
    ip_version: int
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    orig_by: OrigBy
    orig_pkts: int
    resp_pkts: int
    orig_bytes: int
    resp_bytes: int
    conn_state: ConnState
    history: str
    syn_ns: int | None
    handshake_rtt_ns: int | None
    closed_first: Side | None
    close_kind: CloseKind | None
    first_close_ns: int | None
    orig_fin_ns: int | None
    resp_fin_ns: int | None
    orig_rst_ns: int | None
    resp_rst_ns: int | None
    closing_record_ns: int | None
    closing_record: ClosingRecord | None
    idle_before_close_ns: int | None
    half_closed_ns: int | None
    half_close_end: HalfCloseEnd | None
    orig_fin_retransmits: int
    resp_fin_retransmits: int
    orig_fin_acked_ns: int | None
    resp_fin_acked_ns: int | None
    orig_goaway_ns: int | None
    resp_goaway_ns: int | None
    orig_retransmits: int
    resp_retransmits: int
    orig_keepalives: int
    resp_keepalives: int
    stale_write_ns: int | None
    stale_writes: int
    server_name: str | None
    server_name_source: NameSource | None
    dns_name: str | None
    file_index: int
    first_frame: int

    @property
    def server(self) -> str:
        """The server's name when known, else ``address:port`` (``[v6]:port`` for IPv6)."""
        if self.server_name:
            return self.server_name
        return f"[{self.resp_h}]:{self.resp_p}" if self.ip_version == 6 else f"{self.resp_h}:{self.resp_p}"

    def is_server_closed_first(self) -> bool:
        """The responder closed first, with a FIN."""
        return self.closed_first is Side.RESP and self.close_kind is CloseKind.FIN


def format_address(version: int, hi: int, lo: int) -> str:
    """Text form of an address stored as two 64-bit halves (IPv4 stored IPv4-mapped)."""
    if version == 4:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


#: Missing value in the table's int64 columns.
NONE = int(np.iinfo(np.int64).min)

ORIG_BY: tuple[OrigBy, ...] = (OrigBy.SYN, OrigBy.SYNACK, OrigBy.PORT, OrigBy.FIRST)
STATES: tuple[ConnState, ...] = tuple(ConnState)
SIDES: tuple[Side, ...] = (Side.ORIG, Side.RESP)
KINDS: tuple[CloseKind, ...] = (CloseKind.FIN, CloseKind.RST)
ENDS: tuple[HalfCloseEnd, ...] = (HalfCloseEnd.FIN, HalfCloseEnd.RST, HalfCloseEnd.CAPTURE_END)
SOURCES: tuple[NameSource, ...] = (NameSource.TLS_SNI, NameSource.HTTP_HOST, NameSource.DNS)
CLOSINGS: tuple[ClosingRecord, ...] = (ClosingRecord.TLS_ALERT, ClosingRecord.TLS_SHORT, ClosingRecord.H2_GOAWAY)

I64 = npt.NDArray[np.int64]

_INT_FIELDS = (
    "ts_ns", "end_ns", "orig_p", "resp_p", "orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes",
    "orig_fin_retransmits", "resp_fin_retransmits", "orig_retransmits", "resp_retransmits",
    "orig_keepalives", "resp_keepalives", "stale_writes", "file_index", "first_frame",
)
_OPT_FIELDS = (
    "syn_ns", "handshake_rtt_ns", "first_close_ns", "orig_fin_ns", "resp_fin_ns", "orig_rst_ns",
    "resp_rst_ns", "idle_before_close_ns", "half_closed_ns", "stale_write_ns", "closing_record_ns",
    "orig_fin_acked_ns", "resp_fin_acked_ns", "orig_goaway_ns", "resp_goaway_ns",
)

#: Columns kept for the findings, not part of :class:`Connection`.
_EXTRA_FIELDS = ("orig_fin_retransmit_ns", "resp_fin_retransmit_ns")

_CODE_FIELDS = (
    "ip_version", "orig_addr", "resp_addr", "orig_by", "conn_state", "closed_first", "close_kind",
    "half_close_end", "server_name", "server_name_source", "closing_record", "dns_name",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTable(Sequence[Connection]):
    """All connections as columns (row *i* is connection *i*, ordered by first packet).

    ``cols`` holds one int64 array per integer field of :class:`Connection` (:data:`NONE` for a
    missing value) plus codes: ``ip_version``, ``orig_addr``/``resp_addr`` (indexes into
    ``addresses``), ``orig_by``/``conn_state``/``closed_first``/``close_kind``/``half_close_end``/
    ``server_name_source`` (indexes into :data:`ORIG_BY`, :data:`STATES`, :data:`SIDES`,
    :data:`KINDS`, :data:`ENDS`, :data:`SOURCES`; -1 for none) and ``server_name`` (index into
    ``names``, -1 for none), and, for findings only (not a record field),
    ``orig_fin_retransmit_ns``/``resp_fin_retransmit_ns``: each side's first FIN retransmission.
    Records are made on demand: ``table[i]``, ``iter(table)``.
    """

    cols: dict[str, I64]
    uids: npt.NDArray[np.bytes_]
    addresses: tuple[str, ...]
    names: tuple[str, ...]
    history_buf: bytes
    history_off: I64

    def __len__(self) -> int:
        return int(self.uids.shape[0])

    def __getitem__(self, i: int) -> Connection:  # type: ignore[override]
        c = self.cols
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n

        def opt(name: str) -> int | None:
            v = int(c[name][i])
            return None if v == NONE else v

        def code(name: str, table: tuple[enum.Enum, ...]) -> Any:
            v = int(c[name][i])
            return None if v < 0 else table[v]

        name_i = int(c["server_name"][i])
        dns_i = int(c["dns_name"][i])
        return Connection(
            uid=self.uids[i].decode(),
            ts_ns=int(c["ts_ns"][i]),
            end_ns=int(c["end_ns"][i]),
            duration_ns=int(c["end_ns"][i] - c["ts_ns"][i]),
            ip_version=int(c["ip_version"][i]),
            orig_h=self.addresses[int(c["orig_addr"][i])],
            orig_p=int(c["orig_p"][i]),
            resp_h=self.addresses[int(c["resp_addr"][i])],
            resp_p=int(c["resp_p"][i]),
            orig_by=ORIG_BY[int(c["orig_by"][i])],
            orig_pkts=int(c["orig_pkts"][i]),
            resp_pkts=int(c["resp_pkts"][i]),
            orig_bytes=int(c["orig_bytes"][i]),
            resp_bytes=int(c["resp_bytes"][i]),
            conn_state=STATES[int(c["conn_state"][i])],
            history=self.history_buf[int(self.history_off[i]) : int(self.history_off[i + 1])].decode(),
            syn_ns=opt("syn_ns"),
            handshake_rtt_ns=opt("handshake_rtt_ns"),
            closed_first=code("closed_first", SIDES),
            close_kind=code("close_kind", KINDS),
            first_close_ns=opt("first_close_ns"),
            orig_fin_ns=opt("orig_fin_ns"),
            resp_fin_ns=opt("resp_fin_ns"),
            orig_rst_ns=opt("orig_rst_ns"),
            resp_rst_ns=opt("resp_rst_ns"),
            closing_record_ns=opt("closing_record_ns"),
            closing_record=code("closing_record", CLOSINGS),
            idle_before_close_ns=opt("idle_before_close_ns"),
            half_closed_ns=opt("half_closed_ns"),
            half_close_end=code("half_close_end", ENDS),
            orig_fin_retransmits=int(c["orig_fin_retransmits"][i]),
            resp_fin_retransmits=int(c["resp_fin_retransmits"][i]),
            orig_fin_acked_ns=opt("orig_fin_acked_ns"),
            resp_fin_acked_ns=opt("resp_fin_acked_ns"),
            orig_goaway_ns=opt("orig_goaway_ns"),
            resp_goaway_ns=opt("resp_goaway_ns"),
            orig_retransmits=int(c["orig_retransmits"][i]),
            resp_retransmits=int(c["resp_retransmits"][i]),
            orig_keepalives=int(c["orig_keepalives"][i]),
            resp_keepalives=int(c["resp_keepalives"][i]),
            stale_write_ns=opt("stale_write_ns"),
            stale_writes=int(c["stale_writes"][i]),
            server_name=self.names[name_i] if name_i >= 0 else None,
            server_name_source=code("server_name_source", SOURCES),
            dns_name=self.names[dns_i] if dns_i >= 0 else None,
            file_index=int(c["file_index"][i]),
            first_frame=int(c["first_frame"][i]),
        )

    def __iter__(self) -> Iterator[Connection]:
        for i in range(len(self)):
            yield self[i]

    def columns(self) -> dict[str, list[Any]]:
        """Every :class:`Connection` field as a list of plain values (str for enums, None for
        missing), in field order: the fast way to write tables and JSON."""
        c = self.cols
        n = len(self)
        out: dict[str, list[Any]] = {}

        def opt(name: str) -> list[int | None]:
            return [None if v == NONE else v for v in c[name].tolist()]

        def code(name: str, table: tuple[enum.Enum, ...]) -> list[str | None]:
            values = [str(x.value) for x in table]
            return [values[v] if v >= 0 else None for v in c[name].tolist()]

        off = self.history_off.tolist()
        buf = self.history_buf
        names = list(self.names)
        addrs = list(self.addresses)
        for f in dataclasses.fields(Connection):
            k = f.name
            if k == "uid":
                out[k] = [u.decode() for u in self.uids.tolist()]
            elif k == "duration_ns":
                out[k] = (c["end_ns"] - c["ts_ns"]).tolist()
            elif k in ("orig_h", "resp_h"):
                out[k] = [addrs[i] for i in c[k[:4] + "_addr"].tolist()]
            elif k == "history":
                out[k] = [buf[off[i] : off[i + 1]].decode() for i in range(n)]
            elif k == "orig_by":
                out[k] = code(k, ORIG_BY)
            elif k == "conn_state":
                out[k] = code(k, STATES)
            elif k == "closed_first":
                out[k] = code(k, SIDES)
            elif k == "close_kind":
                out[k] = code(k, KINDS)
            elif k == "half_close_end":
                out[k] = code(k, ENDS)
            elif k == "server_name_source":
                out[k] = code(k, SOURCES)
            elif k == "closing_record":
                out[k] = code(k, CLOSINGS)
            elif k in ("server_name", "dns_name"):
                out[k] = [names[i] if i >= 0 else None for i in c[k].tolist()]
            elif k in _OPT_FIELDS:
                out[k] = opt(k)
            else:
                out[k] = c[k].tolist()
        return out

    def server_keys(self) -> list[str]:
        """Per connection: the server name, else ``address:port`` (as :attr:`Connection.server`)."""
        addr_port: dict[tuple[int, int, int], str] = {}
        out: list[str] = []
        c = self.cols
        for ni, ai, port, v in zip(
            c["server_name"].tolist(), c["resp_addr"].tolist(), c["resp_p"].tolist(),
            c["ip_version"].tolist(), strict=True,
        ):
            if ni >= 0:
                out.append(self.names[ni])
                continue
            key = (ai, port, v)
            s = addr_port.get(key)
            if s is None:
                a = self.addresses[ai]
                s = addr_port[key] = f"[{a}]:{port}" if v == 6 else f"{a}:{port}"
            out.append(s)
        return out


_B32 = np.frombuffer(b"0123456789abcdefghjkmnpqrstvwxyz", dtype=np.uint8)


def _uids(ts: I64, oa: npt.NDArray[np.uint64], ob: npt.NDArray[np.uint64], ra: npt.NDArray[np.uint64], *,
          rb: npt.NDArray[np.uint64], op: I64, rp: I64) -> npt.NDArray[np.bytes_]:
    """``C`` + 16 base-32 characters of an 80-bit hash of time and four-tuple (vectorised)."""
    h1 = _mix(ts.astype(np.uint64) ^ _mix(oa + _M1 * ob))
    h1 = _mix(h1 + _mix(ra + _M1 * rb) + (op.astype(np.uint64) << np.uint64(16)) + rp.astype(np.uint64))
    h2 = _mix(h1 + _M1)
    n = ts.shape[0]
    out = np.empty((n, 17), dtype=np.uint8)
    out[:, 0] = ord("C")
    for k in range(12):
        out[:, 1 + k] = _B32[((h1 >> np.uint64(5 * k)) & np.uint64(31)).astype(np.intp)]
    for k in range(4):
        out[:, 13 + k] = _B32[((h2 >> np.uint64(5 * k)) & np.uint64(31)).astype(np.intp)]
    return out.view("S17").reshape(n)


def _first_index(keys: I64, mask: npt.NDArray[np.bool_], size: int) -> I64:
    """For each key value 0..size-1: the first row (in row order) where *mask* holds, else -1."""
    out = np.full(size, -1, dtype=np.int64)
    rows = np.flatnonzero(mask)
    if rows.size:
        u, first = np.unique(keys[rows], return_index=True)
        out[u] = rows[first]
    return out


def _last_index(keys: I64, mask: npt.NDArray[np.bool_], size: int) -> I64:
    out = np.full(size, -1, dtype=np.int64)
    rows = np.flatnonzero(mask)[::-1]
    if rows.size:
        u, first = np.unique(keys[rows], return_index=True)
        out[u] = rows[first]
    return out


def _ts_or_none(values: I64) -> I64:
    """The flow table's NO_TS as the record's NONE."""
    return np.where(values == NO_TS, NONE, values)


def _take(values: I64, idx: I64) -> I64:
    """values[idx] where idx >= 0, else NONE."""
    return np.where(idx >= 0, values[np.maximum(idx, 0)], NONE)


def build_table(
    state: FlowState,
    events: npt.NDArray[np.void],
    payload_names: tuple[I64, I64, I64, tuple[str, ...]],
    dns_names: Callable[[list[str], I64, I64], tuple[I64, tuple[str, ...]]] | None = None,
) -> ConnectionTable:
    """Turn the flow table's counters and events into the connection table (column-wise).

    *payload_names* is (flow*2+dir, name index, source code, names) for first data segments;
    *dns_names* maps (addresses, address index per connection, first packet time) to
    (name index per connection or -1, names).
    """
    n = state.n
    if n == 0:
        return ConnectionTable(
            cols={k: np.empty(0, np.int64) for k in (*_INT_FIELDS, *_OPT_FIELDS, *_CODE_FIELDS, *_EXTRA_FIELDS)},
            uids=np.empty(0, dtype="S17"), addresses=(), names=(), history_buf=b"",
            history_off=np.zeros(1, np.int64),
        )
    if events.shape[0] == 0:
        # one inert row (no flags, no payload) keeps the gathers below simple
        events = np.zeros(1, dtype=events.dtype)
    ef = events["flow"].astype(np.int64)
    ed = events["dir"].astype(np.int64)
    efl = events["flags"].astype(np.int64)
    ets = events["ts"]
    epos = events["pos"]
    elen = events["len"]
    enew = events["new"]
    is_syn = (efl & (TH_SYN | TH_ACK)) == TH_SYN
    is_synack = (efl & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)
    is_fin = (efl & TH_FIN) != 0
    is_rst = (efl & TH_RST) != 0
    rows_n = np.arange(n, dtype=np.int64)

    # originator
    first_syn = _first_index(ef, is_syn, n)
    first_synack = _first_index(ef, is_synack, n)
    a_port = state.a_port.astype(np.int64)
    b_port = state.b_port.astype(np.int64)
    orig = np.where(a_port > b_port, 0, np.where(a_port < b_port, 1, state.first_dir.astype(np.int64)))
    orig_by = np.where(a_port != b_port, 2, 3)
    has_synack = first_synack >= 0
    orig = np.where(has_synack, 1 - ed[np.maximum(first_synack, 0)], orig)
    orig_by = np.where(has_synack, 1, orig_by)
    has_syn = first_syn >= 0
    orig = np.where(has_syn, ed[np.maximum(first_syn, 0)], orig)
    orig_by = np.where(has_syn, 0, orig_by)
    resp = 1 - orig
    e_orig = ed == orig[ef]
    fd = ef * 2 + ed

    # handshake: the SYN/ACK from the responder, the originator's last SYN before it
    synack_i = _first_index(ef, is_synack & ~e_orig, n)
    synack_ns = _take(ets, synack_i)
    synack_pos = np.where(synack_i >= 0, epos[np.maximum(synack_i, 0)], NO_TS)
    syn_i = _last_index(ef, is_syn & e_orig & (epos < synack_pos[ef]), n)
    saw_syn = _first_index(ef, is_syn & e_orig, n) >= 0
    syn_ns = _take(ets, syn_i)
    ack_ns = state.first_ack_ts[rows_n, orig]
    ok = saw_syn & (syn_i >= 0) & (synack_i >= 0) & (ack_ns != NO_TS) & (ack_ns >= synack_ns)
    rtt = np.where(ok, ack_ns - syn_ns, NONE)

    # FIN and RST per side; FIN retransmissions (same sequence number as an earlier FIN)
    fin_first = _first_index(fd, is_fin, 2 * n).reshape(n, 2)
    rst_first = _first_index(fd, is_rst, 2 * n).reshape(n, 2)
    fin_ns = _take(ets, fin_first)
    rst_ns = _take(ets, rst_first)
    fin_pos = np.where(fin_first >= 0, epos[np.maximum(fin_first, 0)], NO_TS)
    fin_rows = np.flatnonzero(is_fin)
    fin_retx_row = np.zeros(ef.shape[0], dtype=bool)
    if fin_rows.size:
        fin_end = events["seq"][fin_rows] + elen[fin_rows]
        o = np.lexsort((epos[fin_rows], fin_end, fd[fin_rows]))
        sk, se = fd[fin_rows][o], fin_end[o]
        dup = np.zeros(o.size, dtype=bool)
        dup[1:] = (sk[1:] == sk[:-1]) & (se[1:] == se[:-1])
        fin_retx_row[fin_rows[o[dup]]] = True
    fin_retx = np.bincount(fd[fin_retx_row], minlength=2 * n).reshape(n, 2).astype(np.int64)
    fin_retx_ns = _take(ets, _first_index(fd, fin_retx_row, 2 * n).reshape(n, 2))

    # first close
    close_i = _first_index(ef, is_fin | is_rst, n)
    has_close = close_i >= 0
    ci = np.maximum(close_i, 0)
    first_close_ns = np.where(has_close, ets[ci], NONE)
    close_dir = ed[ci]
    close_kind = np.where(has_close, np.where(is_fin[ci], 0, 1), -1)
    closed_first = np.where(has_close, np.where(close_dir == orig, 0, 1), -1)

    # data after the peer's FIN: stale writes (originator after the responder's FIN)
    peer_fin_pos = fin_pos[ef, 1 - ed]
    after = (elen > 0) & enew & (epos > peer_fin_pos)
    stale_rows = after & e_orig
    stale_first = _first_index(ef, stale_rows, n)
    stale_ns = _take(ets, stale_first)
    stale_n = np.bincount(ef[stale_rows], minlength=n).astype(np.int64)
    after_first = _first_index(fd, after, 2 * n)

    # conn_state
    ofin = fin_ns[rows_n, orig] != NONE
    rfin = fin_ns[rows_n, resp] != NONE
    orst_ns = rst_ns[rows_n, orig]
    rrst_ns = rst_ns[rows_n, resp]
    orst = orst_ns != NONE
    rrst = rrst_ns != NONE
    syn_ack_seen = synack_i >= 0
    first_rst_orig = orst & (~rrst | (orst_ns <= rrst_ns))
    S = {s: STATES.index(s) for s in STATES}
    conds = [
        ~saw_syn & ~syn_ack_seen,
        saw_syn & ~syn_ack_seen & orst,
        saw_syn & ~syn_ack_seen & ofin,
        saw_syn & ~syn_ack_seen & rrst,
        saw_syn & ~syn_ack_seen,
        ~saw_syn & rrst,
        ~saw_syn & rfin,
        ~saw_syn,
        (orst | rrst) & first_rst_orig,
        orst | rrst,
        ofin & rfin,
        ofin,
        rfin,
    ]
    choices = [
        S[ConnState.OTH], S[ConnState.RSTOS0], S[ConnState.SH], S[ConnState.REJ], S[ConnState.S0],
        S[ConnState.RSTRH], S[ConnState.SHR], S[ConnState.OTH], S[ConnState.RSTO], S[ConnState.RSTR],
        S[ConnState.SF], S[ConnState.S2], S[ConnState.S3],
    ]
    conn_state = np.select(conds, choices, default=S[ConnState.S1]).astype(np.int64)

    # idle before the first FIN and the half-closed phase after it
    # (measured to the first closing record before that FIN when there is one)
    by_fin = close_kind == 0
    closing = by_fin & (state.closing_ts != NO_TS)
    closing_ns = np.where(closing, state.closing_ts, NONE)
    closing_code = np.where(closing, state.closing_kind - 1, -1)
    ld = np.where(closing, state.closing_ref_ts, state.last_data_before_fin_ts)
    idle = np.where(by_fin & (ld >= 0), np.where(closing, closing_ns, first_close_ns) - ld, NONE)
    other_fin = fin_ns[rows_n, 1 - close_dir]
    big = np.iinfo(np.int64).max
    r0 = np.where((rst_ns[:, 0] != NONE) & (rst_ns[:, 0] >= first_close_ns), rst_ns[:, 0], big)
    r1 = np.where((rst_ns[:, 1] != NONE) & (rst_ns[:, 1] >= first_close_ns), rst_ns[:, 1], big)
    rst_after = np.minimum(r0, r1)
    of = np.where(other_fin != NONE, other_fin, big)
    end_t = np.minimum(of, rst_after)
    half_end = np.where(end_t == big, 2, np.where(of <= rst_after, 0, 1))
    end_t = np.where(end_t == big, state.last_ts, end_t)
    half = np.where(by_fin, end_t - first_close_ns, NONE)
    half_end = np.where(by_fin, half_end, -1)

    # history letters, ordered by capture position
    lower = np.frombuffer(b"shadfrt", dtype=np.uint8)
    L = {ch: int(lower[k]) for k, ch in enumerate("shadfrt")}
    parts_f: list[I64] = []
    parts_p: list[I64] = []
    parts_c: list[I64] = []

    def add(rows: I64, letter: int) -> None:
        parts_f.append(ef[rows])
        parts_p.append(epos[rows])
        parts_c.append(np.where(e_orig[rows], letter - 32, letter))

    add(first_syn[first_syn >= 0], L["s"])  # the first pure SYN (originator's by definition)
    add(synack_i[synack_i >= 0], L["h"])
    add(np.flatnonzero(is_fin & ~fin_retx_row), L["f"])
    add(np.flatnonzero(is_fin & fin_retx_row), L["t"])
    add(np.flatnonzero(is_rst), L["r"])
    add(after_first[after_first >= 0], L["d"])
    for pos_arr, letter in ((state.first_pure_ack_pos, L["a"]), (state.first_data_pos, L["d"])):
        for d in (0, 1):
            has = pos_arr[:, d] != NO_TS
            fl = np.flatnonzero(has)
            parts_f.append(fl)
            parts_p.append(pos_arr[fl, d])
            parts_c.append(np.where(orig[fl] == d, letter - 32, letter))
    hf = np.concatenate(parts_f)
    hp = np.concatenate(parts_p)
    hc = np.concatenate(parts_c)
    o = np.argsort(hp, kind="stable")
    o = o[np.argsort(hf[o], kind="stable")]
    history_buf = hc[o].astype(np.uint8).tobytes()
    history_off = np.searchsorted(hf[o], np.arange(n + 1)).astype(np.int64)

    # addresses: unique (version, hi, lo) formatted once
    ver = state.ip_version.astype(np.int64)
    o_hi = np.where(orig == 0, state.a_hi, state.b_hi)
    o_lo = np.where(orig == 0, state.a_lo, state.b_lo)
    r_hi = np.where(orig == 0, state.b_hi, state.a_hi)
    r_lo = np.where(orig == 0, state.b_lo, state.a_lo)
    allv = np.concatenate([ver, ver])
    allh = np.concatenate([o_hi, r_hi])
    alll = np.concatenate([o_lo, r_lo])
    # (an IPv4 address is IPv4-mapped, so (hi, lo) alone tells addresses apart)
    ao = np.argsort(alll, kind="stable")
    ao = ao[np.argsort(allh[ao], kind="stable")]
    sh, sl = allh[ao], alll[ao]
    first = np.ones(ao.size, dtype=bool)
    first[1:] = (sh[1:] != sh[:-1]) | (sl[1:] != sl[:-1])
    inv = np.empty(ao.size, dtype=np.int64)
    inv[ao] = np.cumsum(first) - 1
    fu = ao[first]
    addresses = tuple(
        format_address(v, h, lo)
        for v, h, lo in zip(allv[fu].tolist(), allh[fu].tolist(), alll[fu].tolist(), strict=True)
    )
    orig_addr, resp_addr = inv[:n], inv[n:]
    orig_p = np.where(orig == 0, a_port, b_port)
    resp_p = np.where(orig == 0, b_port, a_port)

    # server names: the originator's first data (SNI / Host), else DNS
    pn_fd, pn_name, pn_src, pnames = payload_names
    name_idx = np.full(n, -1, dtype=np.int64)
    name_src = np.full(n, -1, dtype=np.int64)
    if pn_fd.size:
        mine = (pn_fd % 2) == orig[pn_fd // 2]
        name_idx[pn_fd[mine] // 2] = pn_name[mine]
        name_src[pn_fd[mine] // 2] = pn_src[mine]
    names: tuple[str, ...] = pnames
    dns_idx = np.full(n, -1, dtype=np.int64)
    if dns_names is not None:
        d_idx, d_names = dns_names(list(addresses), resp_addr, state.first_ts)
        dns_idx = np.where(d_idx >= 0, d_idx + len(names), -1)
        use = (name_idx < 0) & (d_idx >= 0)
        name_idx[use] = d_idx[use] + len(names)
        name_src[use] = SOURCES.index(NameSource.DNS)
        names = names + d_names

    uids = _uids(state.first_ts, o_hi, o_lo, r_hi, rb=r_lo, op=orig_p, rp=resp_p)
    cols: dict[str, I64] = {
        "ts_ns": state.first_ts,
        "end_ns": state.last_ts,
        "ip_version": ver,
        "orig_addr": orig_addr,
        "orig_p": orig_p,
        "resp_addr": resp_addr,
        "resp_p": resp_p,
        "orig_by": orig_by.astype(np.int64),
        "orig_pkts": state.pkts[rows_n, orig],
        "resp_pkts": state.pkts[rows_n, resp],
        "orig_bytes": state.bytes[rows_n, orig],
        "resp_bytes": state.bytes[rows_n, resp],
        "conn_state": conn_state,
        "syn_ns": np.where(saw_syn, syn_ns, NONE),
        "handshake_rtt_ns": rtt,
        "closed_first": closed_first.astype(np.int64),
        "close_kind": close_kind.astype(np.int64),
        "first_close_ns": first_close_ns,
        "orig_fin_ns": fin_ns[rows_n, orig],
        "resp_fin_ns": fin_ns[rows_n, resp],
        "orig_rst_ns": orst_ns,
        "resp_rst_ns": rrst_ns,
        "closing_record_ns": closing_ns,
        "closing_record": closing_code.astype(np.int64),
        "idle_before_close_ns": idle,
        "half_closed_ns": half,
        "half_close_end": half_end.astype(np.int64),
        "orig_fin_retransmits": fin_retx[rows_n, orig],
        "resp_fin_retransmits": fin_retx[rows_n, resp],
        "orig_fin_retransmit_ns": fin_retx_ns[rows_n, orig],
        "resp_fin_retransmit_ns": fin_retx_ns[rows_n, resp],
        "orig_fin_acked_ns": _ts_or_none(state.fin_acked_ts[rows_n, orig]),
        "resp_fin_acked_ns": _ts_or_none(state.fin_acked_ts[rows_n, resp]),
        "orig_goaway_ns": _ts_or_none(state.goaway_ts[rows_n, orig]),
        "resp_goaway_ns": _ts_or_none(state.goaway_ts[rows_n, resp]),
        "orig_retransmits": state.retrans[rows_n, orig],
        "resp_retransmits": state.retrans[rows_n, resp],
        "orig_keepalives": state.keepalive[rows_n, orig],
        "resp_keepalives": state.keepalive[rows_n, resp],
        "stale_write_ns": stale_ns,
        "stale_writes": stale_n,
        "server_name": name_idx,
        "server_name_source": name_src,
        "dns_name": dns_idx,
        "file_index": state.first_file.astype(np.int64),
        "first_frame": state.first_frame,
    }
    # order by first packet
    order = np.lexsort((cols["first_frame"], cols["file_index"], cols["ts_ns"]))
    cols = {k: np.ascontiguousarray(v[order]) for k, v in cols.items()}
    starts, stops = history_off[:-1][order], history_off[1:][order]
    lens = stops - starts
    new_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    hb = np.frombuffer(history_buf, dtype=np.uint8)
    idx = np.repeat(starts - new_off[:-1], lens) + np.arange(int(new_off[-1]))
    return ConnectionTable(
        cols=cols,
        uids=uids[order],
        addresses=addresses,
        names=names,
        history_buf=hb[idx].tobytes(),
        history_off=new_off,
    )
