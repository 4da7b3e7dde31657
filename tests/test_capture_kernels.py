"""Header decoding and record walking, on byte vectors built field by field."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tshark
from capture_bytes import (
    ETH_IPV4,
    ETH_IPV6,
    Rec,
    ah,
    block,
    epb,
    erspan2,
    erspan3,
    eth,
    ext,
    frag6,
    geneve,
    gre,
    gtpu,
    idb,
    ipv4,
    ipv6,
    l2tp_data,
    mpls,
    nflog,
    nrb,
    opb,
    pbb,
    pcap,
    pppoe_session,
    shb,
    sll,
    sll2,
    spb,
    tcp,
    udp,
    vxlan,
)
from halfclose.analysis_io import analyze
from halfclose.capture import Severity, open_captures
from halfclose.capture import _kernels as k
from halfclose.capture.columns import COLUMNS, Tunnel, allocate

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")

COUNTER_NAMES = {
    k.C_FRAMES: "frames",
    k.C_TCP: "tcp",
    k.C_UDP: "udp",
    k.C_NON_IP: "non_ip",
    k.C_OTHER_TRANSPORT: "other",
    k.C_FRAGMENTS: "fragments",
    k.C_TRUNCATED: "truncated",
    k.C_MALFORMED: "malformed",
    k.C_UNKNOWN_LINK: "unknown_link",
    k.C_IPV4: "ipv4",
    k.C_IPV6: "ipv6",
}
FIELDS = [c.name for c in COLUMNS if c.kernel]


def walk(data: bytes, linktype: int, *, big: bool = False, nano: bool = False, max_out: int = 100) -> Any:
    buf = np.frombuffer(data, dtype=np.uint8)
    cols = allocate(max_out)
    counters = np.zeros(k.N_COUNTERS, dtype=np.int64)
    layout = k.PcapLayout(big=big, record_header_len=16, ts_mult=1 if nano else 1000, max_caplen=262144,
                          linktype=linktype)  # fmt: skip
    pos, n, frames, status = k.walk_pcap(buf, 24, layout, 0, max_out, cols, counters)
    rows = [{f: getattr(cols, f)[i].item() for f in FIELDS} for i in range(n)]
    counts = {name: int(counters[i]) for i, name in COUNTER_NAMES.items() if counters[i]}
    return rows, counts, pos, frames, status


def decode(frame: bytes, linktype: int = 1, origlen: int | None = None) -> tuple[dict[str, Any] | None, dict]:
    data = pcap([Rec(ts_ns=1_700_000_000_123_456_000, data=frame, origlen=origlen)], linktype=linktype)
    rows, counts, pos, frames, status = walk(data, linktype)
    assert (pos, frames, status) == (len(data), 1, k.ST_NEED_MORE)
    return (rows[0] if rows else None), counts


V4_LO = lambda a, b, c, d: 0xFFFF00000000 | (a << 24) | (b << 16) | (c << 8) | d  # noqa: E731


def test_ethernet_ipv4_tcp_fields() -> None:
    seg = tcp(40000, 443, seq=0xDEADBEEF, ack=0x01020304, flags=0x18, payload=b"hello", window=1234)
    frame = eth(ETH_IPV4, ipv4(6, seg))
    row, counts = decode(frame)
    assert row is not None
    assert counts == {"frames": 1, "tcp": 1, "ipv4": 1}
    assert row["ip_version"] == 4 and row["proto"] == 6
    assert row["src_hi"] == 0 and row["src_lo"] == V4_LO(198, 18, 0, 1)
    assert row["dst_lo"] == V4_LO(198, 18, 0, 2)
    assert (row["sport"], row["dport"]) == (40000, 443)
    assert (row["seq"], row["ack"], row["tcp_flags"], row["window"]) == (0xDEADBEEF, 0x01020304, 0x18, 1234)
    assert (row["payload_len"], row["payload_caplen"]) == (5, 5)
    assert frame[row["payload_off"] - 24 - 16 :][:5] == b"hello"
    assert row["ts_ns"] == 1_700_000_000_123_456_000 and row["frame"] == 1
    assert row["fragment"] is False


def test_vlan_and_qinq_tags_are_skipped() -> None:
    inner = ipv4(17, udp(5353, 53, b"q" * 10))
    for vlans in ([(0x8100, 5)], [(0x88A8, 7), (0x8100, 5)], [(0x9100, 1), (0x8100, 2)]):
        row, _counts = decode(eth(ETH_IPV4, inner, vlans))
        assert row is not None and row["dport"] == 53 and row["payload_len"] == 10, vlans


def test_ipv4_options_move_the_transport_header() -> None:
    opts = b"\x94\x04\x00\x00" + b"\x01\x01\x01\x00"  # router alert + NOPs/EOL
    row, _ = decode(eth(ETH_IPV4, ipv4(6, tcp(1, 2, flags=0x11, payload=b"xy"), options=opts)))
    assert row is not None and (row["sport"], row["dport"], row["tcp_flags"], row["payload_len"]) == (
        1,
        2,
        0x11,
        2,
    )


def test_tcp_options_and_payload_length_from_ip_not_caplen() -> None:
    seg = tcp(80, 50000, flags=0x10, payload=b"z" * 1000, options=b"\x01\x01\x08\x0a" + b"\x00" * 8)
    frame = eth(ETH_IPV4, ipv4(6, seg))
    row, _ = decode(frame[:96], origlen=len(frame))  # snaplen 96
    assert row is not None
    assert row["payload_len"] == 1000
    assert row["payload_caplen"] == 96 - 14 - 20 - 32


def test_ethernet_padding_does_not_count_as_payload() -> None:
    frame = eth(ETH_IPV4, ipv4(6, tcp(1, 2, flags=0x10))) + b"\x00" * 6  # padded to 60 bytes
    row, _ = decode(frame)
    assert row is not None and row["payload_len"] == 0 and row["payload_caplen"] == 0


def test_ipv4_fragments_first_and_later() -> None:
    first = eth(ETH_IPV4, ipv4(17, udp(1000, 53, b"a" * 40), frag=0x2000))
    later = eth(ETH_IPV4, ipv4(17, b"b" * 64, frag=0x0008))  # offset 64 bytes, last fragment
    row1, c1 = decode(first)
    row2, c2 = decode(later)
    assert row1 is not None and row1["fragment"] is False and row1["dport"] == 53
    assert c1["fragments"] == 1
    assert row2 is not None and row2["fragment"] is True
    assert (row2["sport"], row2["dport"], row2["payload_len"]) == (0, 0, 64)
    assert c2["fragments"] == 1 and c2["udp"] == 1


def test_ipv4_tso_length_zero_uses_wire_length() -> None:
    seg = tcp(1, 2, flags=0x10, payload=b"p" * 100)
    frame = eth(ETH_IPV4, ipv4(6, seg, total=0))
    row, _ = decode(frame)
    assert row is not None and row["payload_len"] == 100


def test_ipv6_extension_header_chain() -> None:
    payload = tcp(443, 50000, flags=0x14, seq=7)
    # hop-by-hop(0) -> routing(43) -> dest opts(60) -> AH(51) -> fragment(44) -> TCP
    chain = ext(43, 0) + ext(60, 2) + ext(51, 1) + ah(44) + frag6(6, 0, False) + payload
    row, counts = decode(eth(ETH_IPV6, ipv6(0, chain)))
    assert row is not None, counts
    assert (row["ip_version"], row["proto"], row["sport"], row["tcp_flags"], row["seq"]) == (
        6,
        6,
        443,
        0x14,
        7,
    )
    assert row["payload_len"] == 0
    assert row["src_hi"] == 0xFD00000000000000 and row["src_lo"] == 1
    assert counts["fragments"] == 1 and counts["ipv6"] == 1


def test_ipv6_later_fragment_is_flagged_without_ports() -> None:
    row, _counts = decode(eth(ETH_IPV6, ipv6(44, frag6(17, 100, True) + b"x" * 48)))
    assert row is not None and row["fragment"] is True and row["proto"] == 17
    assert (row["sport"], row["payload_len"]) == (0, 48)


def test_ipv6_udp_payload_length() -> None:
    row, _ = decode(eth(ETH_IPV6, ipv6(17, udp(53, 40000, b"r" * 77))))
    assert row is not None and row["proto"] == 17 and row["payload_len"] == 77 and row["tcp_flags"] == 0


@pytest.mark.parametrize(
    ("linktype", "wrap"),
    [
        (113, lambda p, et: sll(et, p)),
        (276, lambda p, et: sll2(et, p)),
        (101, lambda p, et: p),
        (12, lambda p, et: p),
        (14, lambda p, et: p),
        (0, lambda p, et: (2 if et == ETH_IPV4 else 10).to_bytes(4, "little") + p),
        (0, lambda p, et: (2 if et == ETH_IPV4 else 30).to_bytes(4, "big") + p),
        (108, lambda p, et: (2 if et == ETH_IPV4 else 24).to_bytes(4, "big") + p),
    ],
)
def test_link_types(linktype: int, wrap: Any) -> None:
    for et, packet in ((ETH_IPV4, ipv4(6, tcp(11, 22))), (ETH_IPV6, ipv6(17, udp(33, 44, b"d")))):
        row, counts = decode(wrap(packet, et), linktype)
        assert row is not None, (linktype, counts)
        assert row["ip_version"] == (4 if et == ETH_IPV4 else 6)


def test_ipv4_and_ipv6_link_types() -> None:
    row4, _ = decode(ipv4(6, tcp(1, 2)), 228)
    row6, _ = decode(ipv6(6, tcp(1, 2)), 229)
    assert row4 is not None and row4["ip_version"] == 4
    assert row6 is not None and row6["ip_version"] == 6
    row_bad, counts = decode(ipv6(6, tcp(1, 2)), 228)
    assert row_bad is None and counts["malformed"] == 1


@pytest.mark.parametrize(
    ("frame", "linktype", "counter"),
    [
        (eth(0x0806, b"\x00" * 28), 1, "non_ip"),  # ARP
        (eth(ETH_IPV4, ipv4(1, b"\x08\x00" + b"\x00" * 6)), 1, "other"),  # ICMP
        (eth(ETH_IPV6, ipv6(59, b"")), 1, "other"),  # no next header
        (eth(ETH_IPV4, ipv4(6, tcp(1, 2)))[:30], 1, "truncated"),  # IP header cut
        (eth(ETH_IPV4, ipv4(6, tcp(1, 2)))[:40], 1, "truncated"),  # TCP header cut
        (eth(ETH_IPV6, ipv6(0, ext(6, 4) + tcp(1, 2)))[:70], 1, "truncated"),  # extension cut
        (eth(ETH_IPV4, ipv4(6, tcp(1, 2), ihl=4)), 1, "malformed"),
        (eth(ETH_IPV4, ipv6(6, tcp(1, 2))), 1, "malformed"),  # ethertype says v4, header is v6
        (eth(ETH_IPV4, ipv4(6, tcp(1, 2, doff=4))), 1, "malformed"),
        (eth(ETH_IPV4, ipv4(6, tcp(1, 2), total=30)), 1, "malformed"),  # TCP header beyond IP length
        (eth(ETH_IPV4, ipv4(17, udp(1, 2), total=25)), 1, "malformed"),
        (b"\x00" * 10, 1, "truncated"),
        (ipv4(6, tcp(1, 2)), 147, "unknown_link"),
        (b"\x50" + b"\x00" * 40, 101, "non_ip"),
        ((99).to_bytes(4, "little") + ipv4(6, tcp(1, 2)), 0, "non_ip"),
        (b"\x02\x00", 0, "truncated"),
    ],
)
def test_packets_that_are_counted_not_delivered(frame: bytes, linktype: int, counter: str) -> None:
    row, counts = decode(frame, linktype, origlen=1514)  # cut frames: cut by the snap length
    assert row is None
    assert counts.get(counter) == 1, counts


def test_udp_length_field_bounds_payload() -> None:
    # UDP length says 8 + 4, the IP datagram carries 4 bytes of trailer beyond it.
    row, _ = decode(eth(ETH_IPV4, ipv4(17, udp(1, 2, b"abcd" + b"TRLR", length=12))))
    assert row is not None and row["payload_len"] == 4


def test_pcap_walk_counts_frames_and_stops_on_cut_record() -> None:
    recs = [Rec(ts_ns=i * 1_000_000_000 + 5, data=eth(ETH_IPV4, ipv4(6, tcp(i + 1, 80)))) for i in range(5)]
    recs.insert(2, Rec(ts_ns=0, data=eth(0x0806, b"\x00" * 28)))
    data = pcap(recs, nano=True)
    rows, _counts, pos, frames, status = walk(data, 1, nano=True)
    assert status == k.ST_NEED_MORE and pos == len(data) and frames == 6
    assert [r["frame"] for r in rows] == [1, 2, 4, 5, 6]
    assert [r["ts_ns"] for r in rows] == [i * 1_000_000_000 + 5 for i in range(5)]
    # Cut in the middle of the last record: the walker stops before it.
    rows, _, pos, frames, status = walk(data[:-3], 1, nano=True)
    assert status == k.ST_NEED_MORE and frames == 5 and pos == len(data) - len(recs[-1].data) - 16
    # Output full: resumes where it stopped.
    rows, _, pos, frames, status = walk(data, 1, nano=True, max_out=2)
    assert status == k.ST_FULL and len(rows) == 2 and frames == 2


def test_pcap_walk_big_endian_and_corrupt_length() -> None:
    data = pcap([Rec(ts_ns=3_000_000_000, data=eth(ETH_IPV4, ipv4(6, tcp(1, 2))))], big=True)
    rows, _, _, _, status = walk(data, 1, big=True)
    assert rows[0]["ts_ns"] == 3_000_000_000 and rows[0]["sport"] == 1
    bad = bytearray(data)
    bad[24 + 8 : 24 + 12] = (10**7).to_bytes(4, "big")
    rows, _, pos, frames, status = walk(bytes(bad), 1, big=True)
    assert status == k.ST_CORRUPT and pos == 24 and frames == 0


def walk_ng(data: bytes, ifaces: list[tuple[int, int, int, int, int]], *, big: bool = False, pos: int = 0) -> Any:
    """*ifaces*: (linktype, mul, div, shift, offset_ns)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    cols = allocate(50)
    counters = np.zeros(k.N_COUNTERS, dtype=np.int64)
    t = np.array(ifaces, dtype=np.int64).reshape(-1, 5)
    snap = np.zeros(t.shape[0], dtype=np.int64)
    pkts = np.zeros(t.shape[0], dtype=np.int64)
    table = k.Interfaces(t[:, 0].copy(), t[:, 1].copy(), t[:, 2].copy(), t[:, 3].copy(), t[:, 4].copy(), snap, pkts)
    pos, n, frames, status = k.walk_pcapng(buf, pos, big, table, 0, 50, cols, counters)
    rows = [{f: getattr(cols, f)[i].item() for f in FIELDS} for i in range(n)]
    return rows, pos, frames, status, pkts.tolist()


