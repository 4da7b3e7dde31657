"""Compiled inner loops: walk capture records and decode link, IP and transport headers.

The functions here are written in the subset of Python that numba compiles (integers, numpy
arrays and named tuples of them). They run as plain Python for small inputs and compiled (cached
on disk) for the rest, with identical results: see :mod:`halfclose.capture.compiling`.

Every read is bounds-checked by hand against the captured length, because compiled code does
not check array indices: a record's bytes are ``buf[off : off + caplen]`` and the walkers
guarantee that range lies inside ``buf``.

Output columns are the named tuple :data:`~halfclose.capture.columns.KernelColumns` (one array
per column of the declaration in columns.py) and are written compactly: only packets that carry
TCP or UDP over IPv4/IPv6 get a row; everything else is counted in ``counters`` (indices ``C_*``
below). Encapsulations (VLAN, 802.1ah, MPLS, PPPoE, GRE, ERSPAN, VXLAN, Geneve, GTP-U, IP in IP,
Teredo) are taken off on the way in; the row holds the innermost headers.
"""

# Chained integer comparisons are what numba compiles best.
# ruff: noqa: PLR1714, SIM108, SIM109, PLR0917

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np

from halfclose.capture.columns import COLUMNS, Tunnel
from halfclose.capture.compiling import compiled as _compiled
from halfclose.capture.compiling import compiled_global, kernel

__all__ = [
    "C_ENCAP_UNDECODED",
    "C_FRAGMENTS",
    "C_FRAMES",
    "C_IPV4",
    "C_IPV6",
    "C_LENGTH_CAPPED",
    "C_LENGTH_CAPPED_FRAME",
    "C_MALFORMED",
    "C_NON_IP",
    "C_OTHER_TRANSPORT",
    "C_TCP",
    "C_TRUNCATED",
    "C_TUNNEL",
    "C_UDP",
    "C_UNKNOWN_BLOCKS",
    "C_UNKNOWN_BLOCK_POS",
    "C_UNKNOWN_BLOCK_TYPE",
    "C_UNKNOWN_LINK",
    "N_COUNTERS",
    "ST_BAD_IFACE",
    "ST_CORRUPT",
    "ST_FULL",
    "ST_NEED_MORE",
    "ST_STRUCTURAL",
    "Interfaces",
    "PcapLayout",
    "Row",
    "Walked",
    "compiled",
    "walk_pcap",
    "walk_pcapng",
]

F = TypeVar("F", bound=Callable[..., Any])

# Counter indices (an int64 array of N_COUNTERS per file).
C_FRAMES = 0  # packet records read
C_TCP = 1  # delivered TCP packets
C_UDP = 2  # delivered UDP packets
C_NON_IP = 3  # link layer carries something other than IPv4/IPv6
C_OTHER_TRANSPORT = 4  # IP, but neither TCP nor UDP (ICMP, ESP, ...)
C_FRAGMENTS = 5  # IP fragments (first or later), TCP/UDP or not
C_TRUNCATED = 6  # a needed header was cut by the snap length
C_MALFORMED = 7  # header fields that contradict each other (bad version, lengths)
C_UNKNOWN_LINK = 8  # link type not decoded
C_IPV4 = 9  # packets whose innermost IP header is IPv4
C_IPV6 = 10
C_ENCAP_UNDECODED = 11  # inside an encapsulation that is not decoded (L2TP, EtherIP, GRE of another kind, ...)
C_LENGTH_CAPPED = 12  # an IP length larger than the frame: capped at what the frame holds
C_LENGTH_CAPPED_FRAME = 13  # frame number of the first such packet
C_UNKNOWN_BLOCKS = 14  # pcapng blocks of a type not known (skipped)
C_UNKNOWN_BLOCK_TYPE = 15  # the first one's type
C_UNKNOWN_BLOCK_POS = 16  # and its position in the window where it was met (the reader makes it a file offset)
C_TUNNEL = 17  # C_TUNNEL + Tunnel code: delivered packets per outermost encapsulation
N_COUNTERS = C_TUNNEL + len(Tunnel)

# Walker statuses.
ST_NEED_MORE = 0  # the record at pos is not complete in buf (or buf is exhausted)
ST_FULL = 1  # the output columns are full
ST_CORRUPT = 2  # the record/block at pos has an impossible length: stop this file
ST_STRUCTURAL = 3  # pcapng: a section header or interface description at pos (handled in Python)
ST_BAD_IFACE = 4  # pcapng: a packet block names an interface not described (yet)

# Link types (https://www.tcpdump.org/linktypes.html).
_LT_NULL = 0
_LT_ETHERNET = 1
_LT_PPP = 9
_LT_RAW_12 = 12
_LT_RAW_14 = 14
_LT_PPP_HDLC = 50
_LT_PPP_ETHER = 51
_LT_RAW = 101
_LT_C_HDLC = 104
_LT_LOOP = 108
_LT_LINUX_SLL = 113
_LT_PPP_PPPD = 166
_LT_IPV4 = 228
_LT_IPV6 = 229
_LT_NFLOG = 239
_LT_IPOIB = 242
_LT_LINUX_SLL2 = 276

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_MPLS = 0x8847
_ETH_MPLS_MC = 0x8848
_ETH_PPPOE = 0x8864
_ETH_PBB = 0x88E7
_ETH_TEB = 0x6558  # transparent Ethernet bridging (an Ethernet frame follows)
_ETH_ERSPAN_2 = 0x88BE
_ETH_ERSPAN_3 = 0x22EB
_ETH_PPP = 0x880B
_ETH_WCCP = 0x883E  # Cisco WCCP redirection: a 4-byte redirect header, then IPv4

