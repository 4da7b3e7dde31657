"""Connection records: one per TCP connection, in the spirit of Zeek's conn.log.

The counters come from :class:`~halfclose.analysis.flows.FlowTable`; this module decides, per
connection, who the originator is, how it was closed and by whom, and writes the record. All
rules live here:

Originator (first rule that applies, recorded in ``orig_by``):
    ``syn``: the sender of the first pure SYN; ``synack``: the receiver of the first SYN/ACK;
    ``port``: midstream, the side with the higher port is the originator (clients use ephemeral
    ports); ``first``: ports equal, the sender of the first packet seen.

``conn_state`` (codes meaning what they mean in Zeek's conn.log, closed set :class:`ConnState`):
    the table :data:`CONN_STATE_RULES`, Zeek's ``conn_state()`` over the endpoints' states, first
    rule that applies (the docs' table is made from it). A RST from the responder decides first
    (REJ, RSTRH, RSTR), then one from the originator (RSTOS0, OTH, RSTO), then FINs (SF, SH, S2,
    SHR, S3), also midstream: a connection without SYN closed by both sides is SF. Who reset or
    closed first is in ``closed_first``, not in the code.

Closing records and the idle time (docs/analyze.md tells the same): a side that closes may send
closing records before any FIN: a TLS alert (content type 21, seen up to TLS 1.2), short encrypted
TLS records (TLS 1.3 encrypts its close_notify; an HTTP/2 GOAWAY inside TLS is as short), or a
cleartext HTTP/2 GOAWAY (h2c), found by :func:`halfclose.analysis._flowkernel.closing_kind`. The
unbroken run of such segments, from either side, right before the connection's first FIN or RST
(it starts at least 1 ms after the last new data either way; other data starts it over) holds
the connection's closing record: its first record, unless a later one ended a silence more than
twice as long (``CLOSING_LONGER``: the first was a frame of the exchange), and its sender is
``closing_side``. So a server that sends close_notify or GOAWAY at its idle timer and leaves the
TCP close to the client (uvicorn; Go's HTTP/2 server until its FIN a second later) closed first
there, even when the client's FIN or RST is the first close, and a client's own record answering
it (Go's and aiohttp's close_notify, curl's RST_STREAM) does not take its place; a short record
right after a response (an HTTP/2 WINDOW_UPDATE, the response's last empty DATA frame) is not the
close either. (A client record that ends a silence more than twice the server's timeout is: a
capture cannot tell a late answer from a client's own close.) The idle time runs from the last
new data before the closing record to it. The other side, closing in turn after that FIN, often
sends its own closing record first: a segment made of closing records only, that side's last new
data, at least 1 ms after the connection's last other data and within 100 ms after the peer's FIN
or before the side's own FIN or RST, is not data after the peer's FIN (not a stale write); an
encrypted request written after the FIN (a TLS record longer than a closing one, or one sent
later) is.

``history`` letters (upper case: originator, lower case: responder), in capture order, Zeek's
    table where Zeek has the letter: ``^`` first (the originator is not the first packet's sender),
    ``S`` pure SYN, ``H`` SYN/ACK, ``A`` first pure ACK, ``D`` first new data, ``F`` FIN (once per
    distinct sequence number), ``R`` RST (each), ``T`` retransmitted payload and ``G`` a sequence
    gap, on a side whose gaps were not all filled later (each at the side's 1st, 10th and 100th:
    Zeek's logarithmic letters), ``Q`` a SYN with FIN or RST, ``I`` FIN with RST (once per side).
    halfclose's own letters, which Zeek does not use: ``E`` a FIN retransmission (same sequence
    number), and ``D`` again for the first new data sent after the peer's FIN (what Zeek cannot
    show: a stale write reads ``...f...D...r``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from halfclose.analysis import _flowkernel as fk
from halfclose.analysis import _tcpkernel as tk
from halfclose.analysis._common import (
    GOLDEN,
    MISSING_CODE,
    MISSING_INT,
    AddressBook,
    mix64,
    server_label,
)
from halfclose.analysis.flows import NO_TS, Flows, FlowState
from halfclose.analysis.names import AddressAnswers, NameSource, PayloadNames, Service
from halfclose.analysis.records import Block, Coded, Column, Ints, Texts, plain_values
from halfclose.analysis.schema import CodedEnum, FieldSpec, Store, column, fields_of
from halfclose.capture.columns import Tunnel

__all__ = [
    "CONNECTION_FIELDS",
    "CONN_STATE_DOC",
    "CONN_STATE_RULES",
    "CloseKind",
    "ClosingRecord",
    "ConnState",
    "Connection",
    "ConnectionTable",
    "HalfCloseEnd",
    "OrigBy",
    "Side",
    "StateRule",
    "TunnelParent",
    "build_table",
    "community_ids",
]


class ConnState(CodedEnum):
    """Connection state summary codes (Zeek's set); the rules are :data:`CONN_STATE_RULES`."""

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


class Side(CodedEnum):
    """A connection's side."""

    ORIG = "orig"
    RESP = "resp"


class CloseKind(CodedEnum):
    """How a side closed: FIN (orderly) or RST (abort)."""

    FIN = "fin"
    RST = "rst"


class HalfCloseEnd(CodedEnum):
    """What ended the half-closed phase that the first FIN opened."""

    FIN = "fin"  # the other side's FIN
    RST = "rst"  # a RST from either side
    CAPTURE_END = "capture_end"  # nothing: the last packet of the connection is taken


class ClosingRecord(CodedEnum):
    """The connection's closing record, sent before its first FIN or RST (see the module docstring)."""

    TLS_ALERT = "tls_alert"  # a TLS alert record (content type 21, visible up to TLS 1.2)
    TLS_SHORT = "tls_short"  # short encrypted records only (TLS 1.3 close_notify, GOAWAY in TLS)
    H2_GOAWAY = "h2_goaway"  # a cleartext HTTP/2 GOAWAY frame (h2c)


class TunnelParent(CodedEnum):
    """The outermost encapsulation of a connection's first packet (the capture's ``Tunnel`` codes,
    ``NONE`` left out: code *k* here is ``Tunnel`` value *k* + 1)."""

    VLAN = "vlan"
    PBB = "pbb"
    MPLS = "mpls"
    PPPOE = "pppoe"
    GRE = "gre"
    ERSPAN = "erspan"
    VXLAN = "vxlan"
    GENEVE = "geneve"
    GTPU = "gtpu"
    IPIP = "ipip"
    IPV6_IN_IP = "ipv6_in_ip"
    TEREDO = "teredo"


assert [m.value for m in TunnelParent] == [t.label for t in Tunnel if t is not Tunnel.NONE]


class OrigBy(CodedEnum):
    """Which rule chose the originator (see the module docstring)."""

    SYN = "syn"
    SYNACK = "synack"
    PORT = "port"
    FIRST = "first"


# the connection pass writes these codes
assert [m.code for m in OrigBy] == [tk.ORIG_BY_SYN, tk.ORIG_BY_SYNACK, tk.ORIG_BY_PORT, tk.ORIG_BY_FIRST]


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """One TCP connection. Times are integer ns since the epoch; durations integer ns.

    Every field is declared with its doc line (the field tables of docs/analyze.md are made from
    them: :data:`CONNECTION_FIELDS`).
    """

    uid: str = column(
        "`C` + 16 base-32 characters of a hash of the first packet's time and the four-tuple: the same "
        "capture always gives the same uids", store=Store.UID,
    )  # fmt: skip
    ts_ns: int = column("first packet", unit="ns")
    end_ns: int = column("last packet", unit="ns")
    duration_ns: int = column("last packet minus first packet", unit="ns")
    ip_version: int = column("4 or 6")
    orig_h: str = column("originator (client) address", store=Store.ADDRESS)
    orig_p: int = column("originator port")
    resp_h: str = column("responder (server) address", store=Store.ADDRESS)
    resp_p: int = column("responder port")
    orig_by: OrigBy = column(
        "how the originator was chosen: `syn` the pure SYN's sender; `synack` the SYN/ACK's receiver; `port` "
        "midstream, the side with the higher port (clients use ephemeral ports); `first` equal ports, the first "
        "packet's sender", store=Store.CODE,
    )  # fmt: skip
    orig_pkts: int = column("packets the originator sent", unit="packets")
    resp_pkts: int = column("packets the responder sent", unit="packets")
    orig_bytes: int = column(
        "TCP payload bytes the originator sent, from the IP length fields (not the snap length), "
        "retransmissions included (Zeek uses sequence numbers instead)", unit="bytes",
    )  # fmt: skip
    resp_bytes: int = column("TCP payload bytes the responder sent, as `orig_bytes`", unit="bytes")
    missed_bytes: int = column(
        "bytes in sequence holes never filled, both directions (Zeek's `missed_bytes`: content gaps, e.g. "
        "packets the capture dropped)", unit="bytes",
    )  # fmt: skip
    orig_ip_bytes: int = column(
        "IP bytes the originator sent: its packets' IP lengths summed (Zeek's `orig_ip_bytes`; IPv4 total "
        "length, IPv6 40 + payload length, of the innermost IP header; capped at the frame)", unit="bytes",
    )  # fmt: skip
    resp_ip_bytes: int = column("IP bytes the responder sent, as `orig_ip_bytes`", unit="bytes")
    conn_state: ConnState = column("see `conn_state` below", store=Store.CODE)
    history: str = column("see `history` below", store=Store.HISTORY)
    syn_ns: int | None = column(
        "the SYN the handshake completed with (the originator's last SYN before the SYN/ACK)", unit="ns"
    )
    handshake_rtt_ns: int | None = column(
        "SYN -> SYN/ACK -> ACK as seen at the capture point: the sum of the two legs is one full round trip "
        "wherever the capture was taken (tshark's `tcp.analysis.initial_rtt`); empty without a full handshake",
        unit="ns",
    )
    closed_first: Side | None = column("the side that sent the connection's first FIN or RST", store=Store.CODE)
    close_kind: CloseKind | None = column("what that first close was", store=Store.CODE)
    first_close_ns: int | None = column("when", unit="ns")
    orig_fin_ns: int | None = column("the originator's first FIN", unit="ns")
    resp_fin_ns: int | None = column("the responder's first FIN", unit="ns")
    orig_rst_ns: int | None = column("the originator's first RST", unit="ns")
    resp_rst_ns: int | None = column("the responder's first RST", unit="ns")
    closing_record_ns: int | None = column(
        "the connection's closing record (see above): the first of the run of closing records from either side "
        "right before the first FIN or RST (whoever sent that), unless a later one ended a silence more than "
        "twice as long; empty when none came", unit="ns",
    )  # fmt: skip
    closing_record: ClosingRecord | None = column("what that closing record was", store=Store.CODE)
    closing_side: Side | None = column(
        "the side that sent it: `resp` is the server's close at its idle timer also when the client's FIN or "
        "RST came first", store=Store.CODE,
    )  # fmt: skip
    idle_before_close_ns: int | None = column(
        "the closing record (else the first FIN) minus the last new data (either direction) before it; empty "
        "when no data came before it, or the first close was a RST without a closing record. Keep-alive probes "
        "and retransmissions are not data", unit="ns",
    )  # fmt: skip
    half_closed_ns: int | None = column(
        "from the first FIN to the other side's FIN or a RST from either side, whichever came first; else to "
        "the connection's last packet. For a server-first FIN this is how long the client left its socket in "
        "CLOSE_WAIT", unit="ns",
    )  # fmt: skip
    half_close_end: HalfCloseEnd | None = column(
        "what ended that: the other side's FIN, a RST, or the end of the capture", store=Store.CODE
    )
    orig_fin_retransmits: int = column(
        "FIN segments of the originator repeating an earlier FIN's sequence number (tshark flags them "
        "`tcp.analysis.retransmission`)", unit="segments",
    )  # fmt: skip
    resp_fin_retransmits: int = column("the same for the responder", unit="segments")
    orig_fin_acked_ns: int | None = column(
        "the responder's first segment acknowledging the originator's first FIN (its ACK number reaches past "
        "the FIN)", unit="ns",
    )  # fmt: skip
    resp_fin_acked_ns: int | None = column(
        "the originator's first segment acknowledging the responder's first FIN", unit="ns"
    )
    orig_goaway_ns: int | None = column(
        "the originator's first HTTP/2 GOAWAY frame, where it is visible: cleartext HTTP/2 (h2c, prior "
        "knowledge), in a segment of at most 256 bytes, at its start or after whole frames", unit="ns",
    )  # fmt: skip
    resp_goaway_ns: int | None = column("the responder's first visible HTTP/2 GOAWAY frame", unit="ns")
    orig_retransmits: int = column(
        "payload segments of the originator carrying no new data (keep-alive probes excluded)", unit="segments"
    )
    resp_retransmits: int = column("the same for the responder", unit="segments")
    orig_keepalives: int = column("TCP keep-alive probes the originator sent", unit="segments")
    resp_keepalives: int = column("TCP keep-alive probes the responder sent", unit="segments")
    stale_write_ns: int | None = column(
        "the first new data the originator sent after the responder's FIN: a request written into a "
        "half-closed connection (its own closing record answering the close is not data, see above)", unit="ns",
    )  # fmt: skip
    stale_writes: int = column("how many such segments", unit="segments")
    server_name: str | None = column(
        "the responder's name: from `server_name_source`", store=Store.NAME
    )
    server_name_source: NameSource | None = column(
        "`tls_sni` (server_name of the client's TLS ClientHello), `http_host` (Host header of the first "
        "HTTP/1.x request, port removed), or `dns` (the name whose DNS answer, seen earlier in the capture, "
        "most recently carried the responder's address). SNI and Host are read from the first captured bytes "
        "of the client's first data segment; a snap length that cuts them leaves DNS", store=Store.CODE,
    )  # fmt: skip
    dns_name: str | None = column(
        "the DNS-derived name alone, also when SNI or Host gave `server_name`", store=Store.NAME
    )
    service: Service | None = column(
        "the application protocol the first payload bytes show (the originator's first data, else the "
        "responder's): `http` (a request method or `HTTP/1.`), `tls` (a handshake record), `ssh` (the "
        "`SSH-` banner), `dns` (DNS over TCP), `h2c` (the cleartext HTTP/2 preface); Zeek's `service` from "
        "the first bytes only", store=Store.CODE,
    )  # fmt: skip
    tunnel_parents: TunnelParent | None = column(
        "the encapsulation the connection's first packet was found in (the capture's `tunnel` column); Zeek "
        "names the tunnel connections' uids here, halfclose names the encapsulation; empty when none",
        store=Store.CODE,
    )  # fmt: skip
    community_id: str = column(
        "the Community ID flow hash, version 1, seed 0 (`1:` and base64 of a SHA-1 over the ordered "
        "addresses, protocol and ports; the same value Zeek, Suricata and others write)", store=Store.NAME,
    )  # fmt: skip
    file_index: int = column("the input file of the first packet (0-based)")
    first_frame: int = column("its record number (1-based, tshark's `frame.number`)")

    @property
    def server(self) -> str:
        """The server's name when known, else ``address:port`` (``[v6]:port`` for IPv6)."""
        return self.server_name or server_label(self.resp_h, self.resp_p, self.ip_version)

    def is_server_closed_first(self) -> bool:
        """The responder closed first, with a FIN."""
        return self.closed_first is Side.RESP and self.close_kind is CloseKind.FIN


#: The declared fields of :class:`Connection`, in order: the ``--conns`` columns.
CONNECTION_FIELDS: tuple[FieldSpec, ...] = fields_of(Connection)

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

#: Columns kept for the findings, not part of :class:`Connection`: each side's first FIN
#: retransmission (ns, MISSING_INT for none).
EXTRA_COLUMNS = ("orig_fin_retransmit_ns", "resp_fin_retransmit_ns")
_COLUMN_FIELDS = tuple(s for s in CONNECTION_FIELDS if s.store not in (Store.UID, Store.HISTORY))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTable(Sequence[Connection]):
    """All connections as columns (row *i* is connection *i*, ordered by first packet).

    ``cols`` holds one int64 array per :data:`CONNECTION_FIELDS` entry stored as a column (values,
    :attr:`CodedEnum.code` of enums, indexes into ``addresses`` and ``names``; each field's
    :attr:`FieldSpec.missing` marker for none) and the :data:`EXTRA_COLUMNS`; uids and history
    letters are held apart. Records are made on demand: ``table[i]``, ``iter(table)``.
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
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        return Connection(**{s.name: self._value(s, i) for s in CONNECTION_FIELDS})

    def _value(self, spec: FieldSpec, i: int) -> Any:
        store = spec.store
        if store is Store.UID:
            return self.uids[i].decode()
        if store is Store.HISTORY:
            return self.history_buf[int(self.history_off[i]) : int(self.history_off[i + 1])].decode()
        v = int(self.cols[spec.name][i])
        if v == spec.missing:
            return None
        if store is Store.CODE:
            assert spec.enum is not None
            return spec.enum.by_code(v)
        if store is Store.ADDRESS:
            return self.addresses[v]
        if store is Store.NAME:
            return self.names[v]
        return v

    def __iter__(self) -> Iterator[Connection]:
        for i in range(len(self)):
            yield self[i]

    def columns(self, rows: slice = slice(None)) -> dict[str, list[Any]]:
        """Every :class:`Connection` field as a list of plain values (text for enums, None for
        missing), in field order: the fast way to write tables and JSON. *rows* (a slice with
        step 1) picks a block of connections, so that large tables can be written block by block."""
        return {name: plain_values(col) for name, col in self.block(rows).items()}

    def column(self, spec: FieldSpec, rows: slice = slice(None)) -> list[Any]:
        """One field of the connections *rows* as plain values (as :meth:`columns`)."""
        return plain_values(self._column(spec, rows))

    def block(self, rows: slice = slice(None)) -> Block:
        """The connections *rows* (a slice with step 1) column-wise, every field in order (see
        :mod:`halfclose.analysis.records`)."""
        return {s.name: self._column(s, rows) for s in CONNECTION_FIELDS}

    def _column(self, spec: FieldSpec, rows: slice) -> Column:
        store = spec.store
        if store is Store.UID:
            return Texts(self.uid_texts(rows))
        if store is Store.HISTORY:
            start, stop, _ = rows.indices(len(self))
            if stop <= start:
                return Texts([])
            off = (self.history_off[start : stop + 1] - self.history_off[start]).tolist()
            text = self.history_buf[int(self.history_off[start]) : int(self.history_off[stop])].decode("ascii")
            return Texts([text[a:b] for a, b in itertools.pairwise(off)])
        values = self.cols[spec.name][rows]
        if store is Store.VALUE:
            return Ints(values, optional=spec.optional)
        table: Sequence[str]
        if store is Store.CODE:
            assert spec.enum is not None
            table = spec.enum.texts()
        else:
            table = self.addresses if store is Store.ADDRESS else self.names
        return Coded(values, table)

    def server_keys(self) -> list[str]:
        """Per connection: the server name, else ``address:port`` (as :attr:`Connection.server`)."""
        return self.servers(np.arange(len(self)))

    def servers(self, rows: I64) -> list[str]:
        """The server of each connection *rows* (as :meth:`server_of`), each distinct
        ``address:port`` written once."""
        c = self.cols
        named = c["server_name"][rows]
        out: list[str] = [self.names[ni] if ni != MISSING_CODE else "" for ni in named.tolist()]
        bare = np.flatnonzero(named == MISSING_CODE)
        if bare.size:
            r = rows[bare]
            memo: dict[tuple[int, int, int], str] = {}
            for k, ai, port, v in zip(bare.tolist(), c["resp_h"][r].tolist(), c["resp_p"][r].tolist(),
                                      c["ip_version"][r].tolist(), strict=True):  # fmt: skip
                text = memo.get((ai, port, v))
                if text is None:
                    text = memo[(ai, port, v)] = server_label(self.addresses[ai], port, v)
                out[k] = text
        return out

    def uid_texts(self, rows: I64 | slice) -> list[str]:
        """The uids of the connections *rows* (indexes or a slice)."""
        texts: list[str] = self.uids[rows].astype(f"U{self.uids.dtype.itemsize}").tolist()
        return texts

    def server_of(self, i: int) -> str:
        """Connection *i*'s server: its name, else ``address:port``."""
        c = self.cols
        ni = int(c["server_name"][i])
        if ni != MISSING_CODE:
            return self.names[ni]
        return server_label(self.addresses[int(c["resp_h"][i])], int(c["resp_p"][i]), int(c["ip_version"][i]))

    def uid(self, i: int) -> str:
        """Connection *i*'s uid."""
        return str(self.uids[i].decode())

    def with_dns_names(self, answers: AddressAnswers) -> ConnectionTable:
        """This table with the servers' DNS names: ``dns_name`` of every connection, and
        ``server_name`` (source ``dns``) where the first data gave none."""
        c = self.cols
        d_idx, d_names = answers.names_at(self.addresses, c["resp_h"], c["ts_ns"])
        dns_name = np.where(d_idx >= 0, d_idx + len(self.names), MISSING_CODE)
        use = (c["server_name"] == MISSING_CODE) & (d_idx >= 0)
        cols = {
            **c,
            "server_name": np.where(use, dns_name, c["server_name"]),
            "server_name_source": np.where(use, NameSource.DNS.code, c["server_name_source"]),
            "dns_name": dns_name,
        }
        return dataclasses.replace(self, cols=cols, names=self.names + d_names)


def _empty_table() -> ConnectionTable:
    cols = {s.name: np.empty(0, np.int64) for s in _COLUMN_FIELDS} | dict.fromkeys(EXTRA_COLUMNS, np.empty(0, np.int64))
    return ConnectionTable(cols=cols, uids=np.empty(0, dtype="S17"), addresses=(), names=(), history_buf=b"",
                           history_off=np.zeros(1, np.int64))  # fmt: skip


_B32 = np.frombuffer(b"0123456789abcdefghjkmnpqrstvwxyz", dtype=np.uint8)


def _uids(ts: I64, oa: npt.NDArray[np.uint64], ob: npt.NDArray[np.uint64], ra: npt.NDArray[np.uint64], *,
          rb: npt.NDArray[np.uint64], op: I64, rp: I64) -> npt.NDArray[np.bytes_]:  # fmt: skip
    """``C`` + 16 base-32 characters of an 80-bit hash of time and four-tuple (vectorised)."""
    h1 = mix64(ts.astype(np.uint64) ^ mix64(oa + GOLDEN * ob))
    h1 = mix64(h1 + mix64(ra + GOLDEN * rb) + (op.astype(np.uint64) << np.uint64(16)) + rp.astype(np.uint64))
    h2 = mix64(h1 + GOLDEN)
    n = ts.shape[0]
    out = np.empty((n, 17), dtype=np.uint8)
    out[:, 0] = ord("C")
    for k in range(12):
        out[:, 1 + k] = _B32[((h1 >> np.uint64(5 * k)) & np.uint64(31)).astype(np.intp)]
    for k in range(4):
        out[:, 13 + k] = _B32[((h2 >> np.uint64(5 * k)) & np.uint64(31)).astype(np.intp)]
    return out.view("S17").reshape(n)


_DIGEST = operator.methodcaller("digest")
_CID_V6 = np.dtype([("seed", ">u2"), ("ah", ">u8"), ("al", ">u8"), ("bh", ">u8"), ("bl", ">u8"), ("proto", "u1"),
                    ("pad", "u1"), ("ap", ">u2"), ("bp", ">u2")])  # fmt: skip
_CID_V4 = np.dtype([("seed", ">u2"), ("al", ">u4"), ("bl", ">u4"), ("proto", "u1"), ("pad", "u1"), ("ap", ">u2"),
                    ("bp", ">u2")])  # fmt: skip


def community_ids(
    ver: I64, oa: npt.NDArray[np.uint64], ob: npt.NDArray[np.uint64], ra: npt.NDArray[np.uint64], *,
    rb: npt.NDArray[np.uint64], op: I64, rp: I64, proto: int = 6, seed: int = 0,
) -> tuple[str, ...]:  # fmt: skip
    """The Community ID v1 of each connection (corelight/community-id-spec): ``1:`` + base64 of
    SHA-1 over seed (2 bytes), the two addresses, protocol, a zero byte and the two ports (network
    order), the endpoint with the smaller (address, port) first. Addresses are given as the
    table's (hi, lo) pairs (IPv4 in the last 4 bytes of lo).

    Compiled (:func:`halfclose.analysis._tcpkernel.community_id_texts`) when the kernels run
    compiled; else the tuples are packed by numpy (a record dtype in network order), one SHA-1 per
    row by hashlib, then one base64 encoding of all the digests: the same texts."""
    n = ver.shape[0]
    ids = np.empty((n, 31), np.uint8)  # each text and a line end
    ids[:, 30] = ord("\n")
    if fk.compiled():
        tk.community_id_texts(ver, oa, ob, ra, rb, op, rp, proto, seed, ids)
    else:
        _hashed_community_ids(ver, oa, ob, ra, rb=rb, op=op, rp=rp, proto=proto, seed=seed, ids=ids)
    return tuple(ids.tobytes().decode("ascii").split("\n")[:n])


def _hashed_community_ids(
    ver: I64, oa: npt.NDArray[np.uint64], ob: npt.NDArray[np.uint64], ra: npt.NDArray[np.uint64], *,
    rb: npt.NDArray[np.uint64], op: I64, rp: I64, proto: int, seed: int, ids: npt.NDArray[np.uint8],
) -> None:  # fmt: skip
    """:func:`community_ids` by hashlib, into ``ids[:, :30]``."""
    # the smaller (address, port) first: the big-endian bytes compare as the numbers do
    swap = (oa > ra) | ((oa == ra) & ((ob > rb) | ((ob == rb) & (op > rp))))
    ends = {
        "ah": np.where(swap, ra, oa), "al": np.where(swap, rb, ob), "bh": np.where(swap, oa, ra),
        "bl": np.where(swap, ob, rb), "ap": np.where(swap, rp, op), "bp": np.where(swap, op, rp),
    }  # fmt: skip
    for dtype, where in ((_CID_V6, ver != 4), (_CID_V4, ver == 4)):
        m = int(np.count_nonzero(where))
        if not m:
            continue
        packed = np.zeros(m, dtype=dtype)
        packed["seed"], packed["proto"] = seed, proto
        for name in dtype.names or ():
            if name in ends:  # (an IPv4 address: the last 4 bytes of lo, taken by the cast)
                packed[name] = ends[name][where].astype(dtype[name].newbyteorder("="), casting="unsafe")
        digests = map(_DIGEST, map(hashlib.sha1, packed.view(f"V{dtype.itemsize}").tolist()))
        # each digest and a zero byte, 21 bytes: one base64 encoding of them all gives each row's 28
        # characters, the last one "=" in the encoding of the digest alone
        text = np.frombuffer(base64.b64encode(b"\0".join(digests) + b"\0"), np.uint8).reshape(m, 28)
        rows = np.flatnonzero(where)
        ids[rows, :2] = np.frombuffer(b"1:", np.uint8)
        ids[rows, 2:29] = text[:, :27]
        ids[rows, 29] = ord("=")


def _ts(values: I64) -> I64:
    """The flow table's NO_TS as the record's MISSING_INT."""
    return np.where(values == NO_TS, MISSING_INT, values)


#: A side's closing record after the peer's FIN answers that close (is not a stale write) when sent
#: this soon after the peer's FIN or this soon before the side's own FIN or RST.
CLOSING_ANSWER_NS = 100_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class _StateInputs:
    """What the ``conn_state`` rules look at, per connection."""

    syn: B  # the originator's pure SYN seen
    synack: B  # the responder's SYN/ACK seen
    ofin: B
    rfin: B
    orst: B
    rrst: B
    no_payload: B  # neither side sent payload
    resp_silent: B  # the responder sent no packet


@dataclass(frozen=True, slots=True)
class StateRule:
    """One row of the ``conn_state`` table: the state, when it applies, and its doc line."""

    state: ConnState
    when: Callable[[_StateInputs], B]
    doc: str


#: ``conn_state``: Zeek's ``conn_state()`` (base/protocols/conn/main.zeek) over each endpoint's
#: state: RESET once it sent a RST, else CLOSED once it sent a FIN, else SYN_SENT (the originator's
#: SYN without a SYN/ACK) or ESTABLISHED (after the handshake), else *inactive* (nothing sent, or
#: only midstream segments: Zeek's INACTIVE and PARTIAL). The first rule that applies gives the
#: state; none: OTH (the last row).
CONN_STATE_RULES: tuple[StateRule, ...] = (
    StateRule(ConnState.REJ, lambda x: x.rrst & (_syn_sent(x) | (x.orst & x.no_payload)),
              "the responder sent RST while the originator's SYN was unanswered (or both reset, no payload)"),
    StateRule(ConnState.RSTRH, lambda x: x.rrst & _o_inactive(x),
              "the responder sent RST, the originator sent no SYN, FIN or RST (a SYN/ACK then RST)"),
    StateRule(ConnState.RSTR, lambda x: x.rrst,
              "the responder sent RST (whoever reset first; a stale write answered by RST ends here)"),
    StateRule(ConnState.RSTOS0, lambda x: x.orst & _r_inactive(x) & x.syn,
              "the originator sent SYN then RST, the responder no SYN/ACK, FIN or RST"),
    StateRule(ConnState.OTH, lambda x: x.orst & _r_inactive(x),
              "the originator sent RST without a SYN, the responder nothing that closes or answers"),
    StateRule(ConnState.RSTO, lambda x: x.orst, "the originator sent RST, the responder none"),
    StateRule(ConnState.SF, lambda x: x.ofin & x.rfin,
              "both sides sent FIN, no RST: also a midstream connection (no SYN seen) closed by both sides"),
    StateRule(ConnState.SH, lambda x: x.ofin & _r_inactive(x),
              "the originator sent FIN, the responder no SYN/ACK, FIN or RST (SYN then FIN; or midstream)"),
    StateRule(ConnState.S2, lambda x: x.ofin, "established, only the originator sent FIN"),
    StateRule(ConnState.SHR, lambda x: x.rfin & _o_inactive(x),
              "the responder sent FIN, the originator no SYN, FIN or RST (a SYN/ACK then FIN; or midstream)"),
    StateRule(ConnState.S3, lambda x: x.rfin,
              "established, only the responder sent FIN (a client that never closed its CLOSE_WAIT socket)"),
    StateRule(ConnState.S0, lambda x: _syn_sent(x) & x.resp_silent, "SYN seen, the responder sent nothing"),
    StateRule(ConnState.S1, lambda x: x.syn & x.synack, "established, not closed"),
    StateRule(ConnState.OTH, lambda x: np.ones_like(x.syn),
              "anything else: midstream without FIN or RST, a SYN answered by something else than SYN/ACK"),
)  # fmt: skip


def _o_inactive(x: _StateInputs) -> B:
    return ~x.syn & ~x.ofin & ~x.orst


def _r_inactive(x: _StateInputs) -> B:
    return ~x.synack & ~x.rfin & ~x.rrst


def _syn_sent(x: _StateInputs) -> B:
    return x.syn & ~x.synack & ~x.ofin & ~x.orst

#: One line per code, for docs and ``--help`` (a code's first rule).
CONN_STATE_DOC: dict[ConnState, str] = {}
for _rule in CONN_STATE_RULES:
    CONN_STATE_DOC.setdefault(_rule.state, _rule.doc)
del _rule


def _conn_state(x: _StateInputs) -> I64:
    return np.select([r.when(x) for r in CONN_STATE_RULES], [r.state.code for r in CONN_STATE_RULES]).astype(
        np.int64
    )


_CLOSING_CODES = np.array(
    [MISSING_CODE, ClosingRecord.TLS_ALERT.code, ClosingRecord.TLS_SHORT.code, ClosingRecord.H2_GOAWAY.code],
    dtype=np.int64,
)  # indexed by the kernel's CLOSING_* codes
assert (fk.CLOSING_NONE, fk.CLOSING_TLS_ALERT, fk.CLOSING_TLS_SHORT, fk.CLOSING_H2_GOAWAY) == (0, 1, 2, 3)


def _idle_and_half_close(state: FlowState, out: I64, closing: B, orig: I64) -> dict[str, I64]:
    """Idle before the first close (measured to the closing record when there is one) and the
    half-closed phase after the first FIN (*out*: the connection pass's rows)."""
    first_close_ns = out[tk.FIRST_CLOSE_NS]
    by_fin = out[tk.CLOSE_KIND] == CloseKind.FIN.code
    closing_ns = np.where(closing, state.closing_ts, MISSING_INT)
    ld = np.where(closing, state.closing_ref_ts, out[tk.LAST_DATA_BEFORE_FIN])
    idle = np.where((by_fin | closing) & (ld >= 0), np.where(closing, closing_ns, first_close_ns) - ld, MISSING_INT)
    side = np.where(state.closing_dir == orig, Side.ORIG.code, Side.RESP.code)
    # the FIN of the side that did not close first
    other_fin = np.where(out[tk.CLOSED_FIRST] == Side.ORIG.code, out[tk.RESP_FIN_NS], out[tk.ORIG_FIN_NS])
    big = np.iinfo(np.int64).max
    r0, r1 = out[tk.ORIG_RST_NS], out[tk.RESP_RST_NS]
    r0 = np.where((r0 != MISSING_INT) & (r0 >= first_close_ns), r0, big)
    r1 = np.where((r1 != MISSING_INT) & (r1 >= first_close_ns), r1, big)
    rst_after = np.minimum(r0, r1)
    of = np.where(other_fin != MISSING_INT, other_fin, big)
    end_t = np.minimum(of, rst_after)
    by_other = np.where(of <= rst_after, HalfCloseEnd.FIN.code, HalfCloseEnd.RST.code)
    half_end = np.where(end_t == big, HalfCloseEnd.CAPTURE_END.code, by_other)
    end_t = np.where(end_t == big, state.last_ts, end_t)
    return {
        "closing_record_ns": closing_ns,
        "closing_record": np.where(closing, _CLOSING_CODES[state.closing_kind], MISSING_CODE),
        "closing_side": np.where(closing, side, MISSING_CODE),
        "idle_before_close_ns": idle,
        "half_closed_ns": np.where(by_fin, end_t - first_close_ns, MISSING_INT),
        "half_close_end": np.where(by_fin, half_end, MISSING_CODE).astype(np.int64),
    }


def _payload_name_columns(payload: PayloadNames, orig: I64, n: int) -> tuple[I64, I64]:
    """Per connection: the name the originator's first data gave (index, source code)."""
    name_idx = np.full(n, MISSING_CODE, dtype=np.int64)
    name_src = np.full(n, MISSING_CODE, dtype=np.int64)
    if payload.flow_dir.size:
        mine = (payload.flow_dir % 2) == orig[payload.flow_dir // 2]
        name_idx[payload.flow_dir[mine] // 2] = payload.name[mine]
        name_src[payload.flow_dir[mine] // 2] = payload.source[mine]
    return name_idx, name_src


def build_table(flows: Flows) -> ConnectionTable:
    """Turn the flow table's counters, events and first-data names into the connection table
    (column-wise; server names from DNS are a later stage), rows ordered by first packet."""
    state, ev, payload_names = flows.state, flows.events, flows.names
    n = state.n
    if n == 0:
        return _empty_table()
    rows_n = np.arange(n, dtype=np.int64)
    order = np.lexsort((state.first_frame, state.first_file, state.first_ts))
    # one pass over each connection's events: originator, handshake, closes, stale writes, history
    out = np.empty((tk.COLUMNS, n), dtype=np.int64)
    history = np.empty(5 * ev.shape[0] + 17 * n, dtype=np.uint8)
    history_off = np.empty(n + 1, dtype=np.int64)
    size = tk.connection_pass(
        ev["flow"], ev["dir"], ev["ts"], ev["pos"], ev["seq"], ev["len"], ev["new"], ev["flags"], ev["closing"],
        order, state.a_port, state.b_port, state.first_dir, state.first_ack_ts, state.last_data_before_fin_ts,
        state.closing_ts, state.run_last_ts, state.closing_ref_ts, state.missed, state.hole_lo, state.hole_hi,
        state.retx_pos, state.gap_pos, state.first_pure_ack_pos, state.first_data_pos, CLOSING_ANSWER_NS,
        out, history, history_off,
    )  # fmt: skip
    orig = out[tk.ORIG]
    resp = 1 - orig
    closing = out[tk.UNBROKEN_CLOSING] == 1
    conn_state = _conn_state(_StateInputs(
        syn=out[tk.SAW_SYN] == 1, synack=out[tk.SAW_SYNACK] == 1, ofin=out[tk.ORIG_FIN_NS] != MISSING_INT,
        rfin=out[tk.RESP_FIN_NS] != MISSING_INT, orst=out[tk.ORIG_RST_NS] != MISSING_INT,
        rrst=out[tk.RESP_RST_NS] != MISSING_INT, no_payload=(state.bytes[:, 0] == 0) & (state.bytes[:, 1] == 0),
        resp_silent=state.pkts[rows_n, resp] == 0,
    ))  # fmt: skip

    # addresses, each distinct one formatted once
    book = AddressBook()
    o_hi, o_lo = np.where(orig == 0, state.a_hi, state.b_hi), np.where(orig == 0, state.a_lo, state.b_lo)
    r_hi, r_lo = np.where(orig == 0, state.b_hi, state.a_hi), np.where(orig == 0, state.b_lo, state.a_lo)
    ver = state.ip_version.astype(np.int64)
    ids = book.intern(np.concatenate([ver, ver]), np.concatenate([o_hi, r_hi]), np.concatenate([o_lo, r_lo]))
    a_port, b_port = state.a_port.astype(np.int64), state.b_port.astype(np.int64)
    orig_p, resp_p = np.where(orig == 0, a_port, b_port), np.where(orig == 0, b_port, a_port)
    name_idx, name_src = _payload_name_columns(payload_names, orig, n)

    cols: dict[str, I64] = {
        "ts_ns": state.first_ts,
        "end_ns": state.last_ts,
        "duration_ns": state.last_ts - state.first_ts,
        "ip_version": ver,
        "orig_h": ids[:n],
        "orig_p": orig_p,
        "resp_h": ids[n:],
        "resp_p": resp_p,
        "orig_by": out[tk.ORIG_BY],
        "orig_pkts": state.pkts[rows_n, orig],
        "resp_pkts": state.pkts[rows_n, resp],
        "orig_bytes": state.bytes[rows_n, orig],
        "resp_bytes": state.bytes[rows_n, resp],
        "conn_state": conn_state,
        "syn_ns": out[tk.SYN_NS],
        "handshake_rtt_ns": out[tk.RTT_NS],
        "closed_first": out[tk.CLOSED_FIRST],
        "close_kind": out[tk.CLOSE_KIND],
        "first_close_ns": out[tk.FIRST_CLOSE_NS],
        "orig_fin_ns": out[tk.ORIG_FIN_NS],
        "resp_fin_ns": out[tk.RESP_FIN_NS],
        "orig_rst_ns": out[tk.ORIG_RST_NS],
        "resp_rst_ns": out[tk.RESP_RST_NS],
        **_idle_and_half_close(state, out, closing, orig),
        "orig_fin_retransmits": out[tk.ORIG_FIN_RETX],
        "resp_fin_retransmits": out[tk.RESP_FIN_RETX],
        "orig_fin_retransmit_ns": out[tk.ORIG_FIN_RETX_NS],
        "resp_fin_retransmit_ns": out[tk.RESP_FIN_RETX_NS],
        "orig_fin_acked_ns": _ts(state.fin_acked_ts[rows_n, orig]),
        "resp_fin_acked_ns": _ts(state.fin_acked_ts[rows_n, resp]),
        "orig_goaway_ns": _ts(state.goaway_ts[rows_n, orig]),
        "resp_goaway_ns": _ts(state.goaway_ts[rows_n, resp]),
        "orig_retransmits": state.retrans[rows_n, orig],
        "resp_retransmits": state.retrans[rows_n, resp],
        "orig_keepalives": state.keepalive[rows_n, orig],
        "resp_keepalives": state.keepalive[rows_n, resp],
        "stale_write_ns": out[tk.STALE_WRITE_NS],
        "stale_writes": out[tk.STALE_WRITES],
        "server_name": name_idx,
        "server_name_source": name_src,
        "dns_name": np.full(n, MISSING_CODE, dtype=np.int64),
        "missed_bytes": (state.missed + np.maximum(state.hole_hi - state.hole_lo, 0)).sum(axis=1),
        "orig_ip_bytes": state.ip_bytes[rows_n, orig],
        "resp_ip_bytes": state.ip_bytes[rows_n, resp],
        "service": np.where(state.service[rows_n, orig] >= 0, state.service[rows_n, orig], state.service[rows_n, resp]),
        "tunnel_parents": state.first_tunnel.astype(np.int64) - 1,
        "community_id": len(payload_names.names) + rows_n,
        "file_index": state.first_file.astype(np.int64),
        "first_frame": state.first_frame,
    }
    uids = _uids(state.first_ts, o_hi, o_lo, r_hi, rb=r_lo, op=orig_p, rp=resp_p)
    cids = community_ids(ver, o_hi, o_lo, r_hi, rb=r_lo, op=orig_p, rp=resp_p)
    if not np.array_equal(order, rows_n):  # (the history is in this order already)
        cols = {k: v[order] for k, v in cols.items()}
        uids = uids[order]
    return ConnectionTable(cols=cols, uids=uids, addresses=tuple(book.texts), names=payload_names.names + cids,
                           history_buf=history[:size].tobytes(), history_off=history_off)  # fmt: skip
