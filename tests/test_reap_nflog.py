from __future__ import annotations

import ipaddress
import socket
import struct
import time

import pytest

from _reap_lab import connect_pair, listener, lo_netns
from halfclose.errors import EnvironmentProblem, UsageError
from halfclose.netfilter import Policy, Strategy, installed
from halfclose.reap.nflog import (
    NFNL_SUBSYS_ULOG,
    NflogBufferOverrun,
    NflogListener,
    NfulnlCfgCmd,
    decode_nflog_packet,
    encode_config,
    parse_ip_tcp,
)
from halfclose.sockdiag import netns_entered
from halfclose.sockdiag.netlink import encode_nlattr, iter_nlattrs, iter_nlmsgs


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, flags: int, *, ihl: int = 5) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 40, 1, 0, 64, 6, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    ip += b"\x01" * ((ihl - 5) * 4)  # options (NOPs)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 0x50, flags, 512, 0, 0)
    return ip + tcp


def ipv6_tcp(src: str, dst: str, sport: int, dport: int, flags: int, *, hop_by_hop: bool = False) -> bytes:
    nxt = 0 if hop_by_hop else 6
    ip = struct.pack("!IHBB16s16s", 0x60000000, 20, nxt, 64,
                     ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    if hop_by_hop:
        ip += bytes([6, 0]) + b"\x01\x04\0\0\0\0"
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 7, 8, 0x50, flags, 512, 0, 0)
    return ip + tcp


def test_config_message_bytes() -> None:
    data = encode_config(group=42, seq=3, command=NfulnlCfgCmd.NFULNL_CFG_CMD_BIND)
    (msg,) = list(iter_nlmsgs(data))
    assert msg.nlmsg_type == (4 << 8) | 1
    assert msg.nlmsg_flags == 0x5
    assert msg.payload[:4] == bytes([0, 0, 0, 42])  # nfgenmsg: AF_UNSPEC, v0, res_id be16 42
    (attr,) = list(iter_nlattrs(msg.payload, 4))
    assert (attr.nla_type, attr.value) == (1, b"\x01")
    data = encode_config(group=42, seq=4, copy_range=128, qthresh=1, timeout_cs=0)
    attrs = {a.nla_type: a.value for a in iter_nlattrs(next(iter_nlmsgs(data)).payload, 4)}
    assert attrs[2] == struct.pack("!IBx", 128, 2)
    assert attrs[5] == b"\0\0\0\x01"
    assert attrs[4] == b"\0\0\0\0"


def test_parse_ipv4_fin_with_options() -> None:
    seg = parse_ip_tcp(ipv4_tcp("198.18.5.1", "198.18.5.2", 80, 51000, 0x11, ihl=6))
    assert seg is not None
    assert (str(seg.src), seg.sport, str(seg.dst), seg.dport) == ("198.18.5.1", 80, "198.18.5.2", 51000)
    assert seg.is_fin
    sid = seg.receiver_sockid()
    assert (str(sid.src), sid.sport, str(sid.dst), sid.dport) == ("198.18.5.2", 51000, "198.18.5.1", 80)


def test_parse_ipv6_with_hop_by_hop() -> None:
    seg = parse_ip_tcp(ipv6_tcp("fd00::1", "fd00::2", 80, 40000, 0x11, hop_by_hop=True))
    assert seg is not None and seg.family == socket.AF_INET6 and seg.dport == 40000


def test_parse_rejects_non_tcp_short_and_rst() -> None:
    udp = bytearray(ipv4_tcp("198.18.5.1", "198.18.5.2", 1, 2, 0))
    udp[9] = 17
    assert parse_ip_tcp(bytes(udp)) is None
    assert parse_ip_tcp(ipv4_tcp("198.18.5.1", "198.18.5.2", 1, 2, 0x11)[:30]) is None
    assert parse_ip_tcp(b"") is None
    seg = parse_ip_tcp(ipv4_tcp("198.18.5.1", "198.18.5.2", 1, 2, 0x15))  # FIN|RST|ACK
    assert seg is not None and not seg.is_fin


