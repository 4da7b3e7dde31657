from __future__ import annotations

import struct

import pytest

from halfclose.sockdiag.netlink import (
    NetlinkFormatError,
    NlMsgType,
    decode_nlmsgerr,
    encode_nlattr,
    encode_nlmsg,
    iter_nlattrs,
    iter_nlmsgs,
)


def test_encode_nlmsg_header_and_padding() -> None:
    data = encode_nlmsg(21, 0x5, 7, b"abcde")
    assert data[:16] == struct.pack("=IHHII", 21, 21, 0x5, 7, 0)
    assert data[16:21] == b"abcde"
    assert data[21:] == b"\0\0\0"
    assert len(data) == 24


def test_iter_two_messages_with_padding() -> None:
    data = encode_nlmsg(20, 2, 1, b"x") + encode_nlmsg(NlMsgType.NLMSG_DONE, 2, 1, b"\0\0\0\0")
    msgs = list(iter_nlmsgs(data))
    assert [m.nlmsg_type for m in msgs] == [20, 3]
    assert msgs[0].payload == b"x"
    assert msgs[1].nlmsg_seq == 1


def test_truncated_header_and_overlong_length_are_errors() -> None:
    with pytest.raises(NetlinkFormatError, match="cut off"):
        list(iter_nlmsgs(b"\x10\0\0\0\x02\0"))
    bad = struct.pack("=IHHII", 100, 2, 0, 0, 0)
    with pytest.raises(NetlinkFormatError, match="claims 100 bytes"):
        list(iter_nlmsgs(bad))


def test_nlmsgerr_with_echoed_header() -> None:
    payload = struct.pack("=i", -2) + struct.pack("=IHHII", 72, 21, 5, 99, 0)
    err = decode_nlmsgerr(payload)
    assert err.error == -2
    assert err.msg_seq == 99
    assert decode_nlmsgerr(struct.pack("=i", 0)).msg_seq is None
    with pytest.raises(NetlinkFormatError):
        decode_nlmsgerr(b"\0\0")


def test_attributes_round_trip_and_flag_bits_masked() -> None:
    area = encode_nlattr(9, b"abc") + encode_nlattr(11 | 0x8000, b"\0\0\0\x01")
    attrs = list(iter_nlattrs(area))
    assert [(a.nla_type, a.value) for a in attrs] == [(9, b"abc"), (11, b"\0\0\0\x01")]
    assert len(area) == 8 + 8
    with pytest.raises(NetlinkFormatError):
        list(iter_nlattrs(struct.pack("=HH", 40, 1) + b"xxxx"))