# "Ethertype" values the decoder passes between its steps besides real ones.
_ET_BY_VERSION = -1  # an IP header whose version nibble says 4 or 6
_ET_ETHERNET = -2  # an Ethernet header

# Why a packet got no row (what the walker counts).
_R_OK = 0
_R_TRUNCATED = 1
_R_NON_IP = 2
_R_MALFORMED = 3
_R_UNDECODED = 4
_R_UNKNOWN_LINK = 5

# UDP ports of the tunnels decoded (either port of the datagram).
_UDP_VXLAN = 4789
_UDP_GENEVE = 6081
_UDP_GTPU = 2152
_UDP_TEREDO = 3544
_UDP_L2TP = 1701

# IP protocols of encapsulations that are recognised but not decoded.
_IPPROTO_ETHERIP = 97
_IPPROTO_L2TP = 115
_IPPROTO_MPLS = 137

# pcapng block types.
_BT_SHB = 0x0A0D0D0A
_BT_IDB = 1
_BT_OPB = 2
_BT_SPB = 3
_BT_NRB = 4
_BT_ISB = 5
_BT_EPB = 6
_BT_IRIG = 7
_BT_ARINC = 8
_BT_JOURNAL = 9
_BT_DSB = 10
_BT_CUSTOM = 0x00000BAD
_BT_CUSTOM_NO_COPY = 0x40000BAD

# Nesting depth of encapsulations followed before giving up (counted as undecoded).
_MAX_DEPTH = 8
# No wire length is known (NFLOG copies a prefix of the packet and keeps no original length).
_NO_WIRE_LENGTH = 1 << 40

_T_NONE = int(Tunnel.NONE)
_T_VLAN = int(Tunnel.VLAN)
_T_PBB = int(Tunnel.PBB)
_T_MPLS = int(Tunnel.MPLS)
_T_PPPOE = int(Tunnel.PPPOE)
_T_GRE = int(Tunnel.GRE)
_T_ERSPAN = int(Tunnel.ERSPAN)
_T_VXLAN = int(Tunnel.VXLAN)
_T_GENEVE = int(Tunnel.GENEVE)
_T_GTPU = int(Tunnel.GTPU)
_T_IPIP = int(Tunnel.IPIP)
_T_IPV6_IN_IP = int(Tunnel.IPV6_IN_IP)
_T_TEREDO = int(Tunnel.TEREDO)


class PcapLayout(NamedTuple):
    """How the records of one pcap file are laid out."""

    big: bool
    record_header_len: int
    ts_mult: int  # 1000 for microsecond files, 1 for nanosecond ones
    max_caplen: int
    linktype: int


class Interfaces(NamedTuple):
    """The interface table of one pcapng section, one int64 array entry per interface id."""

    linktype: Any
    mul: Any
    div: Any
    shift: Any
    offset_ns: Any
    snaplen: Any
    #: Packets seen per interface (the walker counts them).
    packets: Any


class Walked(NamedTuple):
    """What one walker call did: where it stopped, rows written, records read, why it stopped."""

    pos: int
    rows: int
    frames: int
    status: int


# Helpers are inlined at numba IR level: a real call costs more than what most of them do.
_jit = kernel("always")
# The walkers, and the decapsulation that few packets need: compiled once, called.
_jit_called = kernel("never")


def compiled() -> bool:
    """True when the kernels run as compiled code (see :mod:`halfclose.capture.compiling`)."""
    return _compiled()


# Compiled, bytes are read by unsigned index: numba wraps a negative (signed) index around, a branch
# per byte read that also keeps LLVM from making one wide load of a field's bytes (positions are never
# negative). As plain Python an int index is the quick one.
_U = compiled_global("_U", int, np.uint64)


@_jit
def _b(buf: Any, p: Any) -> Any:
    return np.int64(buf[_U(p)])


@_jit
def _u16be(buf: Any, p: Any) -> Any:
    return (np.int64(buf[_U(p)]) << 8) | np.int64(buf[_U(p + 1)])


@_jit
def _u32be(buf: Any, p: Any) -> Any:
    return (
        (np.int64(buf[_U(p)]) << 24) | (np.int64(buf[_U(p + 1)]) << 16) | (np.int64(buf[_U(p + 2)]) << 8)
        | np.int64(buf[_U(p + 3)])
    )  # fmt: skip


@_jit
def _u16(buf: Any, p: Any, big: bool) -> Any:
    if big:
        return (np.int64(buf[_U(p)]) << 8) | np.int64(buf[_U(p + 1)])
    return (np.int64(buf[_U(p + 1)]) << 8) | np.int64(buf[_U(p)])


@_jit
def _u32(buf: Any, p: Any, big: bool) -> Any:
    if big:
        return _u32be(buf, p)
    return (
        (np.int64(buf[_U(p + 3)]) << 24) | (np.int64(buf[_U(p + 2)]) << 16) | (np.int64(buf[_U(p + 1)]) << 8)
        | np.int64(buf[_U(p)])
    )  # fmt: skip


@_jit
def _u64be(buf: Any, p: Any) -> Any:
    v = np.uint64(0)
    for i in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[_U(p + i)])
    return v


@_jit
def _round4(n: Any) -> Any:
    """A pcapng block length with the padding some old writers left out of it."""
    return (n + 3) & ~np.int64(3)