def test_decode_packet_message() -> None:
    payload = bytes([2, 0, 0, 42])
    payload += encode_nlattr(1, struct.pack("!HBx", 0x0800, 1))
    payload += encode_nlattr(10, b"hc\0")
    payload += encode_nlattr(11, struct.pack("!I", 10400))
    payload += encode_nlattr(9, ipv4_tcp("198.18.5.1", "198.18.5.2", 80, 51000, 0x11))
    pkt = decode_nflog_packet(payload)
    assert (pkt.group, pkt.uid, pkt.prefix, pkt.hook) == (42, 10400, "hc", 1)
    assert pkt.segment is not None and pkt.segment.sport == 80


def test_group_out_of_range_is_usage_error() -> None:
    with pytest.raises(UsageError, match="out of range"):
        NflogListener(70000)


@pytest.mark.root
def test_listener_gets_each_fin_at_once_and_group_is_exclusive() -> None:
    with lo_netns() as ns:
        with netns_entered(ns.name):
            lst = NflogListener(42)
        policy = Policy(uids=(0,), ports=(8080,), strategy=Strategy.NFLOG, nflog_group=42)
        with lst, installed(policy, netns=ns.name):
            with netns_entered(ns.name), pytest.raises(EnvironmentProblem, match="already has a listener"):
                NflogListener(42)
            srv = listener(ns, ns.v6, 8080)
            c, a = connect_pair(ns, srv, 0)
            a.close()
            pkts = lst.receive()  # blocking: one FIN, delivered without batching
            assert len(pkts) == 1
            seg = pkts[0].segment
            assert seg is not None and seg.is_fin
            assert seg.sport == 8080 and seg.dport == c.getsockname()[1]
            assert seg.dst == ipaddress.ip_address(ns.v6)
            c.close()
            srv.close()


@pytest.mark.root
def test_small_buffer_overrun_is_reported() -> None:
    with lo_netns() as ns:
        with netns_entered(ns.name):
            lst = NflogListener(43, rcvbuf=4096)
        policy = Policy(uids=(0,), ports=(8081,), strategy=Strategy.NFLOG, nflog_group=43)
        with lst, installed(policy, netns=ns.name):
            srv = listener(ns, ns.v4, 8081)
            socks = []
            for _ in range(200):
                c, a = connect_pair(ns, srv, 0)
                a.close()
                socks.append(c)
            time.sleep(0.1)
            lst.set_nonblocking(True)
            with pytest.raises(NflogBufferOverrun):
                for _ in range(400):
                    lst.receive()
            for c in socks:
                c.close()
            srv.close()


def test_packet_type_constant() -> None:
    assert NFNL_SUBSYS_ULOG << 8 == 0x400


def test_fin_lookup_requests_are_built_from_the_header_bytes() -> None:
    from halfclose.reap.nflog import NFNL_SUBSYS_ULOG, fin_lookup_request, fin_lookup_requests, parse_ip_tcp
    from halfclose.sockdiag.netlink import encode_nlmsg
    from halfclose.sockdiag.wire import exact_request

    for pkt in (ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40000, 0x11, ihl=6),
                ipv6_tcp("fd00::1", "fd00::2", 443, 40001, 0x11, hop_by_hop=True)):
        seg = parse_ip_tcp(pkt)
        assert seg is not None
        sid = seg.receiver_sockid()
        assert fin_lookup_request(pkt) == exact_request(sid.family, sid.encode())
    assert fin_lookup_request(ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40000, 0x14)) is None  # RST
    assert fin_lookup_request(ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40000, 0x10)) is None  # no FIN
    fin = ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40000, 0x11)
    ack = ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40000, 0x10)
    datagram = b"".join(
        encode_nlmsg(NFNL_SUBSYS_ULOG << 8, 0, 0, struct.pack("!BBH", 2, 0, 42) + encode_nlattr(10, b"p\0")
                     + encode_nlattr(9, p))
        for p in (fin, ack, fin)
    )
    assert fin_lookup_requests(datagram) == [fin_lookup_request(fin)] * 2


