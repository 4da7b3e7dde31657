"""Netlink framing, pure: ``struct nlmsghdr``, ``struct nlmsgerr`` and ``struct nlattr``.

Names follow ``linux/netlink.h``. Nothing here touches a socket: :func:`encode_nlmsg` builds
bytes, :func:`iter_nlmsgs` splits a received datagram into messages and :func:`iter_nlattrs`
splits an attribute area. Control messages (``NLMSG_ERROR``, ``NLMSG_DONE``) are told apart by
``nlmsg_type`` before anyone reads a payload as a family-specific struct: ``NLMSG_ERROR`` is 2,
which is also ``AF_INET``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "NLA_HDRLEN",
    "NLMSG_HDRLEN",
    "NetlinkFormatError",
    "NlAttr",
    "NlFlag",
    "NlMsg",
    "NlMsgErr",
    "NlMsgType",
    "decode_nlmsgerr",
    "encode_nlattr",
    "encode_nlmsg",
    "iter_nlattrs",
    "iter_nlmsgs",
    "nla_align",
    "nlmsg_align",
]

#: ``struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags; __u32 nlmsg_seq;
#: __u32 nlmsg_pid; }`` in host byte order.
_NLMSGHDR = struct.Struct("=IHHII")
NLMSG_HDRLEN = _NLMSGHDR.size
#: ``struct nlattr { __u16 nla_len; __u16 nla_type; }``.
_NLATTR = struct.Struct("=HH")
NLA_HDRLEN = _NLATTR.size
#: ``NLA_F_NESTED | NLA_F_NET_BYTEORDER``: flag bits in ``nla_type``.
_NLA_TYPE_MASK = ~((1 << 15) | (1 << 14)) & 0xFFFF


class NetlinkFormatError(ValueError):
    """The kernel sent bytes that do not parse as netlink (a truncated or corrupt message)."""


class NlMsgType(enum.IntEnum):
    """Control message types (``NLMSG_*`` in ``linux/netlink.h``)."""

    NLMSG_NOOP = 1
    NLMSG_ERROR = 2
    NLMSG_DONE = 3
    NLMSG_OVERRUN = 4


class NlFlag(enum.IntFlag):
    """``nlmsg_flags`` bits (``NLM_F_*``)."""

    NLM_F_REQUEST = 0x01
    NLM_F_MULTI = 0x02
    NLM_F_ACK = 0x04
    NLM_F_ECHO = 0x08
    NLM_F_DUMP_INTR = 0x10
    NLM_F_ROOT = 0x100
    NLM_F_MATCH = 0x200
    NLM_F_DUMP = 0x300


def nlmsg_align(n: int) -> int:
    """``NLMSG_ALIGN``: round up to 4 bytes."""
    return (n + 3) & ~3


def nla_align(n: int) -> int:
    """``NLA_ALIGN``: round up to 4 bytes."""
    return (n + 3) & ~3


@dataclass(frozen=True, slots=True, kw_only=True)
class NlMsg:
    """One netlink message: the header fields and the payload after the header."""

    nlmsg_type: int
    nlmsg_flags: int
    nlmsg_seq: int
    nlmsg_pid: int
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class NlMsgErr:
    """``struct nlmsgerr``: ``error`` is 0 for an acknowledgement, else a negative errno."""

    error: int
    #: ``nlmsg_seq`` of the request this answers (from the echoed header), None if absent.
    msg_seq: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NlAttr:
    """One attribute: ``nla_type`` without the NESTED/NET_BYTEORDER flag bits, and its value."""

    nla_type: int
    value: bytes


def encode_nlmsg(nlmsg_type: int, nlmsg_flags: int, nlmsg_seq: int, payload: bytes) -> bytes:
    """One message: header (``nlmsg_pid`` 0, the kernel fills it) plus payload, padded to 4 bytes."""
    length = NLMSG_HDRLEN + len(payload)
    body = _NLMSGHDR.pack(length, nlmsg_type, nlmsg_flags, nlmsg_seq, 0) + payload
    return body + b"\0" * (nlmsg_align(length) - length)


def iter_nlmsgs(data: bytes) -> Iterator[NlMsg]:
    """Split one received datagram into messages.

    Raises:
        NetlinkFormatError: a header is cut off or claims a length beyond the datagram.
    """
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSG_HDRLEN:
            raise NetlinkFormatError(f"netlink header cut off at byte {offset} of {len(data)}")
        length, mtype, flags, seq, pid = _NLMSGHDR.unpack_from(data, offset)
        if length < NLMSG_HDRLEN or offset + length > len(data):
            raise NetlinkFormatError(
                f"netlink message at byte {offset} claims {length} bytes, {len(data) - offset} left"
            )
        yield NlMsg(
            nlmsg_type=mtype,
            nlmsg_flags=flags,
            nlmsg_seq=seq,
            nlmsg_pid=pid,
            payload=bytes(data[offset + NLMSG_HDRLEN : offset + length]),
        )
        offset += nlmsg_align(length)


def decode_nlmsgerr(payload: bytes) -> NlMsgErr:
    """Decode the payload of an ``NLMSG_ERROR`` message (``__s32 error`` + echoed header)."""
    if len(payload) < 4:
        raise NetlinkFormatError(f"NLMSG_ERROR payload of {len(payload)} bytes, need at least 4")
    (error,) = struct.unpack_from("=i", payload)
    seq = None
    if len(payload) >= 4 + NLMSG_HDRLEN:
        seq = _NLMSGHDR.unpack_from(payload, 4)[3]
    return NlMsgErr(error=error, msg_seq=seq)


def encode_nlattr(nla_type: int, value: bytes) -> bytes:
    """One attribute with its header, padded to 4 bytes."""
    length = NLA_HDRLEN + len(value)
    return _NLATTR.pack(length, nla_type) + value + b"\0" * (nla_align(length) - length)


def iter_nlattrs(data: bytes, offset: int = 0) -> Iterator[NlAttr]:
    """Split an attribute area starting at *offset*; trailing bytes shorter than a header end it.

    Raises:
        NetlinkFormatError: an attribute claims a length beyond the area.
    """
    while len(data) - offset >= NLA_HDRLEN:
        length, ntype = _NLATTR.unpack_from(data, offset)
        if length < NLA_HDRLEN or offset + length > len(data):
            raise NetlinkFormatError(
                f"netlink attribute at byte {offset} claims {length} bytes, {len(data) - offset} left"
            )
        value = bytes(data[offset + NLA_HDRLEN : offset + length])
        yield NlAttr(nla_type=ntype & _NLA_TYPE_MASK, value=value)
        offset += nla_align(length)