@pytest.mark.parametrize("big", [False, True])
def test_pcapng_walk_blocks(big: bool) -> None:
    pkt = eth(ETH_IPV4, ipv4(6, tcp(5, 6, payload=b"abc")))
    body = (
        epb(0, 1_700_000_000_000_001, pkt, big=big)
        + nrb(big=big)
        + spb(pkt, big=big)
        + opb(1, 2_000, ipv4(17, udp(7, 8)), big=big)
    )
    rows, pos, frames, status, pkts = walk_ng(body, [(1, 1000, 1, 0, 0), (101, 1, 1, 0, 5)], big=big)
    assert status == k.ST_NEED_MORE and pos == len(body) and frames == 3 and pkts == [2, 1]
    assert [r["ts_ns"] for r in rows] == [1_700_000_000_000_001_000, 0, 2_005]
    assert [r["sport"] for r in rows] == [5, 5, 7]
    assert rows[2]["frame"] == 3


def test_pcapng_walk_binary_resolution_and_structural_stops() -> None:
    pkt = ipv4(6, tcp(5, 6))
    body = epb(0, (3 << 20) | (1 << 19), pkt)  # 3.5 s at 2**-20
    rows, *_ = walk_ng(body, [(101, 1, 1, 20, 0)])
    assert rows[0]["ts_ns"] == 3_500_000_000
    rows, pos, frames, status, _ = walk_ng(epb(0, 1, pkt) + idb(), [(101, 1, 1, 0, 0)])
    assert status == k.ST_STRUCTURAL and frames == 1 and pos == len(epb(0, 1, pkt))
    rows, pos, frames, status, _ = walk_ng(shb(), [])
    assert status == k.ST_STRUCTURAL and pos == 0


