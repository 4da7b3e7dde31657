"""NFLOG (``nfnetlink_log``) listener: configuration messages out, logged packets in.

The pure part encodes ``NFULNL_MSG_CONFIG`` requests and decodes ``NFULNL_MSG_PACKET``
messages, including the IPv4/IPv6 and TCP headers inside ``NFULA_PAYLOAD``; names follow
``linux/netfilter/nfnetlink_log.h`` and ``linux/netfilter/nfnetlink.h``. :class:`NflogListener`
is the thin socket adapter. Numbers inside nfnetlink attributes are big-endian.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass

from halfclose.errors import EnvironmentProblem, UsageError
from halfclose.sockdiag.client import has_cap_net_admin
from halfclose.sockdiag.netlink import (
    NetlinkFormatError,
    NlFlag,
    NlMsgType,
    decode_nlmsgerr,
    encode_nlattr,
    encode_nlmsg,
    iter_nlattrs,
    iter_nlmsgs,
)
from halfclose.sockdiag.wire import EXACT_REQUEST, Address, InetDiagSockId

__all__ = [
    "NETLINK_NETFILTER",
    "NFNL_SUBSYS_ULOG",
    "FinReader",
    "NflogBufferOverrun",
    "NflogListener",
    "NflogPacket",
    "NfulaAttr",
    "NfulaCfgAttr",
    "NfulnlCfgCmd",
    "NfulnlMsgType",
    "TcpSegment",
    "decode_nflog_packet",
    "encode_config",
    "fin_lookup_request",
    "fin_lookup_requests",
    "parse_ip_tcp",
]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFNETLINK_V0 = 0
NFULNL_COPY_PACKET = 0x02
#: ``struct nfgenmsg { __u8 nfgen_family; __u8 version; __be16 res_id; }``.
_NFGENMSG = struct.Struct("!BBH")
TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class NfulnlMsgType(enum.IntEnum):
    """``NFULNL_MSG_*``: the low byte of ``nlmsg_type`` (the high byte is the subsystem)."""

    NFULNL_MSG_PACKET = 0
    NFULNL_MSG_CONFIG = 1


class NfulnlCfgCmd(enum.IntEnum):
    """``NFULNL_CFG_CMD_*`` (``struct nfulnl_msg_config_cmd { __u8 command; }``)."""

    NFULNL_CFG_CMD_NONE = 0
    NFULNL_CFG_CMD_BIND = 1
    NFULNL_CFG_CMD_UNBIND = 2
    NFULNL_CFG_CMD_PF_BIND = 3
    NFULNL_CFG_CMD_PF_UNBIND = 4


class NfulaCfgAttr(enum.IntEnum):
    """``NFULA_CFG_*`` attributes of a config message."""

    NFULA_CFG_CMD = 1
    NFULA_CFG_MODE = 2
    NFULA_CFG_NLBUFSIZ = 3
    NFULA_CFG_TIMEOUT = 4
    NFULA_CFG_QTHRESH = 5
    NFULA_CFG_FLAGS = 6


class NfulaAttr(enum.IntEnum):
    """``NFULA_*`` attributes of a packet message."""

    NFULA_PACKET_HDR = 1
    NFULA_MARK = 2
    NFULA_TIMESTAMP = 3
    NFULA_IFINDEX_INDEV = 4
    NFULA_IFINDEX_OUTDEV = 5
    NFULA_IFINDEX_PHYSINDEV = 6
    NFULA_IFINDEX_PHYSOUTDEV = 7
    NFULA_HWADDR = 8
    NFULA_PAYLOAD = 9
    NFULA_PREFIX = 10
    NFULA_UID = 11
    NFULA_SEQ = 12
    NFULA_SEQ_GLOBAL = 13
    NFULA_GID = 14


def encode_config(
    *,
    group: int,
    seq: int,
    command: NfulnlCfgCmd | None = None,
    copy_range: int | None = None,
    qthresh: int | None = None,
    timeout_cs: int | None = None,
    nlbufsiz: int | None = None,
    family: int = socket.AF_UNSPEC,
) -> bytes:
    """One ``NFULNL_MSG_CONFIG`` request for *group* (asks for an ACK).

    *copy_range* sets copy mode ``NFULNL_COPY_PACKET`` with that many bytes; *qthresh* is the
    number of packets batched before delivery (1: deliver each at once); *timeout_cs* the
    batching timeout in 1/100 s.
    """
    attrs = b""
    if command is not None:
        attrs += encode_nlattr(NfulaCfgAttr.NFULA_CFG_CMD, struct.pack("B", command))
    if copy_range is not None:
        # struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; __u8 _pad; } packed
        mode = struct.pack("!IBx", copy_range, NFULNL_COPY_PACKET)
        attrs += encode_nlattr(NfulaCfgAttr.NFULA_CFG_MODE, mode)
    if nlbufsiz is not None:
        attrs += encode_nlattr(NfulaCfgAttr.NFULA_CFG_NLBUFSIZ, struct.pack("!I", nlbufsiz))
    if timeout_cs is not None:
        attrs += encode_nlattr(NfulaCfgAttr.NFULA_CFG_TIMEOUT, struct.pack("!I", timeout_cs))
    if qthresh is not None:
        attrs += encode_nlattr(NfulaCfgAttr.NFULA_CFG_QTHRESH, struct.pack("!I", qthresh))
    mtype = (NFNL_SUBSYS_ULOG << 8) | NfulnlMsgType.NFULNL_MSG_CONFIG
    payload = _NFGENMSG.pack(family, NFNETLINK_V0, group) + attrs
    return encode_nlmsg(mtype, NlFlag.NLM_F_REQUEST | NlFlag.NLM_F_ACK, seq, payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSegment:
    """The addresses, ports and flags of one logged TCP segment, as it travelled (src -> dst)."""

    family: int
    src: Address
    dst: Address
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int

    @property
    def is_fin(self) -> bool:
        """FIN set and RST not set."""
        return bool(self.flags & TH_FIN) and not self.flags & TH_RST

    def receiver_sockid(self) -> InetDiagSockId:
        """The sock_diag id of the local socket this segment was addressed to (cookie: any)."""
        return InetDiagSockId(
            family=self.family, sport=self.dport, dport=self.sport, src=self.dst, dst=self.src
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NflogPacket:
    """One logged packet: the group it came from, its TCP segment (None if not TCP or cut too
    short), the socket uid when the kernel knew it (``NFULA_UID``), and the rule's prefix."""

    group: int
    family: int
    segment: TcpSegment | None
    uid: int | None
    prefix: str | None
    hook: int | None