@_jit
def _ppp(buf: Any, p: Any, end: Any) -> Any:
    """A PPP frame at *p* (address/control optional): (position of its payload, ethertype, reason)."""
    if p + 2 > end:
        return p, 0, _R_TRUNCATED
    if _b(buf, p) == 0xFF and _b(buf, p + 1) == 0x03:
        p += 2
    if p + 1 > end:
        return p, 0, _R_TRUNCATED
    if _b(buf, p) & 1:  # protocol field compressed to one byte
        proto = _b(buf, p)
        p += 1
    else:
        if p + 2 > end:
            return p, 0, _R_TRUNCATED
        proto = _u16be(buf, p)
        p += 2
    if proto == 0x0021:
        return p, _ETH_IPV4, _R_OK
    if proto == 0x0057:
        return p, _ETH_IPV6, _R_OK
    if proto == 0x0281 or proto == 0x0283:
        return p, _ETH_MPLS, _R_OK
    return p, 0, _R_NON_IP  # LCP, IPCP, CHAP, ...: PPP's own control traffic


@_jit
def _link(buf: Any, off: Any, end: Any, linktype: Any) -> Any:
    """The link layer: (position of what it carries, its ethertype or _ET_*, reason, no wire length)."""
    if linktype == _LT_ETHERNET:
        return off, _ET_ETHERNET, _R_OK, False
    if linktype == _LT_LINUX_SLL or linktype == _LT_LINUX_SLL2:
        if linktype == _LT_LINUX_SLL:
            hdr = 16
            tpos = off + 14
        else:
            hdr = 20
            tpos = off
        if off + hdr > end:
            return off, 0, _R_TRUNCATED, False
        return off + hdr, _u16be(buf, tpos), _R_OK, False
    if linktype == _LT_RAW or linktype == _LT_RAW_12 or linktype == _LT_RAW_14:
        return off, _ET_BY_VERSION, _R_OK, False
    if linktype == _LT_IPV4:
        return off, _ETH_IPV4, _R_OK, False
    if linktype == _LT_IPV6:
        return off, _ETH_IPV6, _R_OK, False
    if linktype == _LT_NULL or linktype == _LT_LOOP:
        if off + 4 > end:
            return off, 0, _R_TRUNCATED, False
        if linktype == _LT_LOOP:
            family = _u32be(buf, off)
        else:
            # Host byte order of the writer: take whichever reading is small.
            family = _u32(buf, off, False)
            if family > 0xFFFF:
                family = _u32be(buf, off)
        if family == 2:
            return off + 4, _ETH_IPV4, _R_OK, False
        if family == 10 or family == 24 or family == 28 or family == 30:
            return off + 4, _ETH_IPV6, _R_OK, False
        return off, 0, _R_NON_IP, False
    if linktype == _LT_NFLOG:
        # Header (family, version, resource id), then TLVs in the writer's byte order; the
        # packet is the NFULA_PAYLOAD (9) TLV's value.
        if off + 4 > end:
            return off, 0, _R_TRUNCATED, True
        family = _b(buf, off)
        p = off + 4
        while p + 4 <= end:
            tlen = _u16(buf, p, False)
            ttype = _u16(buf, p + 2, False)
            if tlen < 4 or p + tlen > end:
                tlen = _u16be(buf, p)
                ttype = _u16be(buf, p + 2)
            if tlen < 4:
                return off, 0, _R_MALFORMED, True
            if (ttype & 0x7FFF) == 9:
                if family == 2:
                    return p + 4, _ETH_IPV4, _R_OK, True
                if family == 10:
                    return p + 4, _ETH_IPV6, _R_OK, True
                return p + 4, _ET_BY_VERSION, _R_OK, True
            p += _round4(tlen)
        return off, 0, _R_NON_IP, True  # no payload TLV: a message without packet bytes
    if linktype == _LT_PPP or linktype == _LT_PPP_HDLC or linktype == _LT_PPP_PPPD or linktype == _LT_C_HDLC:
        if off + 2 > end:
            return off, 0, _R_TRUNCATED, False
        first = _b(buf, off)
        if linktype == _LT_C_HDLC or ((first == 0x0F or first == 0x8F) and _b(buf, off + 1) == 0):
            if off + 4 > end:  # Cisco HDLC: address, control, ethertype
                return off, 0, _R_TRUNCATED, False
            return off + 4, _u16be(buf, off + 2), _R_OK, False
        p = off
        if linktype == _LT_PPP_PPPD and _b(buf, off + 1) == 0x03:
            p = off + 2  # a direction byte in place of the address
        p, et, r = _ppp(buf, p, end)
        return p, et, r, False
    if linktype == _LT_IPOIB:
        # A 40-byte pseudo header (the source and destination addresses), then RFC 4391's
        # 4-byte header: an ethertype and 2 reserved bytes.
        if off + 44 > end:
            return off, 0, _R_TRUNCATED, False
        return off + 44, _u16be(buf, off + 40), _R_OK, False
    if linktype == _LT_PPP_ETHER:
        if off + 6 > end:
            return off, 0, _R_TRUNCATED, False
        p, et, r = _ppp(buf, off + 6, end)
        return p, et, r, False
    return off, 0, _R_UNKNOWN_LINK, False


