from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from halfclose.sockdiag.netlink import NetlinkFormatError, encode_nlattr
from halfclose.sockdiag.wire import (
    INET_DIAG_NOCOOKIE,
    InetDiagSockId,
    TcpState,
    decode_inet_diag_msg,
    decode_tcp_info,
    encode_inet_diag_req_v2,
    state_mask,
)

V4A = ipaddress.IPv4Address("198.18.1.2")
V4B = ipaddress.IPv4Address("198.18.1.1")
V6A = ipaddress.IPv6Address("fd12:3456:789a:1::2")


def sockid_bytes(sport: int, dport: int, src: bytes, dst: bytes, *, ifindex: int, cookie: int) -> bytes:
    return (
        struct.pack("!HH", sport, dport)
        + src.ljust(16, b"\0")
        + dst.ljust(16, b"\0")
        + struct.pack("=III", ifindex, cookie & 0xFFFFFFFF, cookie >> 32)
    )


def test_state_mask_bits() -> None:
    assert state_mask(TcpState.CLOSE_WAIT) == 1 << 8
    assert state_mask(TcpState.ESTABLISHED, TcpState.LISTEN) == (1 << 1) | (1 << 10)


def test_req_v2_layout_for_destroy() -> None:
    sid = InetDiagSockId(family=socket.AF_INET, sport=40000, dport=80, src=V4A, dst=V4B, cookie=0x1_0000_0002)
    data = encode_inet_diag_req_v2(sdiag_family=socket.AF_INET, idiag_states=0xFFFFFFFF, sockid=sid)
    assert len(data) == 56
    assert data[:8] == bytes([2, 6, 0, 0]) + struct.pack("=I", 0xFFFFFFFF)
    assert data[8:] == sockid_bytes(40000, 80, V4A.packed, V4B.packed, ifindex=0, cookie=0x1_0000_0002)


def test_req_v2_dump_has_zero_id_and_ext_bit() -> None:
    data = encode_inet_diag_req_v2(sdiag_family=socket.AF_INET6, idiag_states=1 << 8, idiag_ext=2)
    assert data[:8] == bytes([10, 6, 2, 0]) + struct.pack("=I", 256)
    assert data[8:] == b"\0" * 48


def test_sockid_rejects_family_mismatch() -> None:
    sid = InetDiagSockId(family=socket.AF_INET, sport=1, dport=2, src=V6A, dst=V6A)
    with pytest.raises(ValueError, match="does not match"):
        sid.encode()


def test_nocookie_is_all_ones() -> None:
    sid = InetDiagSockId(family=socket.AF_INET6, sport=1, dport=2, src=V6A, dst=V6A)
    assert sid.cookie == INET_DIAG_NOCOOKIE
    assert sid.encode()[-8:] == b"\xff" * 8


def msg_bytes(family: int, state: int, src: bytes, dst: bytes, *, rq: int, wq: int, uid: int) -> bytes:
    return (
        bytes([family, state, 1, 0])
        + sockid_bytes(51000, 80, src, dst, ifindex=0, cookie=77)
        + struct.pack("=IIIII", 200, rq, wq, uid, 12345)
    )


def test_decode_inet_diag_msg_v6_with_attributes() -> None:
    payload = msg_bytes(10, 8, V6A.packed, V6A.packed, rq=1, wq=0, uid=10400)
    payload += encode_nlattr(8, b"\x01") + encode_nlattr(2, bytes([8, 0, 0, 0, 0, 0, 0x74, 0]))
    msg = decode_inet_diag_msg(payload)
    assert msg.state is TcpState.CLOSE_WAIT
    assert msg.id.src == V6A and msg.id.sport == 51000 and msg.id.dport == 80
    assert msg.id.cookie == 77
    assert (msg.idiag_expires, msg.idiag_rqueue, msg.idiag_wqueue, msg.idiag_uid, msg.idiag_inode) == (
        200, 1, 0, 10400, 12345
    )
    assert msg.shutdown == 1
    assert msg.info is not None
    assert msg.info.tcpi_state == 8
    assert msg.info.tcpi_rto is None  # only 8 bytes were sent


