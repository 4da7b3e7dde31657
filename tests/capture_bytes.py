"""Byte builders for capture tests: headers and whole pcap/pcapng files, written out field by field."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD


def eth(ethertype: int, payload: bytes, vlans: Sequence[tuple[int, int]] = ()) -> bytes:
    """Ethernet II; *vlans* are (tag protocol id, VLAN id) pairs, outermost first."""
    out = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    for tpid, vid in vlans:
        out += struct.pack(">HH", tpid, vid)
    return out + struct.pack(">H", ethertype) + payload


def sll(protocol: int, payload: bytes) -> bytes:
    """Linux cooked v1: packet type, ARPHRD, address length, 8-byte address, protocol."""
    return struct.pack(">HHH8sH", 0, 1, 6, bytes.fromhex("0200000000010000"), protocol) + payload


def sll2(protocol: int, payload: bytes) -> bytes:
    """Linux cooked v2: protocol, reserved, ifindex, ARPHRD, packet type, address length, address."""
    return struct.pack(">HHIHBB8s", protocol, 0, 2, 1, 4, 6, bytes.fromhex("0200000000010000")) + payload


def ipv4(
    proto: int,
    payload: bytes,
    *,
    src: str = "198.18.0.1",
    dst: str = "198.18.0.2",
    options: bytes = b"",
    frag: int = 0,
    total: int | None = None,
    ihl: int | None = None,
) -> bytes:
    """IPv4 header (checksum left 0) + payload; *frag* is the flags/fragment-offset field."""
    hlen = 20 + len(options)
    ihl_v = hlen // 4 if ihl is None else ihl
    tot = hlen + len(payload) if total is None else total
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl_v, 0, tot, 1, frag, 64, proto, 0, s, d) + options + payload


def ipv6(
    nexthdr: int,
    payload: bytes,
    *,
    src: bytes = bytes.fromhex("fd000000000000000000000000000001"),
    dst: bytes = bytes.fromhex("fd000000000000000000000000000002"),
    plen: int | None = None,
) -> bytes:
    length = len(payload) if plen is None else plen
    return struct.pack(">IHBB16s16s", 0x60000000, length, nexthdr, 64, src, dst) + payload


def ext(nexthdr: int, body_len8: int = 0) -> bytes:
    """A generic IPv6 extension header (hop-by-hop, routing, destination options): (n+1)*8 bytes."""
    size = (body_len8 + 1) * 8
    return struct.pack(">BB", nexthdr, body_len8) + b"\x01" * (size - 2)


def frag6(nexthdr: int, offset: int, more: bool) -> bytes:
    return struct.pack(">BBHI", nexthdr, 0, (offset << 3) | int(more), 0x1234)


def ah(nexthdr: int, words: int = 4) -> bytes:
    """Authentication header: payload length in 32-bit words minus 2."""
    size = (words + 2) * 4
    return struct.pack(">BB", nexthdr, words) + b"\x00" * (size - 2)


def tcp(
    sport: int,
    dport: int,
    *,
    seq: int = 1000,
    ack: int = 0,
    flags: int = 0x02,
    payload: bytes = b"",
    options: bytes = b"",
    window: int = 65535,
    doff: int | None = None,
) -> bytes:
    hlen = 20 + len(options)
    d = hlen // 4 if doff is None else doff
    return struct.pack(">HHIIBBHHH", sport, dport, seq, ack, d << 4, flags, window, 0, 0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"", length: int | None = None) -> bytes:
    n = 8 + len(payload) if length is None else length
    return struct.pack(">HHHH", sport, dport, n, 0) + payload


@dataclass(frozen=True, slots=True, kw_only=True)
class Rec:
    ts_ns: int
    data: bytes
    origlen: int | None = None
    iface: int = 0


def pcap(
    records: Sequence[Rec], *, linktype: int = 1, nano: bool = False, big: bool = False, snaplen: int = 262144
) -> bytes:
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for r in records:
        sec, rest = divmod(r.ts_ns, 1_000_000_000)
        frac = rest if nano else rest // 1000
        orig = len(r.data) if r.origlen is None else r.origlen
        out.append(struct.pack(e + "IIII", sec, frac, len(r.data), orig) + r.data)
    return b"".join(out)


def _opt(e: str, code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack(e + "HH", code, len(value)) + value + b"\x00" * pad


def block(e: str, btype: int, body: bytes) -> bytes:
    pad = (-len(body)) % 4
    total = 12 + len(body) + pad
    return struct.pack(e + "II", btype, total) + body + b"\x00" * pad + struct.pack(e + "I", total)


def shb(*, big: bool = False) -> bytes:
    e = ">" if big else "<"
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(
    *, big: bool = False, linktype: int = 1, snaplen: int = 0, tsresol: int | None = None, tsoffset: int = 0
) -> bytes:
    e = ">" if big else "<"
    opts = b""
    if tsresol is not None:
        opts += _opt(e, 9, bytes([tsresol]))
    if tsoffset:
        opts += _opt(e, 14, struct.pack(e + "q", tsoffset))
    opts += _opt(e, 2, b"eth0")
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)


def epb(iface: int, ts_units: int, data: bytes, *, big: bool = False, origlen: int | None = None) -> bytes:
    e = ">" if big else "<"
    orig = len(data) if origlen is None else origlen
    body = struct.pack(e + "IIIII", iface, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), orig) + data
    return block(e, 6, body)


def opb(iface: int, ts_units: int, data: bytes, *, big: bool = False) -> bytes:
    e = ">" if big else "<"
    body = struct.pack(e + "HHIIII", iface, 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
    return block(e, 2, body + data)


def spb(data: bytes, *, big: bool = False, origlen: int | None = None) -> bytes:
    e = ">" if big else "<"
    orig = len(data) if origlen is None else origlen
    return block(e, 3, struct.pack(e + "I", orig) + data)


def nrb(*, big: bool = False) -> bytes:
    """A Name Resolution Block with only the end record (to be skipped)."""
    e = ">" if big else "<"
    return block(e, 4, struct.pack(e + "HH", 0, 0))


# ---------------------------------------------------------------------------------------------
# encapsulations (each wraps an inner IP packet or Ethernet frame)


def mpls(payload: bytes, labels: Sequence[int] = (16,)) -> bytes:
    """An MPLS label stack (bottom-of-stack bit on the last label)."""
    out = b""
    for i, label in enumerate(labels):
        out += struct.pack(">I", (label << 12) | (int(i == len(labels) - 1) << 8) | 64)
    return out + payload


def pppoe_session(payload: bytes, ppp_proto: int = 0x0021, session: int = 0x1234) -> bytes:
    body = struct.pack(">H", ppp_proto) + payload
    return struct.pack(">BBHH", 0x11, 0x00, session, len(body)) + body


def gre(ptype: int, payload: bytes, *, key: int | None = None, seq: int | None = None, csum: bool = False) -> bytes:
    flags = (0x8000 if csum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    out = struct.pack(">HH", flags, ptype)
    if csum:
        out += b"\x00\x00\x00\x00"
    if key is not None:
        out += struct.pack(">I", key)
    if seq is not None:
        out += struct.pack(">I", seq)
    return out + payload


def erspan2(frame: bytes, session: int = 7) -> bytes:
    """ERSPAN type II inside GRE (sequence number present), then the mirrored Ethernet frame."""
    return gre(0x88BE, struct.pack(">HHI", 0x1000 | 10, session, 0) + frame, seq=1)


def erspan3(frame: bytes, session: int = 7) -> bytes:
    """ERSPAN type III: 12-byte header without the platform sub-header."""
    return gre(0x22EB, struct.pack(">HHIHH", 0x2000 | 10, session, 123456, 0, 0) + frame, seq=1)


def vxlan(frame: bytes, vni: int = 42) -> bytes:
    return struct.pack(">BBBBI", 0x08, 0, 0, 0, vni << 8) + frame


def geneve(frame: bytes, vni: int = 42, options: bytes = b"") -> bytes:
    return struct.pack(">BBHI", len(options) // 4, 0, 0x6558, vni << 8) + options + frame


def gtpu(packet: bytes, teid: int = 0x10203040, ext: bool = False) -> bytes:
    """A GTPv1-U T-PDU; with *ext*, sequence fields and one (PDU session container) extension header."""
    if not ext:
        return struct.pack(">BBHI", 0x30, 0xFF, len(packet), teid) + packet
    body = struct.pack(">HBB", 0, 0, 0x85) + struct.pack(">BBBB", 1, 0x10, 0x09, 0) + packet
    return struct.pack(">BBHI", 0x34, 0xFF, len(body), teid) + body


def pbb(frame: bytes, isid: int = 0x123456) -> bytes:
    """An 802.1ah I-TAG and the customer frame (put after a 0x88A8 B-TAG with ethertype 0x88E7)."""
    return struct.pack(">I", isid) + frame


def nflog(packet: bytes, *, family: int = 2) -> bytes:
    """An NFLOG record (Linux, little-endian TLV lengths): a packet-header TLV, a prefix, the payload."""

    def tlv(ttype: int, value: bytes) -> bytes:
        return struct.pack("<HH", 4 + len(value), ttype) + value + b"\x00" * ((-len(value)) % 4)

    return struct.pack(">BBH", family, 0, 5) + tlv(1, b"\x08\x00\x03\x00") + tlv(10, b"stale\x00") + tlv(9, packet)


def l2tp_data(packet: bytes) -> bytes:
    """An L2TPv2 data message carrying PPP (with address and control bytes) carrying IPv4."""
    return struct.pack(">HHH", 0x0002, 1, 1) + b"\xff\x03\x00\x21" + packet
