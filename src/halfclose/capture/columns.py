"""Packet columns: what capture reading hands to analysis.

A :class:`PacketBatch` holds the decoded headers of a block of packets as numpy arrays of one
length, one array per field, so that analysis works column-wise and never builds one Python
object per packet. Only IPv4/IPv6 packets carrying TCP or UDP end up in a batch; everything else
is counted by the reader and dropped.

The fields of :class:`PacketBatch` are declared once, below: each one's dtype comes from its
annotation and its unit and doc line from the :class:`Col` beside it. :data:`COLUMNS` (name,
dtype, unit, missing value, doc), the output arrays the compiled kernels fill and the field table
of docs/capture.md are derived from that declaration.

Addresses are 128-bit, split in two ``uint64`` halves (``*_hi`` holds the first 8 bytes in network
order read as a big-endian integer); an IPv4 address is stored IPv4-mapped (``::ffff:a.b.c.d``),
and ``ip_version`` tells the two apart. Packets found inside an encapsulation (a VLAN tag, MPLS,
PPPoE, a tunnel) carry the innermost IP and transport headers; ``tunnel`` names the outermost
encapsulation (:class:`Tunnel`).
"""

from __future__ import annotations

import enum
import typing
from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "COLUMNS",
    "MISSING",
    "TH_ACK",
    "TH_CWR",
    "TH_ECE",
    "TH_FIN",
    "TH_PSH",
    "TH_RST",
    "TH_SYN",
    "TH_URG",
    "Col",
    "Column",
    "PacketBatch",
    "Tunnel",
    "allocate",
    "columns_table",
    "to_batch",
]

# TCP flag bits as in the header's low byte (RFC 9293 section 3.1).
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
TH_ECE = 0x40
TH_CWR = 0x80


@enum.unique
class Tunnel(enum.IntEnum):
    """The outermost encapsulation a packet was found in (the ``tunnel`` column).

    VLAN tags are only tagging: ``VLAN`` is given when they are all there is, and any other
    encapsulation found in the same packet (802.1ah's backbone tag included) is named instead.
    """

    NONE = 0
    VLAN = 1  # 802.1Q, 802.1ad (QinQ) and 0x9100 tags
    PBB = 2  # 802.1ah provider backbone bridging (MAC-in-MAC)
    MPLS = 3
    PPPOE = 4  # PPPoE session stage
    GRE = 5  # GRE (RFC 2784/2890) and PPTP's enhanced GRE
    ERSPAN = 6  # ERSPAN types I, II and III over GRE
    VXLAN = 7
    GENEVE = 8
    GTPU = 9  # GTP-U T-PDUs (the mobile core's user plane)
    IPIP = 10  # IPv4 in IPv4 or IPv6 (IP protocol 4)
    IPV6_IN_IP = 11  # IPv6 in IPv4 (6in4) or IPv6 (IP protocol 41)
    TEREDO = 12  # IPv6 in UDP port 3544

    @property
    def label(self) -> str:
        """Lower-case name as written in reports and JSON (``gtpu``, ``ipv6_in_ip``)."""
        return self.name.lower()


#: The one "absent" marker per dtype of the capture columns: a field that does not apply to a
#: row (TCP fields of a UDP row, ports of a later fragment, the timestamp of a pcapng Simple
#: Packet Block, which has none) holds this value.
MISSING: Mapping[type[np.generic], int | bool] = {
    np.int32: 0,
    np.int64: 0,
    np.uint8: 0,
    np.uint16: 0,
    np.uint32: 0,
    np.uint64: 0,
    np.bool_: False,
}


@dataclass(frozen=True, slots=True)
class Col:
    """What the annotation of a :class:`PacketBatch` field does not say: unit and doc line.

    *kernel* is false for the fields the reader fills itself (``file_index``).
    """

    unit: str
    doc: str
    kernel: bool = True