def test_decode_inet_diag_msg_v4_uses_first_address_bytes() -> None:
    payload = msg_bytes(2, 1, V4A.packed + b"junk", V4B.packed, rq=0, wq=5, uid=0)
    msg = decode_inet_diag_msg(payload)
    assert msg.id.src == V4A and msg.id.dst == V4B
    assert msg.idiag_wqueue == 5


def test_decode_rejects_short_and_unknown_family() -> None:
    with pytest.raises(NetlinkFormatError, match="need 72"):
        decode_inet_diag_msg(b"\0" * 71)
    with pytest.raises(NetlinkFormatError, match="address family 1"):
        decode_inet_diag_msg(msg_bytes(1, 1, b"", b"", rq=0, wq=0, uid=0))


def test_tcp_info_wscale_nibbles_and_length() -> None:
    # byte 6 holds tcpi_snd_wscale in the low nibble and tcpi_rcv_wscale in the high one
    # (little-endian bit-field layout), the case pyroute2 decodes wrongly.
    head = bytes([8, 0, 0, 0, 0, 7, 0x9A, 0])
    words = struct.pack("=IIII", 204000, 40000, 1448, 536)
    info = decode_tcp_info(head + words)
    assert (info.tcpi_snd_wscale, info.tcpi_rcv_wscale) == (0xA, 0x9)
    assert (info.tcpi_rto, info.tcpi_ato, info.tcpi_snd_mss, info.tcpi_rcv_mss) == (204000, 40000, 1448, 536)
    assert info.tcpi_unacked is None


def test_tcp_info_u64_fields_at_their_offsets() -> None:
    data = bytearray(300)
    struct.pack_into("=Q", data, 104, 123456789)  # tcpi_pacing_rate
    struct.pack_into("=Q", data, 128, 42)  # tcpi_bytes_received
    struct.pack_into("=I", data, 228, 65535)  # tcpi_snd_wnd
    info = decode_tcp_info(bytes(data))
    assert info.tcpi_pacing_rate == 123456789
    assert info.tcpi_bytes_received == 42
    assert info.tcpi_snd_wnd == 65535
    cut = decode_tcp_info(bytes(data[:112]))
    assert cut.tcpi_pacing_rate == 123456789 and cut.tcpi_max_pacing_rate is None


def test_decode_rejects_attribute_overrunning_the_message() -> None:
    payload = msg_bytes(2, 1, V4A.packed, V4B.packed, rq=0, wq=0, uid=0)
    payload += struct.pack("=HH", 64, 2) + b"\0" * 8
    with pytest.raises(NetlinkFormatError, match="claims 64 bytes"):
        decode_inet_diag_msg(payload)


def test_dport_filter_is_the_bytecode_ss_builds() -> None:
    from halfclose.sockdiag.wire import encode_dport_filter

    # one port: D_EQ (yes: next op, no: 4 bytes past the end) and the port in the next op's "no"
    assert encode_dport_filter([80]) == struct.pack("=BBHBBH", 12, 8, 12, 0, 0, 80)
    two = encode_dport_filter([443, 80])
    ops = [struct.unpack_from("=BBH", two, i) for i in range(0, len(two), 4)]
    assert ops == [(12, 8, 12), (0, 0, 80), (1, 4, 12), (12, 8, 12), (0, 0, 443)]
    with pytest.raises(ValueError):
        encode_dport_filter([])
    with pytest.raises(ValueError):
        encode_dport_filter(range(1, 33))


def test_exact_request_carries_the_reply_sockid() -> None:
    from halfclose.sockdiag.wire import MSG_SOCKID, exact_request

    sid = InetDiagSockId(family=socket.AF_INET, sport=1, dport=80, src=ipaddress.ip_address("198.18.0.2"),
                         dst=ipaddress.ip_address("198.18.0.1"), cookie=7)
    reply = bytes([2, 8, 0, 0]) + sid.encode() + b"\0" * 20
    assert exact_request(2, reply[MSG_SOCKID]) == encode_inet_diag_req_v2(
        sdiag_family=2, idiag_states=0xFFFF_FFFF, sockid=sid)