@_jit
def _ether(buf: Any, p: Any, end: Any, et: Any, tunnel: Any) -> Any:
    """Take off link-level encapsulations until an IP header: (position, ethertype, tunnel, reason).

    *et* is the type of what is at *p*: an ethertype, _ET_ETHERNET for a whole Ethernet header
    or _ET_BY_VERSION for an IP header of either version.
    """
    for _ in range(64):
        if et == _ETH_IPV4 or et == _ETH_IPV6 or et == _ET_BY_VERSION:
            return p, et, tunnel, _R_OK
        if et == _ET_ETHERNET:
            if p + 14 > end:
                return p, et, tunnel, _R_TRUNCATED
            et = _u16be(buf, p + 12)
            p += 14
        elif et == 0x8100 or et == 0x88A8 or et == 0x9100:
            # 802.1Q / 802.1ad / old QinQ tag: 2 bytes TCI, then the next type.
            if p + 4 > end:
                return p, et, tunnel, _R_TRUNCATED
            if tunnel == _T_NONE:
                tunnel = _T_VLAN
            et = _u16be(buf, p + 2)
            p += 4
        elif et == 0x893F:
            # 802.1BR E-TAG (bridge port extension): 6 bytes (PCP, DEI, E-CID), then the next type.
            if p + 8 > end:
                return p, et, tunnel, _R_TRUNCATED
            if tunnel == _T_NONE:
                tunnel = _T_VLAN
            et = _u16be(buf, p + 6)
            p += 8
        elif et == _ETH_PBB:
            # 802.1ah I-TAG (flags, I-SID), then the customer's Ethernet header.
            if p + 4 > end:
                return p, et, tunnel, _R_TRUNCATED
            if tunnel == _T_NONE or tunnel == _T_VLAN:
                tunnel = _T_PBB
            p += 4
            et = _ET_ETHERNET
        elif et == _ETH_MPLS or et == _ETH_MPLS_MC:
            if tunnel == _T_NONE or tunnel == _T_VLAN:
                tunnel = _T_MPLS
            bottom = False
            while not bottom:
                if p + 4 > end:
                    return p, et, tunnel, _R_TRUNCATED
                bottom = (_b(buf, p + 2) & 1) == 1
                p += 4
            if p >= end:
                return p, et, tunnel, _R_TRUNCATED
            nibble = _b(buf, p) >> 4
            if nibble == 4:
                et = _ETH_IPV4
            elif nibble == 6:
                et = _ETH_IPV6
            elif nibble == 0:
                p += 4  # pseudowire control word, then an Ethernet frame
                et = _ET_ETHERNET
            else:
                return p, et, tunnel, _R_UNDECODED
        elif et == _ETH_PPPOE:
            # PPPoE session: version/type, code, session id, length, then a PPP protocol.
            if p + 6 > end:
                return p, et, tunnel, _R_TRUNCATED
            if tunnel == _T_NONE or tunnel == _T_VLAN:
                tunnel = _T_PPPOE
            p, et, r = _ppp(buf, p + 6, end)
            if r != _R_OK:
                return p, et, tunnel, r
        else:
            return p, et, tunnel, _R_NON_IP
    return p, et, tunnel, _R_UNDECODED


@_jit
def _gre(buf: Any, p: Any, end: Any, tunnel: Any) -> Any:
    """A GRE header at *p*: (position of what it carries, its type as for _ether, tunnel, reason)."""
    if p + 4 > end:
        return p, 0, tunnel, _R_TRUNCATED
    flags = _u16be(buf, p)
    ptype = _u16be(buf, p + 2)
    version = flags & 7
    q = p + 4
    if version == 0:
        if flags & 0x4000:  # source routing (RFC 1701): not decoded
            return p, 0, tunnel, _R_UNDECODED
        if flags & 0x8000:
            q += 4  # checksum, reserved
        if flags & 0x2000:
            q += 4  # key
        if flags & 0x1000:
            q += 4  # sequence number
    elif version == 1 and ptype == _ETH_PPP:
        q += 4  # PPTP: payload length, call id
        if flags & 0x1000:
            q += 4
        if flags & 0x0080:
            q += 4  # acknowledgement number
    else:
        return p, 0, tunnel, _R_UNDECODED
    if q > end:
        return p, 0, tunnel, _R_TRUNCATED
    if tunnel == _T_NONE or tunnel == _T_VLAN:
        tunnel = _T_ERSPAN if ptype == _ETH_ERSPAN_2 or ptype == _ETH_ERSPAN_3 else _T_GRE
    if ptype == _ETH_IPV4 or ptype == _ETH_IPV6 or ptype == _ETH_MPLS or ptype == _ETH_MPLS_MC:
        return q, ptype, tunnel, _R_OK
    if ptype == _ETH_TEB:
        return q, _ET_ETHERNET, tunnel, _R_OK
    if ptype == _ETH_WCCP:
        return q + 4, _ETH_IPV4, tunnel, _R_OK
    if ptype == _ETH_ERSPAN_2:
        # Type II has an 8-byte header and a sequence number in GRE; type I has neither.
        return (q + 8 if flags & 0x1000 else q), _ET_ETHERNET, tunnel, _R_OK
    if ptype == _ETH_ERSPAN_3:
        if q + 12 > end:
            return p, 0, tunnel, _R_TRUNCATED
        # 12-byte header, plus an 8-byte platform sub-header when its O bit is set.
        return (q + 20 if _b(buf, q + 11) & 1 else q + 12), _ET_ETHERNET, tunnel, _R_OK
    if ptype == _ETH_PPP:
        q, et, r = _ppp(buf, q, end)
        return q, et, tunnel, r
    return p, 0, tunnel, _R_UNDECODED


