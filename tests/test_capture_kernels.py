"""Header decoding and record walking, on byte vectors built field by field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from capture_bytes import (
    ETH_IPV4,
    ETH_IPV6,
    Rec,
    ah,
    epb,
    eth,
    ext,
    frag6,
    idb,
    ipv4,
    ipv6,
    nrb,
    opb,
    pcap,
    shb,
    sll,
    sll2,
    spb,
    tcp,
    udp,
)
from halfclose.capture import _kernels as k
from halfclose.capture.columns import COLUMNS, allocate

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