def test_pcapng_walk_bad_interface_and_corrupt_blocks() -> None:
    pkt = ipv4(6, tcp(5, 6))
    _, pos, _, status, _ = walk_ng(epb(3, 1, pkt), [(101, 1, 1, 0, 0)])
    assert status == k.ST_BAD_IFACE and pos == 0
    bad_len = bytearray(epb(0, 1, pkt))
    bad_len[4:8] = (13).to_bytes(4, "little")
    assert walk_ng(bytes(bad_len), [(101, 1, 1, 0, 0)])[3] == k.ST_CORRUPT
    bad_trailer = bytearray(epb(0, 1, pkt))
    bad_trailer[-4:] = (8).to_bytes(4, "little")
    assert walk_ng(bytes(bad_trailer), [(101, 1, 1, 0, 0)])[3] == k.ST_CORRUPT
    bad_caplen = bytearray(epb(0, 1, pkt))
    bad_caplen[20:24] = (4000).to_bytes(4, "little")
    assert walk_ng(bytes(bad_caplen), [(101, 1, 1, 0, 0)])[3] == k.ST_CORRUPT


# ---------------------------------------------------------------------------------------------
# encapsulations and link types, each in a small capture checked against tshark

OUTER4 = {"src": "198.19.0.1", "dst": "198.19.0.2"}
V6A = bytes.fromhex("fd000000000000000000000000000001")
V6B = bytes.fromhex("fd000000000000000000000000000002")