_IPV6_EXT_HEADERS = {0, 43, 60}  # hop-by-hop, routing, destination options
#: The IPv4 header fields read here: version and IHL, fragment offset, protocol, addresses.
_IPV4 = struct.Struct("!B5xHxB2x4s4s")
#: The TCP header start read here: source and destination port, flags.
_TCP_PORTS_FLAGS = struct.Struct("!HH9xB")


_Buffer = bytes | bytearray | memoryview


def _locate_tcp(data: _Buffer, start: int = 0, stop: int | None = None) -> tuple[int, int] | None:
    """``(family, offset of the TCP header)`` of the IPv4 or IPv6 packet start in
    ``data[start:stop]``, or None if it is not TCP (or not a first fragment) or too short to hold
    the TCP ports, seq, ack and flags."""
    end = len(data) if stop is None else stop
    if end <= start:
        return None
    version = data[start] >> 4
    if version == 4:
        if end - start < 20:
            return None
        ihl = (data[start] & 0x0F) * 4
        frag = ((data[start + 6] << 8) | data[start + 7]) & 0x1FFF
        if data[start + 9] != socket.IPPROTO_TCP or frag or ihl < 20:
            return None
        family, offset = socket.AF_INET, start + ihl
    elif version == 6:
        if end - start < 40:
            return None
        nxt = data[start + 6]
        family, offset = socket.AF_INET6, start + 40
        while nxt in _IPV6_EXT_HEADERS:
            if end < offset + 8:
                return None
            nxt, hlen = data[offset], (data[offset + 1] + 1) * 8
            offset += hlen
        if nxt != socket.IPPROTO_TCP:
            return None
    else:
        return None
    if end < offset + 14:
        return None
    return family, offset


#: Where the source and destination addresses sit in an IPv4 / IPv6 header.
_ADDRESSES: dict[int, tuple[int, int, int]] = {socket.AF_INET: (12, 16, 20), socket.AF_INET6: (8, 24, 40)}


def parse_ip_tcp(data: bytes) -> TcpSegment | None:
    """Parse an IPv4 or IPv6 packet start into a :class:`TcpSegment`; None if not TCP or too short.

    IPv4 fragments other than the first are not TCP headers and give None.
    """
    found = _locate_tcp(data)
    if found is None:
        return None
    family, offset = found
    a, b, c = _ADDRESSES[family]
    make = ipaddress.IPv4Address if family == socket.AF_INET else ipaddress.IPv6Address
    sport, dport, seq, ack, _off, flags = struct.unpack_from("!HHIIBB", data, offset)
    return TcpSegment(
        family=family, src=make(data[a:b]), dst=make(data[b:c]), sport=sport, dport=dport, seq=seq, ack=ack,
        flags=flags,
    )