def test_fin_lookup_request_agrees_with_the_decoded_segment() -> None:
    import random

    from halfclose.reap.nflog import TH_FIN, TH_RST, fin_lookup_request, fin_lookup_requests
    from halfclose.sockdiag.netlink import encode_nlmsg
    from halfclose.sockdiag.wire import exact_request

    rng = random.Random(15)
    for _ in range(300):
        sport, dport, flags = rng.randrange(1, 65536), rng.randrange(1, 65536), rng.randrange(256)
        if rng.random() < 0.5:
            a, b = (str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2))
            pkt = ipv4_tcp(a, b, sport, dport, flags, ihl=rng.choice((5, 6, 15)))
        else:
            a, b = (str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(2))
            pkt = ipv6_tcp(a, b, sport, dport, flags, hop_by_hop=rng.random() < 0.5)
        seg = parse_ip_tcp(pkt)
        assert seg is not None
        sid = seg.receiver_sockid()
        want = exact_request(sid.family, sid.encode()) if flags & (TH_FIN | TH_RST) == TH_FIN else None
        assert fin_lookup_request(pkt) == want
        for cut in (len(pkt) - 7, 33, 20, 0):  # too short for the TCP flags: nothing
            assert fin_lookup_request(pkt[:cut]) is None
        # at any offset inside a datagram's buffer, with junk after its end
        msg = encode_nlmsg(NFNL_SUBSYS_ULOG << 8, 0, 0, struct.pack("!BBH", 2, 0, 42)
                           + encode_nlattr(1, b"\x08\0\x01\0") + encode_nlattr(9, pkt))
        buf = bytearray(msg + b"\xff" * 64)
        assert fin_lookup_requests(buf, len(msg)) == ([want] if want else [])
    fin = ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40000, 0x11)
    fragment = fin[:6] + b"\x00\x10" + fin[8:]  # offset 16 bytes: not a TCP header
    udp = fin[:9] + b"\x11" + fin[10:]
    short_ihl = b"\x44" + fin[1:]
    for pkt in (fragment, udp, short_ihl):
        assert fin_lookup_request(pkt) is None


def test_fin_reader_remembers_a_layout_only_while_it_holds() -> None:
    import itertools

    from halfclose.reap.nflog import FinReader, fin_lookup_request
    from halfclose.sockdiag.netlink import NetlinkFormatError, encode_nlmsg

    def message(pkt: bytes, *, prefix: bytes = b"halfclose-fin \0", stamp: bool = True, mark: bool = False,
                payload_type: int = 9) -> bytes:
        attrs = encode_nlattr(1, b"\x08\x00\x01\x00") + encode_nlattr(10, prefix)
        attrs += encode_nlattr(4, b"\0\0\0\x02")
        if mark:
            attrs += encode_nlattr(2, b"\0\0\0\x07")
        attrs += encode_nlattr(8, b"\0\x06\0\0" + b"\x02" * 8) + encode_nlattr(15, b"\0\x01")
        attrs += encode_nlattr(16, b"\0\x0e") + encode_nlattr(17, b"\x09\0" * 7)
        if stamp:
            attrs += encode_nlattr(3, b"\0" * 16)
        return encode_nlmsg(NFNL_SUBSYS_ULOG << 8, 0, 0, struct.pack("!BBH", 2, 0, 42) + attrs
                            + encode_nlattr(payload_type, pkt))

    fin4 = ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40000, 0x11)
    fin4b = ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40002, 0x11, ihl=6)
    fin6 = ipv6_tcp("fd00::1", "fd00::2", 443, 40001, 0x11)
    ack = ipv4_tcp("198.18.0.1", "198.18.0.2", 80, 40000, 0x10)
    messages = [
        (message(fin4), [fin_lookup_request(fin4)]),
        (message(fin4b), [fin_lookup_request(fin4b)]),  # same attributes, a longer payload
        (message(fin6, stamp=False), [fin_lookup_request(fin6)]),
        (message(fin4, prefix=b"other\0"), [fin_lookup_request(fin4)]),
        (message(fin4, mark=True), [fin_lookup_request(fin4)]),
        (message(ack), []),
        (message(fin4, payload_type=11), []),  # the same layout but no payload at the end
    ]
    assert all(None not in want for _, want in messages)
    for order in itertools.permutations(range(len(messages)), 3):
        reader = FinReader()
        for i in (*order, *order):
            data, want = messages[i]
            assert reader.requests(data) == want, (order, i)
        datagram = b"".join(messages[i][0] for i in order)
        assert reader.requests(datagram) == [r for i in order for r in messages[i][1]]
    reader = FinReader()
    good = message(fin4)
    reader.requests(good)
    cut = bytearray(good)
    cut[-len(fin4) - 4 : -len(fin4) - 2] = struct.pack("=H", len(fin4) + 40)  # the payload claims too much
    with pytest.raises(NetlinkFormatError):
        reader.requests(bytes(cut))
    with pytest.raises(NetlinkFormatError):
        FinReader().requests(bytes(cut))