def _conversations(inner_v6: bool = False) -> list[bytes]:
    """Two TCP connections (handshake, request, response, both FINs) as bare IP packets."""
    out = []
    for c in range(2):
        cport, cs, ss = 40000 + c, 1000 * (c + 1), 900_000 * (c + 1)
        segs = [
            (True, 0x02, cs, 0, b""),
            (False, 0x12, ss, cs + 1, b""),
            (True, 0x10, cs + 1, ss + 1, b""),
            (True, 0x18, cs + 1, ss + 1, b"GET / HTTP/1.1\r\n\r\n"),
            (False, 0x18, ss + 1, cs + 19, b"HTTP/1.1 200"),
            (False, 0x11, ss + 13, cs + 19, b""),
            (True, 0x11, cs + 19, ss + 14, b""),
            (False, 0x10, ss + 14, cs + 20, b""),
        ]
        for from_client, flags, seq, ack, payload in segs:
            sp, dp = (cport, 80) if from_client else (80, cport)
            seg = tcp(sp, dp, seq=seq, ack=ack, flags=flags, payload=payload)
            if inner_v6:
                a, b = (V6A, V6B) if from_client else (V6B, V6A)
                out.append(ipv6(6, seg, src=a, dst=b))
            else:
                a4, b4 = ("198.18.0.1", "198.18.0.2") if from_client else ("198.18.0.2", "198.18.0.1")
                out.append(ipv4(6, seg, src=a4, dst=b4))
    return out


