"""Looking at an idle socket before reuse: has the server closed it, and when?

Two independent looks, both non-blocking:

* the socket's TCP state from ``getsockopt(TCP_INFO)`` (Linux): ``CLOSE_WAIT`` means the server's
  FIN arrived. ``tcpi_last_ack_recv`` then tells how long ago (the FIN is the last segment that
  carried an ACK), which gives the idle age at which the server closed, to the kernel's tick.
* a peek, ``recv(1, MSG_PEEK | MSG_DONTWAIT)``: ``b""`` is a FIN, bytes are something the server
  sent unasked (a 408), ``EAGAIN`` is a healthy idle connection, any other error is a dead one.
  TLS sockets cannot be peeked at the TLS layer; for them a zero-timeout poll stands in.

``struct tcp_info`` grows with kernel versions: it is decoded by the length the kernel returned,
and fields it did not return are None.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import select
import socket
import ssl
import struct
import sys
from dataclasses import dataclass

__all__ = ["TCP_CLOSE_WAIT", "Probe", "SocketState", "TcpInfo", "is_established", "probe", "read_tcp_info"]

#: ``TCP_CLOSE_WAIT`` in the kernel's ``enum`` of TCP states (include/net/tcp_states.h).
TCP_CLOSE_WAIT = 8
_TCP_ESTABLISHED = 1

# Offsets in struct tcp_info (include/uapi/linux/tcp.h).
_OFF_LAST_ACK_RECV = 56
_OFF_RTT = 68
_TCP_INFO_LEN = 104


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpInfo:
    """The fields of ``struct tcp_info`` the guard uses.

    Attributes:
        state: ``tcpi_state`` (1 ESTABLISHED, 8 CLOSE_WAIT, ...).
        last_ack_recv: seconds since the last segment that carried an ACK arrived, or None.
        rtt: the smoothed RTT in seconds (``tcpi_rtt``), or None.
        options: ``tcpi_options`` (``0x20``: the SYN's data was acknowledged), or None.
        fastopen_client_fail: ``tcpi_fastopen_client_fail`` (Linux >= 5.5), or None.
    """

    state: int
    last_ack_recv: float | None
    rtt: float | None
    options: int | None = None
    fastopen_client_fail: int | None = None

    def is_close_wait(self) -> bool:
        """True when the server's FIN has arrived and the socket waits for our close."""
        return self.state == TCP_CLOSE_WAIT

    @classmethod
    def decode(cls, raw: bytes) -> TcpInfo:
        """Decode the bytes ``getsockopt(IPPROTO_TCP, TCP_INFO)`` returned, by their length.

        Example:
            >>> TcpInfo.decode(bytes([8]) + bytes(71)).state
            8
        """
        if not raw:
            raise ValueError("empty tcp_info")
        ack = struct.unpack_from("=I", raw, _OFF_LAST_ACK_RECV)[0] / 1e3 if len(raw) >= 60 else None
        rtt = struct.unpack_from("=I", raw, _OFF_RTT)[0] / 1e6 if len(raw) >= 72 else None
        options = raw[5] if len(raw) > 5 else None
        fail = (raw[7] >> 1) & 0x3 if len(raw) > 7 else None
        return cls(state=raw[0], last_ack_recv=ack, rtt=rtt, options=options, fastopen_client_fail=fail)


def read_tcp_info(sock: socket.socket) -> TcpInfo | None:
    """``TCP_INFO`` of *sock*, or None where the platform has none or the socket is not TCP."""
    opt = getattr(socket, "TCP_INFO", None)
    if opt is None or not sys.platform.startswith("linux"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, opt, _TCP_INFO_LEN)
    except (OSError, ValueError):
        return None
    return TcpInfo.decode(raw) if raw else None


_TCP_INFO_OPT = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None


def is_established(sock: socket.socket) -> bool:
    """Whether *sock*'s TCP state is ESTABLISHED (one ``getsockopt`` of one byte); False if unknown.

    The cheap look for a connection whose bytes are not to be peeked at: anything but True calls
    for :func:`probe`.
    """
    if _TCP_INFO_OPT is None:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO_OPT, 1) == b"\x01"
    except (OSError, ValueError):
        return False


@enum.unique
class SocketState(enum.Enum):
    """What an idle keep-alive socket looks like just before reuse."""

    #: Nothing to read, TCP established: fit for the next request.
    IDLE = "idle"
    #: The server's FIN arrived (CLOSE_WAIT, or a peek returned end of stream).
    PEER_CLOSED = "peer-closed"
    #: The server sent bytes nobody asked for (a 408 before closing, say).
    UNSOLICITED = "unsolicited"
    #: The socket is broken (reset, closed locally).
    BROKEN = "broken"

    def is_reusable(self) -> bool:
        """True only for :attr:`IDLE`."""
        return self is SocketState.IDLE


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """The outcome of :func:`probe`.

    Attributes:
        state: what the socket looks like.
        closed_ago: for :attr:`SocketState.PEER_CLOSED` seen through TCP_INFO, how many seconds
            ago the FIN arrived; otherwise None.
        rtt: the kernel's smoothed RTT estimate in seconds, when known.
    """

    state: SocketState
    closed_ago: float | None = None
    rtt: float | None = None


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _peek(sock: socket.socket, tls: bool) -> SocketState:
    try:
        if not _readable(sock):
            return SocketState.IDLE
    except (OSError, ValueError):
        return SocketState.BROKEN
    if tls:
        # Readable with nothing owed: end of stream, a close_notify, or an alert. Never reusable.
        return SocketState.PEER_CLOSED
    # A socket with a timeout would wait in recv() despite MSG_DONTWAIT: peek with it non-blocking.
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return SocketState.IDLE
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return SocketState.IDLE
        return SocketState.BROKEN
    except ValueError:
        return SocketState.BROKEN
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)
    return SocketState.PEER_CLOSED if data == b"" else SocketState.UNSOLICITED


def probe(sock: socket.socket, *, tls: bool | None = None, peek: bool = True) -> Probe:
    """Look at idle *sock* without blocking and without consuming anything.

    *tls* says that TLS runs over the socket (by default: whether it is an ``ssl.SSLSocket``);
    then any readable byte, which would be a TLS record, means the connection is done.
    *peek* False looks at the TCP state only (HTTP/2, where an idle connection may carry frames
    nobody has read yet, such as a PING or SETTINGS).

    Example:
        >>> a, b = socket.socketpair()
        >>> probe(a).state
        <SocketState.IDLE: 'idle'>
        >>> b.close()
        >>> probe(a).state
        <SocketState.PEER_CLOSED: 'peer-closed'>
        >>> a.close()
    """
    if sock.fileno() < 0:
        return Probe(state=SocketState.BROKEN)
    info = read_tcp_info(sock)
    rtt = info.rtt if info is not None else None
    if info is not None and info.is_close_wait():
        return Probe(state=SocketState.PEER_CLOSED, closed_ago=info.last_ack_recv, rtt=rtt)
    if info is not None and info.state != _TCP_ESTABLISHED:
        return Probe(state=SocketState.BROKEN, rtt=rtt)
    if not peek and info is not None:
        return Probe(state=SocketState.IDLE, rtt=rtt)
    return Probe(state=_peek(sock, isinstance(sock, ssl.SSLSocket) if tls is None else tls), rtt=rtt)
