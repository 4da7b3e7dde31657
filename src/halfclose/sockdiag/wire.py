"""sock_diag wire structs for TCP, pure: requests to bytes, replies to records.

Struct and field names follow ``linux/inet_diag.h``, ``linux/sock_diag.h`` and ``linux/tcp.h``
so that a reviewer can hold this file next to the headers. Ports and addresses are in network
byte order on the wire, everything else in host order. Replies are decoded by the length the
kernel actually sent: a ``tcp_info`` shorter than this file knows leaves the missing fields None,
a longer one has its extra bytes ignored.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, fields

from halfclose.sockdiag.netlink import NetlinkFormatError, encode_nlattr, iter_nlattrs

__all__ = [
    "EXACT_REQUEST",
    "INET_DIAG_NOCOOKIE",
    "INET_DIAG_REQ_BYTECODE",
    "INET_DIAG_REQ_PROTOCOL",
    "MSG_SOCKID",
    "SOCK_DESTROY",
    "SOCK_DIAG_BY_FAMILY",
    "TCPF_ALL",
    "Address",
    "InetDiagAttr",
    "InetDiagMsg",
    "InetDiagSockId",
    "TcpInfo",
    "TcpState",
    "decode_inet_diag_msg",
    "decode_tcp_info",
    "encode_dport_filter",
    "encode_inet_diag_req_v2",
    "exact_request",
    "state_mask",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``nlmsg_type`` values of ``NETLINK_SOCK_DIAG`` requests (``linux/sock_diag.h``).
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
#: ``idiag_cookie`` value meaning "any socket with this 4-tuple".
INET_DIAG_NOCOOKIE = 0xFFFF_FFFF_FFFF_FFFF


class TcpState(enum.IntEnum):
    """``TCP_*`` socket states (``include/net/tcp_states.h``), as in ``idiag_state``."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12


#: Every state bit (``idiag_states`` of a dump of all sockets).
TCPF_ALL = (1 << (max(TcpState) + 1)) - 1


def state_mask(*states: TcpState) -> int:
    """``idiag_states`` bitmask for *states* (``TCPF_* = 1 << TCP_*``)."""
    mask = 0
    for s in states:
        mask |= 1 << s
    return mask


class InetDiagAttr(enum.IntEnum):
    """Reply attribute types (``INET_DIAG_*`` in ``linux/inet_diag.h``)."""

    INET_DIAG_NONE = 0
    INET_DIAG_MEMINFO = 1
    INET_DIAG_INFO = 2
    INET_DIAG_VEGASINFO = 3
    INET_DIAG_CONG = 4
    INET_DIAG_TOS = 5
    INET_DIAG_TCLASS = 6
    INET_DIAG_SKMEMINFO = 7
    INET_DIAG_SHUTDOWN = 8


#: ``struct inet_diag_sockid``: ``__be16 idiag_sport, idiag_dport; __be32 idiag_src[4],
#: idiag_dst[4]; __u32 idiag_if; __u32 idiag_cookie[2];`` (48 bytes).
_SOCKID_PORTS = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
_SOCKID_LEN = _SOCKID_PORTS.size + _SOCKID_TAIL.size
#: ``struct inet_diag_req_v2``: ``__u8 sdiag_family, sdiag_protocol, idiag_ext, pad; __u32
#: idiag_states;`` then the sockid (56 bytes).
_REQ_V2_HEAD = struct.Struct("=BBBxI")
#: ``struct inet_diag_msg``: ``__u8 idiag_family, idiag_state, idiag_timer, idiag_retrans;``
#: sockid; ``__u32 idiag_expires, idiag_rqueue, idiag_wqueue, idiag_uid, idiag_inode;`` (72 bytes).
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_TAIL = struct.Struct("=IIIII")
INET_DIAG_MSG_LEN = _MSG_HEAD.size + _SOCKID_LEN + _MSG_TAIL.size
_NLA = struct.Struct("=HH")