def _eth_ip(ip: bytes) -> bytes:
    return eth(ETH_IPV6 if ip[0] >> 4 == 6 else ETH_IPV4, ip)


def _over_udp(port: int, wrap: Any) -> Any:
    return lambda ip: eth(ETH_IPV4, ipv4(17, udp(50000 + len(ip) % 7, port, wrap(ip)), **OUTER4))


ENCAPSULATIONS: dict[str, tuple[int, Any, bool, Tunnel]] = {
    # name: (link type, inner IP packet -> frame, inner IPv6?, expected tunnel column)
    "802.1q": (1, lambda ip: eth(ETH_IPV4, ip, [(0x8100, 10)]), False, Tunnel.VLAN),
    "qinq": (1, lambda ip: eth(ETH_IPV4, ip, [(0x88A8, 100), (0x8100, 10)]), False, Tunnel.VLAN),
    "802.1br": (1, lambda ip: eth(0x893F, bytes.fromhex("200000070000") + struct.pack(">H", ETH_IPV4) + ip), False,
                Tunnel.VLAN),
    "802.1ah": (1, lambda ip: eth(0x88E7, pbb(_eth_ip(ip)), [(0x88A8, 5)]), False, Tunnel.PBB),
    "mpls": (1, lambda ip: eth(0x8847, mpls(ip, [100, 200])), False, Tunnel.MPLS),
    "mpls-pw-ethernet": (1, lambda ip: eth(0x8847, mpls(b"\x00" * 4 + _eth_ip(ip), [300])), False, Tunnel.MPLS),
    "pppoe": (1, lambda ip: eth(0x8864, pppoe_session(ip)), False, Tunnel.PPPOE),
    "gre": (1, lambda ip: eth(ETH_IPV4, ipv4(47, gre(0x0800, ip, key=5), **OUTER4)), False, Tunnel.GRE),
    "gre-ethernet": (1, lambda ip: eth(ETH_IPV4, ipv4(47, gre(0x6558, _eth_ip(ip)), **OUTER4)), False, Tunnel.GRE),
    "erspan2": (1, lambda ip: eth(ETH_IPV4, ipv4(47, erspan2(_eth_ip(ip)), **OUTER4)), False, Tunnel.ERSPAN),
    "erspan3": (1, lambda ip: eth(ETH_IPV4, ipv4(47, erspan3(_eth_ip(ip)), **OUTER4)), False, Tunnel.ERSPAN),
    "vxlan": (1, _over_udp(4789, lambda ip: vxlan(_eth_ip(ip))), False, Tunnel.VXLAN),
    "geneve": (
        1,
        _over_udp(6081, lambda ip: geneve(_eth_ip(ip), options=b"\x01\x02\x03\x00\x00\x00\x00\x00")),
        False,
        Tunnel.GENEVE,
    ),
    "gtpu": (1, _over_udp(2152, gtpu), False, Tunnel.GTPU),
    "gtpu-ext": (1, _over_udp(2152, lambda ip: gtpu(ip, ext=True)), False, Tunnel.GTPU),
    "ipip": (1, lambda ip: eth(ETH_IPV4, ipv4(4, ip, **OUTER4)), False, Tunnel.IPIP),
    "6in4": (1, lambda ip: eth(ETH_IPV4, ipv4(41, ip, **OUTER4)), True, Tunnel.IPV6_IN_IP),
    "teredo": (1, _over_udp(3544, lambda ip: ip), True, Tunnel.TEREDO),
    "vlan-vxlan": (
        1,
        lambda ip: eth(ETH_IPV4, ipv4(17, udp(50001, 4789, vxlan(_eth_ip(ip))), **OUTER4), [(0x8100, 7)]),
        False,
        Tunnel.VXLAN,
    ),
    "gre-wccp": (
        1,
        lambda ip: eth(ETH_IPV4, ipv4(47, gre(0x883E, b"\x00\x00\x00\x00" + ip), **OUTER4)),
        False,
        Tunnel.GRE,
    ),
    "linktype-ipoib": (
        242,
        lambda ip: bytes(16) + bytes.fromhex("2fa3000a80000550fe80") + bytes(14) + b"\x08\x00\x00\x00" + ip,
        False,
        Tunnel.NONE,
    ),
    "linktype-nflog": (239, nflog, False, Tunnel.NONE),
    "linktype-ppp": (9, lambda ip: b"\xff\x03\x00\x21" + ip, False, Tunnel.NONE),
    "linktype-pppoe": (51, lambda ip: pppoe_session(ip)[:6] + b"\x00\x21" + ip, False, Tunnel.NONE),
}