I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True, kw_only=True)
class PacketBatch:
    """Decoded headers of ``n`` packets, in capture order (all columns have length ``n``).

    The columns are listed in :data:`COLUMNS` (and docs/capture.md); ``data`` holds the raw
    bytes that ``payload_off`` points into (a read-only uint8 array of another length).
    """

    file_index: Annotated[I32, Col("", "index of the input file in the list given to the reader", kernel=False)]
    frame: Annotated[I64, Col("", "1-based record number in its file, as tshark's frame.number")]
    ts_ns: Annotated[I64, Col("ns", "capture timestamp since the Unix epoch")]
    ip_version: Annotated[U8, Col("", "4 or 6 (of the innermost IP header)")]
    proto: Annotated[U8, Col("", "IP protocol of the transport header: 6 (TCP) or 17 (UDP)")]
    src_hi: Annotated[U64, Col("", "source address, first 8 bytes as a big-endian integer")]
    src_lo: Annotated[U64, Col("", "source address, last 8 bytes (IPv4: ::ffff:a.b.c.d)")]
    dst_hi: Annotated[U64, Col("", "destination address, first 8 bytes")]
    dst_lo: Annotated[U64, Col("", "destination address, last 8 bytes")]
    sport: Annotated[U16, Col("", "transport source port")]
    dport: Annotated[U16, Col("", "transport destination port")]
    tcp_flags: Annotated[U8, Col("", "the TCP flags byte")]
    seq: Annotated[U32, Col("", "TCP sequence number")]
    ack: Annotated[U32, Col("", "TCP acknowledgement number")]
    window: Annotated[U16, Col("", "TCP window field, unscaled")]
    payload_len: Annotated[
        U32, Col("bytes", "transport payload length on the wire, from the IP/UDP length fields (not the snap length)")
    ]
    ip_len: Annotated[
        U32, Col("bytes", "innermost IP packet length on the wire: the IPv4 total length, or 40 plus the IPv6 "
                          "payload length, capped at the frame's length")
    ]
    payload_off: Annotated[I64, Col("bytes", "offset of the first captured payload byte in data")]
    payload_caplen: Annotated[U32, Col("bytes", "payload bytes captured, at most payload_len")]
    fragment: Annotated[B, Col("", "an IP fragment other than the first (no transport header, not reassembled)")]
    tunnel: Annotated[U8, Col("", "outermost encapsulation, a Tunnel code (0: none)")]
    data: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    def payload(self, i: int) -> bytes:
        """The captured payload bytes of packet *i* (may be shorter than ``payload_len``)."""
        start = int(self.payload_off[i])
        return self.data[start : start + int(self.payload_caplen[i])].tobytes()

    def select(self, rows: npt.NDArray[np.bool_] | npt.NDArray[np.intp] | slice) -> PacketBatch:
        """The rows picked by a mask, an index array or a slice, as a batch over the same data."""
        cols = {c.name: getattr(self, c.name)[rows] for c in COLUMNS}
        return PacketBatch(data=self.data, **cols)


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """One column of :class:`PacketBatch`, as derived from its declaration."""

    name: str
    dtype: np.dtype[Any]
    unit: str
    missing: int | bool
    doc: str
    #: Filled by the compiled kernels (every column but ``file_index``).
    kernel: bool


def _derive() -> tuple[Column, ...]:
    out = []
    for name, hint in typing.get_type_hints(PacketBatch, include_extras=True).items():
        if typing.get_origin(hint) is not Annotated:
            continue  # data: not a column
        array, col = typing.get_args(hint)
        (scalar,) = typing.get_args(typing.get_args(array)[1])
        out.append(
            Column(
                name=name, dtype=np.dtype(scalar), unit=col.unit, missing=MISSING[scalar], doc=col.doc,
                kernel=col.kernel,
            )
        )  # fmt: skip
    return tuple(out)


#: The columns of a :class:`PacketBatch`, in declaration order.
COLUMNS: tuple[Column, ...] = _derive()

_KERNEL = tuple(c for c in COLUMNS if c.kernel)

#: The output arrays of the compiled kernels, one per kernel column (a named tuple of arrays is
#: what numba passes cheaply; the kernels write ``out.seq[k]`` by name).
KernelColumns: Any = typing.cast("Any", namedtuple)("KernelColumns", [c.name for c in _KERNEL])


def allocate(n: int) -> Any:
    """Fresh (uninitialised) kernel output arrays for *n* rows."""
    return KernelColumns(*(np.empty(n, dtype=c.dtype) for c in _KERNEL))


def to_batch(out: Any, n: int, file_index: int, data: npt.NDArray[np.uint8]) -> PacketBatch:
    """The first *n* rows of kernel output *out* as a batch of file *file_index*."""
    cols = {c.name: getattr(out, c.name)[:n] for c in _KERNEL}
    return PacketBatch(file_index=np.full(n, file_index, dtype=np.int32), data=data, **cols)


def columns_table() -> str:
    """The Markdown table of the columns (docs/capture.md holds a copy; a test compares them)."""
    rows = ["| column | dtype | unit | absent | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{c.name}` | {c.dtype.name} | {c.unit} | {c.missing} | {c.doc} |" for c in COLUMNS]
    return "\n".join(rows)