@_jit
def _udp_tunnel(buf: Any, q: Any, end: Any, sp: Any, dp: Any, tunnel: Any) -> Any:
    """UDP payload at *q* of a tunnel port: (position, type as for _ether, tunnel, reason).

    VXLAN, Geneve and GTP-U are told by their destination port (the source port is a flow hash
    or any port), Teredo by either port being 3544, as tshark does. The reason is _R_NON_IP
    (with *q* unchanged) when the datagram is plain UDP after all.
    """
    if dp == _UDP_VXLAN:
        if q + 8 <= end and (_b(buf, q) & 0x08) != 0 and _b(buf, q + 7) == 0:
            return q + 8, _ET_ETHERNET, (_T_VXLAN if tunnel <= _T_VLAN else tunnel), _R_OK
    elif dp == _UDP_GENEVE:
        if q + 8 <= end and (_b(buf, q) >> 6) == 0:
            ptype = _u16be(buf, q + 2)
            inner = q + 8 + (_b(buf, q) & 0x3F) * 4
            t = _T_GENEVE if tunnel <= _T_VLAN else tunnel
            if ptype == _ETH_TEB:
                return inner, _ET_ETHERNET, t, _R_OK
            if ptype == _ETH_IPV4 or ptype == _ETH_IPV6:
                return inner, ptype, t, _R_OK
            return q, 0, t, _R_UNDECODED
    elif dp == _UDP_GTPU:
        # GTPv1-U T-PDU (message type 255): 8 bytes, then optional fields and extension headers.
        if q + 8 <= end and (_b(buf, q) >> 5) == 1 and (_b(buf, q) & 0x10) and _b(buf, q + 1) == 0xFF:
            t = _T_GTPU if tunnel <= _T_VLAN else tunnel
            inner = q + 8
            if _b(buf, q) & 0x07:
                if inner + 4 > end:
                    return q, 0, t, _R_TRUNCATED
                nxt = _b(buf, inner + 3)
                inner += 4
                while nxt != 0:
                    if inner + 1 > end:
                        return q, 0, t, _R_TRUNCATED
                    elen = _b(buf, inner) * 4
                    if elen == 0 or inner + elen > end:
                        return q, 0, t, _R_MALFORMED if elen == 0 else _R_TRUNCATED
                    nxt = _b(buf, inner + elen - 1)
                    inner += elen
            return inner, _ET_BY_VERSION, t, _R_OK
    elif dp == _UDP_TEREDO or sp == _UDP_TEREDO:
        inner = q
        if inner + 4 <= end and _u16be(buf, inner) == 0x0001:  # authentication indicator
            inner += 13 + _b(buf, inner + 2) + _b(buf, inner + 3)
        if inner + 2 <= end and _u16be(buf, inner) == 0x0000:  # origin indication
            inner += 8
        if inner + 40 <= end and (_b(buf, inner) >> 4) == 6:
            return inner, _ETH_IPV6, (_T_TEREDO if tunnel <= _T_VLAN else tunnel), _R_OK
    elif (dp == _UDP_L2TP or sp == _UDP_L2TP) and q < end and (_b(buf, q) & 0x80) == 0:
        return q, 0, tunnel, _R_UNDECODED  # an L2TP data message (PPP inside): not decoded
    return q, 0, tunnel, _R_NON_IP


@_jit
def _count_failure(counters: Any, r: Any) -> bool:
    if r == _R_TRUNCATED:
        counters[C_TRUNCATED] += 1
    elif r == _R_NON_IP:
        counters[C_NON_IP] += 1
    elif r == _R_MALFORMED:
        counters[C_MALFORMED] += 1
    elif r == _R_UNDECODED:
        counters[C_ENCAP_UNDECODED] += 1
    else:
        counters[C_UNKNOWN_LINK] += 1
    return False


@_jit_called
def _decap(buf: Any, off: Any, end: Any, linktype: Any, wire_end: Any) -> Any:
    """Take off the link layer and every encapsulation down to the innermost IP header.

    Returns (its position, its ethertype or _ET_BY_VERSION, tunnel, where it ends on the wire,
    reason). A plain packet costs a look at the IP protocol field; tunnels are followed up to
    _MAX_DEPTH deep. The innermost IP header itself is checked by the walker (:func:`_walk`).
    """
    p, et, r, no_wire = _link(buf, off, end, linktype)
    if no_wire:
        wire_end = off + _NO_WIRE_LENGTH
    tunnel = _T_NONE
    for _ in range(_MAX_DEPTH):
        if r != _R_OK:
            return p, et, tunnel, wire_end, r
        if et != _ETH_IPV4 and et != _ETH_IPV6 and et != _ET_BY_VERSION:
            p, et, tunnel, r = _ether(buf, p, end, et, tunnel)
            if r != _R_OK:
                return p, et, tunnel, wire_end, r
        # A look at the IP header for a tunnel protocol (the walker checks the header).
        if p + 40 > end and (p + 20 > end or (_b(buf, p) >> 4) != 4):
            return p, et, tunnel, wire_end, _R_OK
        version = _b(buf, p) >> 4
        if version == 4:
            proto = _b(buf, p + 9)
            l4 = p + (_b(buf, p) & 0x0F) * 4
            fragment = (_u16be(buf, p + 6) & 0x3FFF) != 0
            length = _u16be(buf, p + 2)
        elif version == 6:
            proto = _b(buf, p + 6)
            l4 = p + 40
            fragment = False
            length = _u16be(buf, p + 4) + 40
        else:
            return p, et, tunnel, wire_end, _R_OK
        if proto == 17:
            if fragment or l4 + 8 > end:
                return p, et, tunnel, wire_end, _R_OK
            sp = _u16be(buf, l4)
            dp = _u16be(buf, l4 + 2)
            if not (
                dp == _UDP_VXLAN or dp == _UDP_GENEVE or dp == _UDP_GTPU or dp == _UDP_TEREDO
                or sp == _UDP_TEREDO or dp == _UDP_L2TP or sp == _UDP_L2TP
            ):  # fmt: skip
                return p, et, tunnel, wire_end, _R_OK
            q, et2, t, r = _udp_tunnel(buf, l4 + 8, end, sp, dp, tunnel)
            if r == _R_NON_IP:
                return p, et, tunnel, wire_end, _R_OK  # plain UDP after all
            ulen = _u16be(buf, l4 + 4)
            if ulen >= 8:
                wire_end = min(wire_end, l4 + ulen)
            p, et, tunnel = q, et2, t
        elif proto == 4 or proto == 41 or proto == 47:
            if fragment or l4 < p + 20:  # a tunnel packet cut in pieces (not reassembled), or a bad header
                return p, et, tunnel, wire_end, _R_UNDECODED if fragment else _R_MALFORMED
            if length > 0:
                wire_end = min(wire_end, p + length)
            if proto == 47:
                p, et, tunnel, r = _gre(buf, l4, end, tunnel)
            else:
                p = l4
                et = _ETH_IPV4 if proto == 4 else _ETH_IPV6
                if tunnel <= _T_VLAN:
                    tunnel = _T_IPIP if proto == 4 else _T_IPV6_IN_IP
        elif proto == _IPPROTO_ETHERIP or proto == _IPPROTO_L2TP or proto == _IPPROTO_MPLS:
            return p, et, tunnel, wire_end, _R_UNDECODED
        else:
            return p, et, tunnel, wire_end, _R_OK
    return p, et, tunnel, wire_end, _R_UNDECODED