# tshark guesses what an MPLS pseudowire carries only when told (halfclose takes a first nibble 0 for
# a control word followed by Ethernet).
DECODE_AS = {"mpls-pw-ethernet": ["-d", "mpls.label==300,pwethcw"]}


def _tshark_tcp(path: Path, decode_as: list[str] | None = None) -> list[tuple[int, int, int, int]]:
    """(stream, source port, destination port, raw sequence number) of every TCP frame tshark sees."""
    argv = ["tshark", "-n", "-r", str(path), *(decode_as or []), "-Y", "tcp", "-T", "fields"]
    for name in ("tcp.stream", "tcp.srcport", "tcp.dstport", "tcp.seq_raw"):
        argv += ["-e", name]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [tuple(int(x) for x in line.split("\t")) for line in out.splitlines()]  # type: ignore[misc]


@needs_tshark
@pytest.mark.parametrize("name", sorted(ENCAPSULATIONS))
def test_encapsulations_read_as_tshark_reads_them(name: str, tmp_path: Path) -> None:
    linktype, wrap, inner_v6, tunnel = ENCAPSULATIONS[name]
    packets = _conversations(inner_v6)
    f = tmp_path / f"{name}.pcap"
    f.write_bytes(pcap([Rec(ts_ns=(i + 1) * 1_000_000, data=wrap(p)) for i, p in enumerate(packets)],
                       linktype=linktype))  # fmt: skip
    oracle = _tshark_tcp(f, DECODE_AS.get(name))
    assert len(oracle) == len(packets) == 16, "tshark does not see the inner TCP (a bad test capture)"
    with open_captures([f]) as reader:
        (batch,) = list(reader)
    assert reader.issues == ()
    assert [(int(a), int(b), int(c)) for a, b, c in zip(batch.sport, batch.dport, batch.seq, strict=True)] == [
        o[1:] for o in oracle
    ]
    assert set(batch.tunnel.tolist()) == {int(tunnel)}
    assert set(batch.ip_version.tolist()) == {6 if inner_v6 else 4}
    stats = reader.stats.total
    assert stats.tcp == 16 and stats.tunnels == ({tunnel.label: 16} if tunnel is not Tunnel.NONE else {})
    result = analyze([f])
    assert result.summary.tcp_connections == len({o[0] for o in oracle}) == 2
    # the records name the encapsulation (Zeek's tunnel_parents in spirit); link types are none
    parents = {None if c.tunnel_parents is None else c.tunnel_parents.value for c in result.connections}
    assert parents == {tunnel.label if tunnel is not Tunnel.NONE else None}


@needs_tshark
def test_ip_inside_an_undecoded_encapsulation_is_a_counted_warning(tmp_path: Path) -> None:
    packets = _conversations()
    f = tmp_path / "l2tp.pcap"
    frames = [eth(ETH_IPV4, ipv4(17, udp(1701, 1701, l2tp_data(p)), **OUTER4)) for p in packets]
    f.write_bytes(pcap([Rec(ts_ns=(i + 1) * 1_000_000, data=fr) for i, fr in enumerate(frames)]))
    assert len({o[0] for o in _tshark_tcp(f)}) == 2  # tshark decodes L2TP: there are two connections inside
    with open_captures([f]) as reader:
        assert sum(len(b) for b in reader) == 0
    assert reader.stats.total.encap_undecoded == 16
    (issue,) = reader.issues
    assert issue.severity is Severity.WARNING
    assert issue.message.startswith("16 packets inside an encapsulation that is not decoded")


def test_ip_length_beyond_the_frame_is_capped_and_reported(tmp_path: Path) -> None:
    seg = tcp(40000, 80, flags=0x18, payload=b"x" * 100)
    good = eth(ETH_IPV4, ipv4(6, seg))
    bad = eth(ETH_IPV4, ipv4(6, seg, total=35_000))  # the header claims 35,000 bytes, the frame holds 140
    f = tmp_path / "len.pcap"
    f.write_bytes(pcap([Rec(ts_ns=1000, data=good), Rec(ts_ns=2000, data=bad), Rec(ts_ns=3000, data=bad)]))
    with open_captures([f]) as reader:
        (batch,) = list(reader)
    assert batch.payload_len.tolist() == [100, 100, 100]
    assert reader.stats.total.length_capped == 2
    (issue,) = reader.issues
    assert issue.severity is Severity.WARNING
    assert "2 packets (the first is frame 2) claim an IP length larger than the frame holds" in issue.message