@dataclass(frozen=True, slots=True, kw_only=True)
class InetDiagSockId:
    """``struct inet_diag_sockid`` as the kernel means it: ``src``/``sport`` are the local end.

    ``cookie`` is the 64-bit socket cookie (``idiag_cookie[0] | idiag_cookie[1] << 32``), or
    :data:`INET_DIAG_NOCOOKIE` to match any socket with this 4-tuple.
    """

    family: int
    sport: int
    dport: int
    src: Address
    dst: Address
    interface: int = 0
    cookie: int = INET_DIAG_NOCOOKIE

    def encode(self) -> bytes:
        """The 48 wire bytes."""
        width = 4 if self.family == socket.AF_INET else 16
        src = self.src.packed.ljust(16, b"\0")
        dst = self.dst.packed.ljust(16, b"\0")
        if len(self.src.packed) != width or len(self.dst.packed) != width:
            raise ValueError(f"address family {self.family} does not match {self.src} / {self.dst}")
        return _SOCKID_PORTS.pack(self.sport, self.dport, src, dst) + _SOCKID_TAIL.pack(
            self.interface, self.cookie & 0xFFFF_FFFF, self.cookie >> 32
        )

    @classmethod
    def decode(cls, family: int, data: bytes, offset: int = 0) -> InetDiagSockId:
        """Parse 48 bytes at *offset* for address *family* (AF_INET uses the first 4 address bytes)."""
        sport, dport, src, dst = _SOCKID_PORTS.unpack_from(data, offset)
        interface, c0, c1 = _SOCKID_TAIL.unpack_from(data, offset + _SOCKID_PORTS.size)
        return cls(
            family=family,
            sport=sport,
            dport=dport,
            src=_address(family, src),
            dst=_address(family, dst),
            interface=interface,
            cookie=c0 | (c1 << 32),
        )


def _address(family: int, raw: bytes) -> Address:
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    if family == socket.AF_INET6:
        return ipaddress.IPv6Address(raw[:16])
    raise NetlinkFormatError(f"inet_diag reply with address family {family}, expected AF_INET or AF_INET6")


#: Request attributes (``enum { INET_DIAG_REQ_NONE, INET_DIAG_REQ_BYTECODE, ... }``):
#: ``INET_DIAG_REQ_BYTECODE`` carries a filter program the kernel runs on each socket of a dump;
#: ``INET_DIAG_REQ_PROTOCOL`` a protocol number above 255 (MPTCP).
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_REQ_PROTOCOL = 3

#: ``struct inet_diag_bc_op { unsigned char code; unsigned char yes; unsigned short no; }``.
_BC_OP = struct.Struct("=BBH")
#: ``INET_DIAG_BC_*`` op codes used here.
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_D_EQ = 12


def encode_dport_filter(ports: Iterable[int]) -> bytes:
    """Bytecode that accepts a socket whose remote port (``dport``) is one of *ports*.

    Built as ``ss`` builds ``dport = a or dport = b ...``: each test is ``D_EQ`` (yes: go on,
    no: skip 4 bytes past it) followed by an op whose ``no`` holds the port; tests are joined by
    ``JMP`` ops that jump over the rest once one matched. Running off the end by exactly 0 bytes
    accepts, by 4 rejects; every jump lands on the path the kernel's audit
    (``inet_diag_bc_audit``) follows. At most 31 ports (``yes``/``no`` jumps are bounded).
    """
    wanted = sorted(set(ports))
    if not wanted or len(wanted) > 31:
        raise ValueError(f"a port filter needs 1 to 31 ports, got {len(wanted)}")
    code = b""
    for port in reversed(wanted):
        test = _BC_OP.pack(INET_DIAG_BC_D_EQ, 8, 12) + _BC_OP.pack(0, 0, port)
        code = test + _BC_OP.pack(INET_DIAG_BC_JMP, 4, len(code) + 4) + code if code else test
    return code