_AF_INET, _AF_INET6, _TCP = int(socket.AF_INET), int(socket.AF_INET6), int(socket.IPPROTO_TCP)
_ALL = 0xFFFF_FFFF
_PACK_V4, _PACK_V6 = EXACT_REQUEST[_AF_INET].pack, EXACT_REQUEST[_AF_INET6].pack


def _fin_request(data: _Buffer, start: int, stop: int) -> bytes | None:
    """:func:`fin_lookup_request` for the packet start in ``data[start:stop]`` (no copy of it made)."""
    if stop - start >= 34 and data[start] >> 4 == 4:  # the usual case, in two reads
        vihl, frag, proto, src, dst = _IPV4.unpack_from(data, start)
        tcp = start + (vihl & 0x0F) * 4
        if proto != _TCP or frag & 0x1FFF or vihl & 0x0F < 5 or stop < tcp + 14:
            return None
        sport, dport, flags = _TCP_PORTS_FLAGS.unpack_from(data, tcp)
        if flags & (TH_FIN | TH_RST) != TH_FIN:
            return None
        return _PACK_V4(_AF_INET, _TCP, 0, _ALL, dport, sport, dst, src, 0, _ALL, _ALL)
    found = _locate_tcp(data, start, stop)
    if found is None or found[0] != _AF_INET6:
        return None
    tcp = found[1]
    sport, dport, flags = _TCP_PORTS_FLAGS.unpack_from(data, tcp)
    if flags & (TH_FIN | TH_RST) != TH_FIN:
        return None
    return _PACK_V6(_AF_INET6, _TCP, 0, _ALL, dport, sport, bytes(data[start + 24 : start + 40]),
                    bytes(data[start + 8 : start + 24]), 0, _ALL, _ALL)


def fin_lookup_request(data: bytes) -> bytes | None:
    """For a logged packet that is a FIN without RST: the sock_diag lookup request (an
    ``inet_diag_req_v2``, cookie: any) of the local socket it was addressed to, built straight
    from the header bytes (ports and addresses are in network order in both). None otherwise."""
    return _fin_request(data, 0, len(data))


def decode_nflog_packet(payload: bytes) -> NflogPacket:
    """Decode the payload (after ``nlmsghdr``) of an ``NFULNL_MSG_PACKET`` message.

    Raises:
        NetlinkFormatError: shorter than ``struct nfgenmsg`` or a malformed attribute.
    """
    if len(payload) < _NFGENMSG.size:
        raise NetlinkFormatError(f"nflog message of {len(payload)} bytes, need {_NFGENMSG.size}")
    family, _version, group = _NFGENMSG.unpack_from(payload)
    segment = None
    uid = None
    prefix = None
    hook = None
    for attr in iter_nlattrs(payload, _NFGENMSG.size):
        if attr.nla_type == NfulaAttr.NFULA_PAYLOAD:
            segment = parse_ip_tcp(attr.value)
        elif attr.nla_type == NfulaAttr.NFULA_UID and len(attr.value) >= 4:
            (uid,) = struct.unpack_from("!I", attr.value)
        elif attr.nla_type == NfulaAttr.NFULA_PREFIX:
            prefix = attr.value.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif attr.nla_type == NfulaAttr.NFULA_PACKET_HDR and len(attr.value) >= 3:
            hook = attr.value[2]
    return NflogPacket(group=group, family=family, segment=segment, uid=uid, prefix=prefix, hook=hook)


#: ``nlmsg_len, nlmsg_type`` of ``struct nlmsghdr`` (16 bytes), and ``struct nlattr``.
_NLMSG_LEN_TYPE = struct.Struct("=IH")
_NLMSGHDR_LEN = 16
_NLA = struct.Struct("=HH")
_PKT_TYPE = (NFNL_SUBSYS_ULOG << 8) | NfulnlMsgType.NFULNL_MSG_PACKET
_PAYLOAD = int(NfulaAttr.NFULA_PAYLOAD)


#: Where the attributes of an ``NFULNL_MSG_PACKET`` message start (after ``nlmsghdr`` and ``nfgenmsg``).
_ATTRS_AT = _NLMSGHDR_LEN + _NFGENMSG.size