@needs_tshark
def test_ip_length_beyond_the_frame_counts_the_bytes_tshark_counts(tmp_path: Path) -> None:
    """A connection whose segment headers claim 35,000 bytes in 140-byte frames: tshark's
    ``tcp.len`` and the record's byte counts both take what the frames hold."""
    hs = [(True, 0x02, 100, 0, b""), (False, 0x12, 500, 101, b""), (True, 0x10, 101, 501, b"")]
    data = [(True, 0x18, 101 + 100 * i, 501, b"x" * 100) for i in range(3)]
    frames = []
    for n, (from_client, flags, seq, ack, payload) in enumerate(hs + data):
        src, dst = ("198.18.0.1", "198.18.0.2") if from_client else ("198.18.0.2", "198.18.0.1")
        seg = tcp(40000 if from_client else 80, 80 if from_client else 40000, seq=seq, ack=ack, flags=flags,
                  payload=payload)  # fmt: skip
        frames.append(eth(ETH_IPV4, ipv4(6, seg, src=src, dst=dst, total=35_000 if n >= 4 else None)))
    f = tmp_path / "corrupt-length.pcap"
    f.write_bytes(pcap([Rec(ts_ns=(i + 1) * 1_000_000, data=fr) for i, fr in enumerate(frames)]))
    rows = tshark.fields(f, ["ip.len", "tcp.len"])
    assert [r[0] for r in rows[3:]] == ["140", "35000", "35000"]  # the corrupt headers as tshark reads them
    (c,) = analyze([f]).connections
    assert c.orig_bytes == sum(int(r[1]) for r in rows) == 300
    assert c.orig_retransmits == 0 and c.missed_bytes == 0


def test_pcapng_blocks_without_padding_in_their_length_and_unknown_blocks(tmp_path: Path) -> None:
    pkt = eth(ETH_IPV4, ipv4(6, tcp(1, 2, payload=b"abc")))  # 57 bytes: 3 bytes of padding in its block
    unpadded = bytearray(epb(0, 1, pkt))
    length = len(unpadded) - 3  # as early writers did: the length leaves the padding out
    unpadded[4:8] = length.to_bytes(4, "little")
    unpadded[-4:] = length.to_bytes(4, "little")
    unknown = block("<", 0x00000F0F, b"\x00" * 8)
    f = tmp_path / "old.pcapng"
    f.write_bytes(shb() + idb(linktype=1) + bytes(unpadded) + unknown + unknown + epb(0, 2, pkt))
    assert len(tshark.fields(f, ["frame.number"])) == 2
    with open_captures([f]) as reader:
        (batch,) = list(reader)
    assert batch.frame.tolist() == [1, 2] and reader.stats.total.unknown_blocks == 2
    (issue,) = reader.issues
    assert issue.severity is Severity.WARNING and "2 pcapng blocks of a type not known" in issue.message
    assert "0x00000f0f" in issue.message and issue.offset == len(shb() + idb(linktype=1)) + len(unpadded)


# ---------------------------------------------------------------------------------------------
# one walker for both formats, decoding inline: compiled and plain Python, pcap and pcapng agree