# ---- the row the walker decodes, and its store into the output columns, derived from the
# column declaration (columns.py). The store is generated here, once, as source text: numba
# passes a named tuple of arrays cheaply, but picking its arrays inside the branchy decoder
# costs reference counting per packet, so the walkers store a finished row in one straight block.

#: Columns of a decoded row: every kernel column but the two the walkers fill (frame, ts_ns).
_ROW_COLUMNS = tuple(c for c in COLUMNS if c.kernel and c.name not in {"frame", "ts_ns"})
Row: Any = cast("Any", namedtuple)("Row", [c.name for c in _ROW_COLUMNS])


def _generate_store() -> Callable[..., None]:
    lines = ["def _store(out, k, row):"] + [f"    out.{c.name}[k] = row.{c.name}" for c in _ROW_COLUMNS]
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # the source is built above from the column declaration
    return cast("Callable[..., None]", _jit(namespace["_store"]))


_store = _generate_store()


@_jit
def _cap_length(counters: Any, frame_no: Any) -> None:
    counters[C_LENGTH_CAPPED] += 1
    if counters[C_LENGTH_CAPPED_FRAME] == 0:
        counters[C_LENGTH_CAPPED_FRAME] = frame_no


@_jit
def _known_block(btype: Any) -> bool:
    """Non-packet pcapng block types that are skipped without a word."""
    return bool(
        btype == _BT_NRB or btype == _BT_ISB or btype == _BT_IRIG or btype == _BT_ARINC or btype == _BT_JOURNAL
        or btype == _BT_DSB or btype == _BT_CUSTOM or btype == _BT_CUSTOM_NO_COPY
        or (btype >= 0x200 and btype <= 0x2FF)  # sysdig / Falco event blocks
    )  # fmt: skip