class FinReader:
    """Reads NFLOG datagrams into the lookup requests of the FINs they log: the reaper's hot
    path, without building a record per message or attribute, or copying a packet.

    The kernel builds the attributes before ``NFULA_PAYLOAD`` (always the last) the same way for
    every packet of one rule and interface, so the reader remembers the layout of the last message
    walked: one struct read of every attribute header up to the payload's type, compared with the
    remembered ones, proves that a message has the same layout and so where its payload is. Any
    other message is walked attribute by attribute (and its layout remembered).
    """

    __slots__ = ("_layout",)

    def __init__(self) -> None:
        #: The struct reading the attribute headers from the first attribute on, the values they
        #: had, and the payload attribute's offset from the message start.
        self._layout: tuple[struct.Struct, tuple[int, ...], int] | None = None

    def requests(self, data: _Buffer, end: int | None = None) -> list[bytes]:
        """:func:`fin_lookup_request` for every packet logged in the datagram ``data[:end]``.

        Raises:
            NetlinkFormatError: a message or attribute claims more bytes than the datagram holds.
        """
        out = []
        offset = 0
        if end is None:
            end = len(data)
        unpack_msg, unpack_nla = _NLMSG_LEN_TYPE.unpack_from, _NLA.unpack_from
        while end - offset >= _NLMSGHDR_LEN:
            length, mtype = unpack_msg(data, offset)
            if length < _NLMSGHDR_LEN or offset + length > end:
                raise NetlinkFormatError(f"netlink message at byte {offset} claims {length} bytes")
            if mtype == _PKT_TYPE:
                stop = offset + length
                layout = self._layout
                if (layout is not None and offset + layout[2] + 4 <= stop
                        and layout[0].unpack_from(data, offset + _ATTRS_AT) == layout[1]):
                    pos = offset + layout[2]
                    alen = unpack_nla(data, pos)[0]
                    if alen < 4 or pos + alen > stop:
                        raise NetlinkFormatError(f"nflog attribute at byte {pos} claims {alen} bytes")
                    request = _fin_request(data, pos + 4, pos + alen)
                else:
                    found = self._walk(data, offset, stop)
                    request = None if found is None else _fin_request(data, found[0], found[1])
                if request is not None:
                    out.append(request)
            offset += (length + 3) & ~3
        return out

    def _walk(self, data: _Buffer, offset: int, stop: int) -> tuple[int, int] | None:
        """Start and end of the payload of the message ``data[offset:stop]`` (None: it has
        none), found attribute by attribute; its layout is remembered."""
        pos = offset + _ATTRS_AT
        fmt, values = ["="], []
        while stop - pos >= 4:
            alen, atype = _NLA.unpack_from(data, pos)
            if alen < 4 or pos + alen > stop:
                raise NetlinkFormatError(f"nflog attribute at byte {pos} claims {alen} bytes")
            if atype & 0x3FFF == _PAYLOAD:
                fmt.append("2xH")
                values.append(atype)
                self._layout = (struct.Struct("".join(fmt)), tuple(values), pos - offset)
                return pos + 4, pos + alen
            step = (alen + 3) & ~3
            fmt.append(f"HH{step - 4}x")
            values += (alen, atype)
            pos += step
        return None


def fin_lookup_requests(data: _Buffer, end: int | None = None) -> list[bytes]:
    """:func:`fin_lookup_request` for every packet logged in one datagram (``data[:end]``); see
    :class:`FinReader`, which a listener keeps from datagram to datagram.

    Raises:
        NetlinkFormatError: a message or attribute claims more bytes than the datagram holds.
    """
    return FinReader().requests(data, end)


class NflogBufferOverrun(Exception):
    """The socket's receive buffer overflowed (ENOBUFS): logged packets were lost."""