_EVERY_KIND = [
    eth(ETH_IPV4, ipv4(6, tcp(40000, 443, seq=5, ack=6, flags=0x18, payload=b"hello", window=99))),
    eth(ETH_IPV6, ipv6(6, tcp(443, 40000, flags=0x12, payload=b"v6"))),
    eth(ETH_IPV4, ipv4(17, udp(5353, 53, b"q" * 10))),
    eth(ETH_IPV6, ipv6(17, udp(53, 40000, b"r" * 77))),
    eth(ETH_IPV4, ipv4(6, tcp(1, 2, flags=0x11, payload=b"xy"), options=b"\x94\x04\x00\x00")),
    eth(ETH_IPV4, ipv4(6, tcp(1, 2, flags=0x10, payload=b"p" * 100), total=0)),  # TSO: length 0
    eth(ETH_IPV4, ipv4(6, tcp(1, 2, payload=b"z" * 50), total=200)),  # capped at the frame
    eth(ETH_IPV6, ipv6(6, tcp(1, 2, payload=b"z" * 50), plen=300)),  # capped at the frame
    eth(ETH_IPV4, ipv4(17, udp(1000, 53, b"a" * 40), frag=0x2000)),
    eth(ETH_IPV4, ipv4(6, b"b" * 64, frag=0x0008)),  # a later fragment: no transport header
    eth(ETH_IPV6, ipv6(0, ext(43, 0) + ext(60, 2) + ext(51, 1) + ah(44) + frag6(6, 0, False) + tcp(443, 5, seq=7))),
    eth(ETH_IPV6, ipv6(44, frag6(17, 100, True) + b"x" * 48)),
    eth(ETH_IPV4, ipv4(17, udp(1, 2, b"abcd" + b"TRLR", length=12))),
    eth(0x0806, b"\x00" * 28),
    eth(ETH_IPV4, ipv4(1, b"\x08\x00" + b"\x00" * 6)),
    eth(ETH_IPV6, ipv6(59, b"")),
    eth(ETH_IPV4, ipv4(6, tcp(1, 2)))[:30],
    eth(ETH_IPV4, ipv4(6, tcp(1, 2)))[:40],
    eth(ETH_IPV6, ipv6(0, ext(6, 4) + tcp(1, 2)))[:70],
    eth(ETH_IPV4, ipv4(6, tcp(1, 2), ihl=4)),
    eth(ETH_IPV4, ipv6(6, tcp(1, 2))),
    eth(ETH_IPV4, ipv4(6, tcp(1, 2, doff=4))),
    eth(ETH_IPV4, ipv4(6, tcp(1, 2), total=30)),
    eth(ETH_IPV4, ipv4(17, udp(1, 2), total=25)),
    b"\x00" * 10,
    *(wrap(p) for lt, wrap, v6, _ in ENCAPSULATIONS.values() if lt == 1 for p in _conversations(v6)[:2]),
]

_WALK_DIGEST = (
    "import hashlib, sys\n"
    "from halfclose.capture import open_captures\n"
    "from halfclose.capture import _kernels\n"
    "from halfclose.capture.columns import COLUMNS\n"
    "from halfclose.capture.compiling import use_compiled\n"
    "use_compiled()\n"
    "for path in sys.argv[1:]:\n"
    "    h = hashlib.sha256()\n"
    "    with open_captures([path], batch_packets=3) as r:\n"
    "        for b in r:\n"
    "            for c in COLUMNS:\n"
    "                if c.name != 'payload_off':  # (an offset into the file: differs between formats)\n"
    "                    h.update(c.name.encode() + getattr(b, c.name).tobytes())\n"
    "            for i in range(len(b)):\n"
    "                h.update(b.payload(i))\n"
    "    t = r.stats.total\n"
    "    counts = (t.packets, t.tcp, t.udp, t.ipv4, t.ipv6, t.non_ip, t.non_tcp_udp, t.fragments, t.truncated,\n"
    "              t.malformed, t.encap_undecoded, t.length_capped, sorted(t.tunnels.items()))\n"
    "    print(_kernels.compiled(), counts, h.hexdigest())\n"
)


def test_every_kind_of_packet_reads_alike_compiled_and_plain_in_pcap_and_pcapng(tmp_path: Path) -> None:
    """The walker decodes pcap records and pcapng blocks in one loop; compiled (built ahead of time or
    by numba) it gives the rows and counts the plain Python form gives, batch after batch (3 rows each),
    and the same packets in a pcap file and in a pcapng file give the same rows."""
    ts = [1_700_000_000_000_000_000 + i * 1_234_567 for i in range(len(_EVERY_KIND))]
    origlen = {6: 400, 7: 400, 16: 1514, 17: 1514, 18: 1514}  # frames cut by the snap length
    recs = [Rec(ts_ns=t, data=f, origlen=origlen.get(i)) for i, (t, f) in enumerate(zip(ts, _EVERY_KIND, strict=True))]
    ng = shb() + idb(linktype=1, tsresol=9)
    ng += b"".join(epb(0, r.ts_ns, r.data, origlen=r.origlen) for r in recs)
    (tmp_path / "every.pcap").write_bytes(pcap(recs, nano=True))
    (tmp_path / "every.pcapng").write_bytes(ng)
    paths = [str(tmp_path / "every.pcap"), str(tmp_path / "every.pcapng")]
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outs = {}
    for disable in ("0", "1"):
        run = subprocess.run(
            [sys.executable, "-c", _WALK_DIGEST, *paths], env=dict(env, NUMBA_DISABLE_JIT=disable),
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        outs[disable] = run.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in outs["0"]] == ["True", "True"]
    assert [line.split(" ", 1)[0] for line in outs["1"]] == ["False", "False"]
    assert [line.split(" ", 1)[1] for line in outs["0"]] == [line.split(" ", 1)[1] for line in outs["1"]]
    pcap_line, pcapng_line = outs["0"]
    assert pcap_line.split(" ", 1)[1] == pcapng_line.split(" ", 1)[1]
    assert f"({len(_EVERY_KIND)}, " in pcap_line  # every record read