def encode_inet_diag_req_v2(
    *,
    sdiag_family: int,
    idiag_states: int,
    sockid: InetDiagSockId | None = None,
    idiag_ext: int = 0,
    protocol: int = socket.IPPROTO_TCP,
    bytecode: bytes | None = None,
) -> bytes:
    """``struct inet_diag_req_v2`` (``sdiag_protocol = IPPROTO_TCP`` unless *protocol* says
    otherwise; protocols above 255 go in an ``INET_DIAG_REQ_PROTOCOL`` attribute).

    *sockid* None gives an all-zero id (what a dump wants); an exact lookup or a destroy passes
    the socket's id. *bytecode* (see :func:`encode_dport_filter`) filters a dump in the kernel.
    """
    sid = sockid.encode() if sockid is not None else b"\0" * _SOCKID_LEN
    attrs = encode_nlattr(INET_DIAG_REQ_BYTECODE, bytecode) if bytecode else b""
    if protocol <= 0xFF:
        return _REQ_V2_HEAD.pack(sdiag_family, protocol, idiag_ext, idiag_states) + sid + attrs
    head = _REQ_V2_HEAD.pack(sdiag_family, socket.IPPROTO_TCP, idiag_ext, idiag_states)
    return head + sid + attrs + encode_nlattr(INET_DIAG_REQ_PROTOCOL, struct.pack("=I", protocol))


#: Where ``struct inet_diag_sockid`` sits in a reply (``struct inet_diag_msg``) and a request.
MSG_SOCKID = slice(4, 4 + _SOCKID_LEN)
_EXACT_HEADS: dict[int, bytes] = {
    int(family): _REQ_V2_HEAD.pack(family, socket.IPPROTO_TCP, 0, 0xFFFF_FFFF)
    for family in (socket.AF_INET, socket.AF_INET6)
}


def exact_request(family: int, sockid: bytes) -> bytes:
    """The ``inet_diag_req_v2`` for one TCP socket (any state) named by the 48 wire bytes of its
    ``inet_diag_sockid`` (as a reply carries them): the lookup or destroy request of the hot path."""
    return _EXACT_HEADS[family] + sockid