class NflogListener:
    """A netlink socket bound to one NFLOG group, in copy-packet mode, delivering each packet at once.

    Binding needs CAP_NET_ADMIN; only one listener per group and network namespace.
    """

    def __init__(self, group: int, *, copy_range: int = 128, rcvbuf: int = 4 << 20) -> None:
        if not 0 <= group <= 0xFFFF:
            raise UsageError(f"NFLOG group {group} is out of range: use 0 to 65535")
        self.group = group
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
        self._seq = 0
        try:
            self._sock.bind((0, 0))
            self._set_rcvbuf(rcvbuf)
            self._config(command=NfulnlCfgCmd.NFULNL_CFG_CMD_BIND)
            self._config(copy_range=copy_range, qthresh=1, timeout_cs=0)
        except BaseException:
            self._sock.close()
            raise
        self._buf = bytearray(1 << 16)
        self._reader = FinReader()
        self._timeout: float | None = None
        self._last_read = float("-inf")

    #: Datagrams closer together than this (seconds) count as a burst: :meth:`wait` then reads
    #: everything queued in one go, so that the FINs are looked up and destroyed in batches.
    BURST_GAP = 0.0005

    def _set_rcvbuf(self, size: int) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE (root)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _config(self, **kw: int | NfulnlCfgCmd | None) -> None:
        self._seq += 1
        self._sock.send(encode_config(group=self.group, seq=self._seq, **kw))  # type: ignore[arg-type]
        while True:
            data = self._sock.recv(65536)
            for msg in iter_nlmsgs(data):
                if msg.nlmsg_type != NlMsgType.NLMSG_ERROR or msg.nlmsg_seq != self._seq:
                    continue
                err = decode_nlmsgerr(msg.payload).error
                if err == 0:
                    return
                code = -err
                if code in (errno.EPERM, errno.EACCES) and not has_cap_net_admin():
                    raise EnvironmentProblem(
                        f"binding NFLOG group {self.group} needs CAP_NET_ADMIN: run as root"
                    )
                # nfnetlink_log answers EPERM when another socket owns the group, EBUSY when
                # this one already bound it.
                if code in (errno.EBUSY, errno.EPERM):
                    raise EnvironmentProblem(
                        f"NFLOG group {self.group} already has a listener in this network namespace: "
                        "stop it or pick another group with --nflog-group"
                    )
                raise EnvironmentProblem(
                    f"configuring NFLOG group {self.group} failed: {os.strerror(code)} "
                    "(is nfnetlink_log available in this kernel?)"
                )

    def fileno(self) -> int:
        """The netlink socket's descriptor (for poll/select)."""
        return self._sock.fileno()

    def set_nonblocking(self, flag: bool) -> None:
        """Make :meth:`receive` return [] instead of waiting when nothing is queued."""
        self._sock.setblocking(not flag)
        self._timeout = None

    def receive(self) -> list[NflogPacket]:
        """Read one datagram and return the packets it carries ([] when non-blocking and empty).

        Raises:
            NflogBufferOverrun: the kernel dropped messages since the last read (ENOBUFS).
        """
        try:
            n = self._sock.recv_into(self._buf)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise NflogBufferOverrun("NFLOG receive buffer overrun: packets were lost") from exc
            raise
        out = []
        pkt_type = (NFNL_SUBSYS_ULOG << 8) | NfulnlMsgType.NFULNL_MSG_PACKET
        for msg in iter_nlmsgs(bytes(self._buf[:n])):
            if msg.nlmsg_type == pkt_type:
                out.append(decode_nflog_packet(msg.payload))
        return out

    def drain(self) -> tuple[list[bytes], bool]:
        """Read every datagram queued now (without waiting) and return the lookup requests of
        the sockets the FINs they log were addressed to (:func:`fin_lookup_request`), and
        whether the kernel reported an overrun (ENOBUFS) meanwhile."""
        out: list[bytes] = []
        overrun = False
        sock, buf = self._sock, self._buf
        while True:
            try:
                n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out, overrun
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                overrun = True
                continue
            out += self._reader.requests(buf, n)

    def wait(self, timeout: float) -> tuple[list[bytes], bool]:
        """Wait up to *timeout* seconds for one datagram (a blocking read with ``SO_RCVTIMEO``:
        one system call per wake-up, no poll), then, when datagrams come in quick succession
        (a burst), read what else is queued; return as :meth:`drain` does ([] on timeout)."""
        sock = self._sock
        if timeout != self._timeout:
            usec = max(1, round(timeout * 1e6))
            sock.setblocking(True)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", usec // 1_000_000,
                                                                               usec % 1_000_000))
            self._timeout = timeout
        overrun = False
        try:
            n = sock.recv_into(self._buf)
        except BlockingIOError:
            return [], False
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            n, overrun = 0, True
        out = self._reader.requests(self._buf, n) if n else []
        now = time.monotonic()
        if overrun or now - self._last_read < self.BURST_GAP:
            more, more_overrun = self.drain()
            out += more
            overrun = overrun or more_overrun
        self._last_read = now
        return out, overrun

    def close(self) -> None:
        """Close the socket (the kernel drops the group binding with it)."""
        self._sock.close()

    def __enter__(self) -> NflogListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