@_jit_called
def _walk(
    buf: Any, pos: int, pcapng: bool, big: bool, layout: PcapLayout, ifaces: Interfaces, frame0: int, max_out: int,
    out: Any, counters: Any,
) -> Walked:
    """Walk pcap records or the pcapng blocks of one section from ``buf[pos]`` and decode their
    packets into *out* (at most *max_out* rows); :func:`walk_pcap` and :func:`walk_pcapng` say more.

    Each packet ``buf[off:off+caplen]`` is decoded here, in the loop's body: a packet that gets
    no row is counted in *counters* (*frame0* + its number names it there) and the loop goes on
    (``continue``). IP lengths that claim more than the frame holds are capped at the frame's
    wire length (and counted); a length field of 0 (TSO, BIG TCP, jumbograms) means the rest of
    the frame. The decoder is written inline because a helper given the buffer would take a
    reference on it per packet (numba's reference counting: a quarter of the time of the loop).
    """
    n = buf.shape[0]
    rec_hdr = layout.record_header_len
    ts_mult = layout.ts_mult
    max_caplen = layout.max_caplen
    # The tables as local arrays: picking them out of the tuple per packet costs reference counting.
    if_linktype = ifaces.linktype
    if_snaplen = ifaces.snaplen
    if_packets = ifaces.packets
    if_shift = ifaces.shift
    if_mul = ifaces.mul
    if_div = ifaces.div
    if_offset_ns = ifaces.offset_ns
    n_if = if_linktype.shape[0]
    k = 0
    frames = 0
    status = ST_NEED_MORE
    while True:
        if k >= max_out:
            status = ST_FULL
            break
        # ---- the record: off, caplen, origlen, linktype; pos moves past it.
        iface = 0
        ts = 0
        if not pcapng:
            if pos + rec_hdr > n:
                break
            caplen = _u32(buf, pos + 8, big)
            if caplen > max_caplen:
                status = ST_CORRUPT
                break
            if pos + rec_hdr + caplen > n:
                break
            off = pos + rec_hdr
            origlen = _u32(buf, pos + 12, big)
            linktype = layout.linktype
            ts = _u32(buf, pos, big) * 1_000_000_000 + _u32(buf, pos + 4, big) * ts_mult
            pos = off + caplen
        else:
            if pos + 12 > n:
                break
            btype = _u32(buf, pos, big)
            blen = _round4(_u32(buf, pos + 4, big))
            if btype == _BT_SHB or btype == _BT_IDB:
                status = ST_STRUCTURAL
                break
            if blen < 12:
                status = ST_CORRUPT
                break
            if pos + blen > n:
                break
            if _round4(_u32(buf, pos + blen - 4, big)) != blen:
                status = ST_CORRUPT
                break
            if btype == _BT_EPB or btype == _BT_OPB:
                if blen < 32:
                    status = ST_CORRUPT
                    break
                if btype == _BT_EPB:
                    iface = _u32(buf, pos + 8, big)
                else:
                    iface = _u16(buf, pos + 8, big)
                if iface >= n_if:
                    status = ST_BAD_IFACE
                    break
                ts = (_u32(buf, pos + 12, big) << 32) | _u32(buf, pos + 16, big)
                caplen = _u32(buf, pos + 20, big)
                origlen = _u32(buf, pos + 24, big)
                off = pos + 28
                if caplen > blen - 32:
                    status = ST_CORRUPT
                    break
            elif btype == _BT_SPB:
                if blen < 16:
                    status = ST_CORRUPT
                    break
                if n_if == 0:
                    status = ST_BAD_IFACE
                    break
                ts = -1  # no timestamp
                origlen = _u32(buf, pos + 8, big)
                caplen = origlen
                if if_snaplen[0] > 0 and caplen > if_snaplen[0]:
                    caplen = if_snaplen[0]
                caplen = min(caplen, blen - 16)
                off = pos + 12
            else:
                if not _known_block(btype):
                    if counters[C_UNKNOWN_BLOCKS] == 0:
                        counters[C_UNKNOWN_BLOCK_TYPE] = btype
                        counters[C_UNKNOWN_BLOCK_POS] = pos
                    counters[C_UNKNOWN_BLOCKS] += 1
                pos += blen
                continue
            linktype = if_linktype[iface]
            if_packets[iface] += 1
            pos += blen
        frames += 1
        counters[C_FRAMES] += 1
        frame_no = frame0 + frames

        # ---- the link layer and encapsulations: l3, the innermost IP header's position.
        end = off + caplen
        wire_end = off + max(origlen, caplen)
        tunnel = _T_NONE
        # The common case first: TCP over IP right after untagged Ethernet, Linux cooked or raw IP
        # (nothing can be encapsulated in it); l3 stays -1 for any other packet.
        l3 = -1
        ethertype = 0
        if linktype == _LT_ETHERNET:
            ip = off + 14
            tpos = off + 12
        elif linktype == _LT_LINUX_SLL2:
            ip = off + 20
            tpos = off
        elif linktype == _LT_LINUX_SLL:
            ip = off + 16
            tpos = off + 14
        elif linktype == _LT_RAW or linktype == _LT_RAW_12 or linktype == _LT_RAW_14:
            ip = off
            tpos = -1
        else:
            ip = end
            tpos = -1
        if ip + 40 <= end:
            v = _b(buf, ip) >> 4
            et = _u16be(buf, tpos) if tpos >= 0 else (_ETH_IPV4 if v == 4 else _ETH_IPV6)
            if (et == _ETH_IPV4 and v == 4 and _b(buf, ip + 9) == 6) or (
                et == _ETH_IPV6 and v == 6 and _b(buf, ip + 6) == 6
            ):
                l3 = ip
                ethertype = et
        if l3 < 0:
            l3, ethertype, tunnel, wire_end, r = _decap(buf, off, end, linktype, wire_end)
            if r != _R_OK:
                _count_failure(counters, r)
                continue
        if l3 >= end:
            counters[C_TRUNCATED] += 1
            continue
        version = _b(buf, l3) >> 4
        if ethertype == _ET_BY_VERSION:
            if version != 4 and version != 6:
                _count_failure(counters, _R_NON_IP if tunnel == _T_NONE else _R_MALFORMED)
                continue
        elif (ethertype == _ETH_IPV4 and version != 4) or (ethertype == _ETH_IPV6 and version != 6):
            counters[C_MALFORMED] += 1
            continue
        # Bytes on the wire from the network header on.
        wire_l3 = wire_end - l3
        rest_l3 = min(wire_end, end) - l3 if wire_end - off >= _NO_WIRE_LENGTH else wire_l3

        # ---- network layer.
        later_fragment = False
        if version == 4:
            if l3 + 20 > end:
                counters[C_TRUNCATED] += 1
                continue
            ihl = (_b(buf, l3) & 0x0F) * 4
            if ihl < 20:
                counters[C_MALFORMED] += 1
                continue
            if l3 + ihl > end:
                counters[C_TRUNCATED] += 1
                continue
            total = _u16be(buf, l3 + 2)
            if total == 0:
                total = rest_l3
            elif total > wire_l3:
                _cap_length(counters, frame_no)
                total = wire_l3
            if total < ihl:
                counters[C_MALFORMED] += 1
                continue
            frag = _u16be(buf, l3 + 6)
            if (frag & 0x3FFF) != 0:
                counters[C_FRAGMENTS] += 1
                later_fragment = (frag & 0x1FFF) != 0
            nexthdr = _b(buf, l3 + 9)
            l4 = l3 + ihl
            remaining = total - ihl
            ip_len = total
            hi_s = np.uint64(0)
            hi_d = np.uint64(0)
            lo_s = np.uint64(0xFFFF00000000) | np.uint64(_u32be(buf, l3 + 12))
            lo_d = np.uint64(0xFFFF00000000) | np.uint64(_u32be(buf, l3 + 16))
            counters[C_IPV4] += 1
        else:
            if l3 + 40 > end:
                counters[C_TRUNCATED] += 1
                continue
            plen = _u16be(buf, l3 + 4)
            if plen == 0:
                plen = rest_l3 - 40
            elif plen > wire_l3 - 40:
                _cap_length(counters, frame_no)
                plen = wire_l3 - 40
            ip_len = plen + 40
            nexthdr = _b(buf, l3 + 6)
            hi_s = _u64be(buf, l3 + 8)
            lo_s = _u64be(buf, l3 + 16)
            hi_d = _u64be(buf, l3 + 24)
            lo_d = _u64be(buf, l3 + 32)
            l4 = l3 + 40
            remaining = plen
            counters[C_IPV6] += 1
            # Extension headers: hop-by-hop, routing, fragment, destination options, AH.
            is_fragment = False
            cut = False
            while nexthdr == 0 or nexthdr == 43 or nexthdr == 44 or nexthdr == 60 or nexthdr == 51:
                if l4 + 8 > end:
                    cut = True
                    break
                if nexthdr == 44:
                    hlen = 8
                    is_fragment = True
                    if (_u16be(buf, l4 + 2) & 0xFFF8) != 0:
                        later_fragment = True
                elif nexthdr == 51:
                    hlen = (_b(buf, l4 + 1) + 2) * 4
                else:
                    hlen = (_b(buf, l4 + 1) + 1) * 8
                nexthdr = _b(buf, l4)
                l4 += hlen
                remaining -= hlen
                if later_fragment:
                    break
            if cut:
                counters[C_TRUNCATED] += 1
                continue
            if is_fragment:
                counters[C_FRAGMENTS] += 1
            if remaining < 0:
                counters[C_MALFORMED] += 1
                continue
            if l4 > end and not later_fragment:
                counters[C_TRUNCATED] += 1
                continue

        if nexthdr != 6 and nexthdr != 17:
            counters[C_OTHER_TRANSPORT] += 1
            continue

        # ---- transport layer.
        sp = 0
        dp = 0
        flags = 0
        sq = 0
        ak = 0
        win = 0
        if later_fragment:
            hlen = 0
        elif nexthdr == 6:
            if l4 + 20 > end:
                counters[C_TRUNCATED] += 1
                continue
            hlen = (_b(buf, l4 + 12) >> 4) * 4
            if hlen < 20 or hlen > remaining:
                counters[C_MALFORMED] += 1
                continue
            sp = _u16be(buf, l4)
            dp = _u16be(buf, l4 + 2)
            sq = _u32be(buf, l4 + 4)
            ak = _u32be(buf, l4 + 8)
            flags = _b(buf, l4 + 13)
            win = _u16be(buf, l4 + 14)
        else:
            if l4 + 8 > end:
                counters[C_TRUNCATED] += 1
                continue
            if remaining < 8:
                counters[C_MALFORMED] += 1
                continue
            hlen = 8
            sp = _u16be(buf, l4)
            dp = _u16be(buf, l4 + 2)
            ulen = _u16be(buf, l4 + 4)
            if ulen >= 8 and ulen <= remaining:
                remaining = ulen
        plen_t = remaining - hlen
        poff = l4 + hlen
        pcap_t = end - poff
        pcap_t = max(pcap_t, 0)
        pcap_t = min(pcap_t, plen_t)
        poff = min(poff, end)

        if nexthdr == 6:
            counters[C_TCP] += 1
        else:
            counters[C_UDP] += 1
        counters[C_TUNNEL + tunnel] += 1

        # ---- the row.
        if pcapng:
            # Raw pcapng timestamp -> ns: ``(ts >> shift) * mul // div`` plus the binary fraction.
            if ts < 0:
                ts = 0  # a Simple Packet Block: no timestamp
            else:
                sh = if_shift[iface]
                if sh == 0:
                    t = ts * if_mul[iface] // if_div[iface]
                else:
                    if sh > 32:  # keep the product below 2**63: drop the finest bits
                        ts = ts >> (sh - 32)
                        sh = 32
                    whole = ts >> sh
                    part = ts & ((np.int64(1) << sh) - 1)
                    t = whole * 1_000_000_000 + (part * 1_000_000_000 >> sh)
                ts = t + if_offset_ns[iface]
        row = Row(
            ip_version=version, proto=nexthdr, src_hi=hi_s, src_lo=lo_s, dst_hi=hi_d, dst_lo=lo_d,
            sport=sp, dport=dp, tcp_flags=flags, seq=sq, ack=ak, window=win, payload_len=plen_t, ip_len=ip_len,
            payload_off=poff, payload_caplen=pcap_t, fragment=later_fragment, tunnel=tunnel,
        )  # fmt: skip
        _store(out, k, row)
        out.frame[k] = frame_no
        out.ts_ns[k] = ts
        k += 1
    return Walked(pos, k, frames, status)


@_jit_called
def walk_pcap(buf: Any, pos: int, layout: PcapLayout, frame0: int, max_out: int, out: Any, counters: Any) -> Walked:
    """Walk pcap records from ``buf[pos]`` into *out* (at most *max_out* rows): only packets that
    carry TCP or UDP over IPv4/IPv6 get a row, the others are counted in *counters*."""
    none = counters[:0]  # (no interface table: pcap has none)
    return _walk(buf, pos, False, layout.big, layout, Interfaces(none, none, none, none, none, none, none), frame0,
                 max_out, out, counters)  # fmt: skip


@_jit_called
def walk_pcapng(
    buf: Any, pos: int, big: bool, ifaces: Interfaces, frame0: int, max_out: int, out: Any, counters: Any
) -> Walked:
    """Walk pcapng blocks of one section from ``buf[pos]``; as :func:`walk_pcap`.

    Block lengths are rounded up to a multiple of 4, as Wireshark does for files whose writers
    left the padding out of them.
    """
    layout = PcapLayout(big=big, record_header_len=0, ts_mult=0, max_caplen=0, linktype=0)
    return _walk(buf, pos, True, big, layout, ifaces, frame0, max_out, out, counters)