#: The same request packed in one go from its parts, per family: ``pack(family, IPPROTO_TCP, 0,
#: ALL, local port, remote port, local address bytes, remote address bytes, 0, ALL, ALL)`` with
#: ``ALL = 0xFFFF_FFFF`` (any state, any cookie; interface 0). Every field but the ports and the
#: addresses reads the same in either byte order, so the struct can be network order throughout,
#: and the ports are plain integers (the bytes straight from a TCP header: see
#: :func:`halfclose.reap.nflog.fin_lookup_requests`). IPv4 addresses are padded to 16 bytes.
EXACT_REQUEST: dict[int, struct.Struct] = {
    int(socket.AF_INET): struct.Struct("!BBBxIHH4s12x4s12xIII"),
    int(socket.AF_INET6): struct.Struct("!BBBxIHH16s16sIII"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpInfo:
    """``struct tcp_info`` (``linux/tcp.h``), decoded by received length: absent fields are None.

    Times are in microseconds (``tcpi_rto``, ``tcpi_rtt``) or milliseconds (``tcpi_last_*``), as
    the kernel reports them.
    """

    tcpi_state: int | None = None
    tcpi_ca_state: int | None = None
    tcpi_retransmits: int | None = None
    tcpi_probes: int | None = None
    tcpi_backoff: int | None = None
    tcpi_options: int | None = None
    tcpi_snd_wscale: int | None = None
    tcpi_rcv_wscale: int | None = None
    tcpi_rto: int | None = None
    tcpi_ato: int | None = None
    tcpi_snd_mss: int | None = None
    tcpi_rcv_mss: int | None = None
    tcpi_unacked: int | None = None
    tcpi_sacked: int | None = None
    tcpi_lost: int | None = None
    tcpi_retrans: int | None = None
    tcpi_fackets: int | None = None
    tcpi_last_data_sent: int | None = None
    tcpi_last_ack_sent: int | None = None
    tcpi_last_data_recv: int | None = None
    tcpi_last_ack_recv: int | None = None
    tcpi_pmtu: int | None = None
    tcpi_rcv_ssthresh: int | None = None
    tcpi_rtt: int | None = None
    tcpi_rttvar: int | None = None
    tcpi_snd_ssthresh: int | None = None
    tcpi_snd_cwnd: int | None = None
    tcpi_advmss: int | None = None
    tcpi_reordering: int | None = None
    tcpi_rcv_rtt: int | None = None
    tcpi_rcv_space: int | None = None
    tcpi_total_retrans: int | None = None
    tcpi_pacing_rate: int | None = None
    tcpi_max_pacing_rate: int | None = None
    tcpi_bytes_acked: int | None = None
    tcpi_bytes_received: int | None = None
    tcpi_segs_out: int | None = None
    tcpi_segs_in: int | None = None
    tcpi_notsent_bytes: int | None = None
    tcpi_min_rtt: int | None = None
    tcpi_data_segs_in: int | None = None
    tcpi_data_segs_out: int | None = None
    tcpi_delivery_rate: int | None = None
    tcpi_busy_time: int | None = None
    tcpi_rwnd_limited: int | None = None
    tcpi_sndbuf_limited: int | None = None
    tcpi_delivered: int | None = None
    tcpi_delivered_ce: int | None = None
    tcpi_bytes_sent: int | None = None
    tcpi_bytes_retrans: int | None = None
    tcpi_dsack_dups: int | None = None
    tcpi_reord_seen: int | None = None
    tcpi_rcv_ooopack: int | None = None
    tcpi_snd_wnd: int | None = None


#: Wire layout of ``struct tcp_info`` after its first 8 single-byte fields, in order. Every
#: field is naturally aligned at its offset, so the layout has no padding.
_TCP_INFO_WORDS: tuple[tuple[str, str], ...] = (
    *((name, "I") for name in (
        "tcpi_rto", "tcpi_ato", "tcpi_snd_mss", "tcpi_rcv_mss",
        "tcpi_unacked", "tcpi_sacked", "tcpi_lost", "tcpi_retrans", "tcpi_fackets",
        "tcpi_last_data_sent", "tcpi_last_ack_sent", "tcpi_last_data_recv", "tcpi_last_ack_recv",
        "tcpi_pmtu", "tcpi_rcv_ssthresh", "tcpi_rtt", "tcpi_rttvar", "tcpi_snd_ssthresh",
        "tcpi_snd_cwnd", "tcpi_advmss", "tcpi_reordering", "tcpi_rcv_rtt", "tcpi_rcv_space",
        "tcpi_total_retrans",
    )),
    ("tcpi_pacing_rate", "Q"), ("tcpi_max_pacing_rate", "Q"),
    ("tcpi_bytes_acked", "Q"), ("tcpi_bytes_received", "Q"),
    ("tcpi_segs_out", "I"), ("tcpi_segs_in", "I"),
    ("tcpi_notsent_bytes", "I"), ("tcpi_min_rtt", "I"),
    ("tcpi_data_segs_in", "I"), ("tcpi_data_segs_out", "I"),
    ("tcpi_delivery_rate", "Q"),
    ("tcpi_busy_time", "Q"), ("tcpi_rwnd_limited", "Q"), ("tcpi_sndbuf_limited", "Q"),
    ("tcpi_delivered", "I"), ("tcpi_delivered_ce", "I"),
    ("tcpi_bytes_sent", "Q"), ("tcpi_bytes_retrans", "Q"),
    ("tcpi_dsack_dups", "I"), ("tcpi_reord_seen", "I"),
    ("tcpi_rcv_ooopack", "I"), ("tcpi_snd_wnd", "I"),
)  # fmt: skip


def _word_offsets() -> tuple[tuple[str, str, int], ...]:
    out = []
    offset = 8
    for name, fmt in _TCP_INFO_WORDS:
        size = struct.calcsize("=" + fmt)
        assert offset % size == 0, name
        out.append((name, fmt, offset))
        offset += size
    return tuple(out)


_TCP_INFO_LAYOUT = _word_offsets()
#: Bytes of ``struct tcp_info`` this module knows (up to ``tcpi_snd_wnd``).
TCP_INFO_KNOWN_LEN = _TCP_INFO_LAYOUT[-1][2] + 4
assert {f.name for f in fields(TcpInfo)} >= {n for n, _, _ in _TCP_INFO_LAYOUT}


def decode_tcp_info(data: bytes) -> TcpInfo:
    """Decode ``struct tcp_info`` from however many bytes the kernel sent."""
    values: dict[str, int] = {}
    head = ("tcpi_state", "tcpi_ca_state", "tcpi_retransmits", "tcpi_probes", "tcpi_backoff", "tcpi_options")
    for i, name in enumerate(head):
        if len(data) > i:
            values[name] = data[i]
    if len(data) > 6:
        # __u8 tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4; (GCC allocates bit-fields from the
        # least significant bit on little-endian targets, from the most significant on big-endian).
        byte = data[6]
        low, high = byte & 0x0F, byte >> 4
        snd, rcv = (low, high) if struct.pack("=H", 1)[0] == 1 else (high, low)
        values["tcpi_snd_wscale"] = snd
        values["tcpi_rcv_wscale"] = rcv
    for name, fmt, offset in _TCP_INFO_LAYOUT:
        size = struct.calcsize("=" + fmt)
        if offset + size > len(data):
            break
        (values[name],) = struct.unpack_from("=" + fmt, data, offset)
    return TcpInfo(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class InetDiagMsg:
    """One socket from a sock_diag reply (``struct inet_diag_msg`` plus decoded attributes).

    ``id.src``/``id.sport`` are the local end, ``id.dst``/``id.dport`` the remote end.
    ``idiag_rqueue`` is the unread receive queue in bytes (for non-listening sockets),
    ``idiag_wqueue`` the unacknowledged send queue, ``idiag_expires`` the running timer in ms.
    """

    idiag_family: int
    idiag_state: int
    idiag_timer: int
    idiag_retrans: int
    id: InetDiagSockId
    idiag_expires: int
    idiag_rqueue: int
    idiag_wqueue: int
    idiag_uid: int
    idiag_inode: int
    #: ``INET_DIAG_INFO``, when requested and sent.
    info: TcpInfo | None = None
    #: ``INET_DIAG_SHUTDOWN`` (bit 0: receive side shut, bit 1: send side shut), when sent.
    shutdown: int | None = None

    @property
    def state(self) -> TcpState | None:
        """``idiag_state`` as a :class:`TcpState`, None for a value this module does not know."""
        try:
            return TcpState(self.idiag_state)
        except ValueError:
            return None


_INFO = int(InetDiagAttr.INET_DIAG_INFO)
_SHUTDOWN = int(InetDiagAttr.INET_DIAG_SHUTDOWN)


def decode_inet_diag_msg(payload: bytes) -> InetDiagMsg:
    """Decode the payload of a ``SOCK_DIAG_BY_FAMILY`` reply message (after ``nlmsghdr``).

    Raises:
        NetlinkFormatError: the payload is shorter than ``struct inet_diag_msg`` or names an
            unknown address family.
    """
    if len(payload) < INET_DIAG_MSG_LEN:
        raise NetlinkFormatError(
            f"inet_diag_msg of {len(payload)} bytes, need {INET_DIAG_MSG_LEN}"
        )
    family, state, timer, retrans = _MSG_HEAD.unpack_from(payload)
    sid = InetDiagSockId.decode(family, payload, _MSG_HEAD.size)
    expires, rqueue, wqueue, uid, inode = _MSG_TAIL.unpack_from(payload, _MSG_HEAD.size + _SOCKID_LEN)
    info: TcpInfo | None = None
    shutdown: int | None = None
    # Walk the attributes without building objects for the ones not wanted: a dump of 10,000
    # sockets carries several attributes per socket (this loop is the watch view's hot spot).
    offset, end = INET_DIAG_MSG_LEN, len(payload)
    while end - offset >= _NLA.size:
        length, ntype = _NLA.unpack_from(payload, offset)
        if length < _NLA.size or offset + length > end:
            list(iter_nlattrs(payload, offset))  # raises NetlinkFormatError with the details
        ntype &= 0x3FFF
        if ntype == _INFO:
            info = decode_tcp_info(payload[offset + _NLA.size : offset + length])
        elif ntype == _SHUTDOWN and length > _NLA.size:
            shutdown = payload[offset + _NLA.size]
        offset += (length + 3) & ~3
    return InetDiagMsg(
        idiag_family=family,
        idiag_state=state,
        idiag_timer=timer,
        idiag_retrans=retrans,
        id=sid,
        idiag_expires=expires,
        idiag_rqueue=rqueue,
        idiag_wqueue=wqueue,
        idiag_uid=uid,
        idiag_inode=inode,
        info=info,
        shutdown=shutdown,
    )
