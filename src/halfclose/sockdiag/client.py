"""The sock_diag adapter: one ``NETLINK_SOCK_DIAG`` socket, dump, exact lookup and destroy.

All encoding and decoding lives in :mod:`halfclose.sockdiag.wire` and
:mod:`halfclose.sockdiag.netlink`; this module only sends requests and reads replies. Every
request gets its own sequence number and the reply is read to its end (``NLMSG_DONE`` or the
``NLMSG_ERROR`` acknowledgement), so that a later request never reads an earlier one's leftovers.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from halfclose.errors import EnvironmentProblem
from halfclose.sockdiag.netlink import (
    NlFlag,
    NlMsgType,
    decode_nlmsgerr,
    encode_nlmsg,
    iter_nlmsgs,
)
from halfclose.sockdiag.nsenter import netns_entered
from halfclose.sockdiag.wire import (
    SOCK_DESTROY,
    SOCK_DIAG_BY_FAMILY,
    InetDiagAttr,
    InetDiagMsg,
    InetDiagSockId,
    decode_inet_diag_msg,
    encode_dport_filter,
    encode_inet_diag_req_v2,
    exact_request,
)

__all__ = [
    "NETLINK_SOCK_DIAG",
    "DestroyOutcome",
    "DestroyResult",
    "SockDiag",
    "SockDiagError",
    "destroy_result",
    "has_cap_net_admin",
]

CAP_NET_ADMIN = 12


def has_cap_net_admin() -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set (``CapEff`` in /proc)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return os.geteuid() == 0

NETLINK_SOCK_DIAG = 4
_RECV_BUFSIZE = 64 * 1024
#: Receive buffer asked for (``SO_RCVBUFFORCE`` with CAP_NET_ADMIN, else ``SO_RCVBUF``, which
#: ``net.core.rmem_max`` caps): the answers to one request datagram wait there until read.
_RCVBUF = 1 << 20
#: Receive-buffer bytes one answer may take (an exact lookup's reply skb is about 1.1 to 1.6 KB
#: of ``truesize``): a request datagram carries at most ``SO_RCVBUF // this`` requests, so that
#: the kernel never has to drop an answer (which it reports as ENOBUFS on the next read).
_ANSWER_ROOM = 2048
_SO_RCVBUFFORCE = 33
_NLM_F_MULTI = int(NlFlag.NLM_F_MULTI)
_NLMSG_ERROR = int(NlMsgType.NLMSG_ERROR)
_NLMSG_DONE = int(NlMsgType.NLMSG_DONE)
_NLMSG_OVERRUN = int(NlMsgType.NLMSG_OVERRUN)
_REQUEST = int(NlFlag.NLM_F_REQUEST)
_REQUEST_ACK = int(NlFlag.NLM_F_REQUEST | NlFlag.NLM_F_ACK)
_NLMSGHDR = struct.Struct("=IHHII")
_ERRNO = struct.Struct("=i")


class SockDiagError(EnvironmentProblem):
    """The kernel refused a sock_diag request; ``errno`` says why."""

    def __init__(self, message: str, errno_: int) -> None:
        super().__init__(message)
        self.errno = errno_


class DestroyOutcome(enum.Enum):
    """What a SOCK_DESTROY request achieved."""

    #: The kernel aborted the socket (a CLOSE_WAIT socket sends RST to its peer).
    DESTROYED = "destroyed"
    #: No socket with that 4-tuple (ENOENT), or another socket now holds it (ESTALE, cookie
    #: mismatch): nothing was touched. A normal outcome for sockets closed in the meantime.
    VANISHED = "vanished"
    #: Refused for another reason (only from :meth:`SockDiag.destroy_many`; ``errno`` says why).
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class DestroyResult:
    """Outcome of one destroy request and the errno behind it (0 when destroyed)."""

    outcome: DestroyOutcome
    errno: int


class SockDiag:
    """A sock_diag netlink socket for TCP, optionally created inside network namespace *netns*.

    Dumps and lookups need no privilege; destroy needs CAP_NET_ADMIN in the socket's namespace.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        with netns_entered(netns):
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
            )
        self._sock.bind((0, 0))
        self._seq = 0
        self._buf = bytearray(_RECV_BUFSIZE)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        #: Most requests sent in one datagram (their answers fit the receive buffer).
        self.per_datagram = max(1, self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // _ANSWER_ROOM)

    def close(self) -> None:
        """Close the netlink socket."""
        self._sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The netlink socket's descriptor."""
        return self._sock.fileno()

    def _recv(self, flags: int = 0) -> int:
        """Read one datagram into the buffer; its length.

        Raises:
            SockDiagError: ENOBUFS, the kernel dropped answers (the buffer was full).
        """
        try:
            return self._sock.recv_into(self._buf, 0, flags)
        except OSError as exc:
            raise _receive_error(exc) from None

    def _send(self, nlmsg_type: int, flags: int, payload: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFF_FFFF
        self._sock.send(encode_nlmsg(nlmsg_type, flags, self._seq, payload))
        return self._seq

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(type, payload)`` of the messages answering *seq* until the request is done.

        NLMSG_ERROR with an error raises :class:`SockDiagError`; NLMSG_ERROR 0 (an ACK) and
        NLMSG_DONE end the reply.
        """
        while True:
            n = self._recv()
            for msg in iter_nlmsgs(memoryview(self._buf)[:n].tobytes()):
                if msg.nlmsg_seq != seq:
                    continue  # a straggler from an abandoned request
                mtype = msg.nlmsg_type
                if mtype == _NLMSG_ERROR:
                    err = decode_nlmsgerr(msg.payload)
                    if err.error:
                        code = -err.error
                        raise SockDiagError(f"sock_diag: {os.strerror(code)}", code)
                    return
                if mtype == _NLMSG_DONE:
                    if len(msg.payload) >= 4:
                        done = decode_nlmsgerr(msg.payload)
                        if done.error:
                            code = -done.error
                            raise SockDiagError(f"sock_diag dump: {os.strerror(code)}", code)
                    return
                if mtype == _NLMSG_OVERRUN:
                    raise SockDiagError("sock_diag: netlink overrun, data lost", errno.ENOBUFS)
                yield msg.nlmsg_type, msg.payload
                if not msg.nlmsg_flags & _NLM_F_MULTI:
                    return

    def dump(
        self,
        *,
        states: int,
        families: Iterable[int] = (socket.AF_INET, socket.AF_INET6),
        info: bool = False,
        dports: Iterable[int] = (),
    ) -> Iterator[InetDiagMsg]:
        """Yield every TCP socket of *families* whose state bit is set in *states*.

        Read each dump to its end (a partly consumed iterator leaves the rest to be skipped by
        the next request). *info* asks for ``INET_DIAG_INFO`` (``tcp_info``). *dports* (remote
        ports) are filtered in the kernel by an inet_diag bytecode program.
        """
        ext = 1 << (InetDiagAttr.INET_DIAG_INFO - 1) if info else 0
        ports = tuple(dports)
        bytecode = encode_dport_filter(ports) if ports else None
        for family in families:
            req = encode_inet_diag_req_v2(sdiag_family=family, idiag_states=states, idiag_ext=ext,
                                          bytecode=bytecode)
            seq = self._send(SOCK_DIAG_BY_FAMILY, NlFlag.NLM_F_REQUEST | NlFlag.NLM_F_DUMP, req)
            for mtype, payload in self._replies(seq):
                if mtype == SOCK_DIAG_BY_FAMILY:
                    yield decode_inet_diag_msg(payload)

    def lookup(self, sockid: InetDiagSockId, *, info: bool = False) -> InetDiagMsg | None:
        """The socket with exactly this 4-tuple (and cookie, unless NOCOOKIE), or None if none.

        *sockid* names the local end in ``src``/``sport`` and the remote end in ``dst``/``dport``.
        """
        ext = 1 << (InetDiagAttr.INET_DIAG_INFO - 1) if info else 0
        req = encode_inet_diag_req_v2(
            sdiag_family=sockid.family, idiag_states=0xFFFF_FFFF, sockid=sockid, idiag_ext=ext
        )
        seq = self._send(SOCK_DIAG_BY_FAMILY, NlFlag.NLM_F_REQUEST, req)
        found: InetDiagMsg | None = None
        try:
            for mtype, payload in self._replies(seq):
                if mtype == SOCK_DIAG_BY_FAMILY:
                    found = decode_inet_diag_msg(payload)
        except SockDiagError as exc:
            if exc.errno in (errno.ENOENT, errno.ESTALE):
                return None
            raise
        return found

    def _batch(self, nlmsg_type: int, flags: int, payloads: Sequence[bytes]) -> list[tuple[int, bytes]]:
        """Send one request per payload in a single datagram (or as few as the receive buffer
        allows, :attr:`per_datagram` each) and return, in request order, the one answer each
        gets: ``(type, payload)`` of a reply message, or ``(NLMSG_ERROR, errno as 4 little-endian
        bytes)``. The kernel handles the requests of one datagram in turn, before ``send``
        returns: the answers are read without waiting (an answer missing was dropped)."""
        if len(payloads) == 1:
            return [self._one(nlmsg_type, flags, payloads[0])]
        step = self.per_datagram
        if len(payloads) > step:
            out: list[tuple[int, bytes]] = []
            for start in range(0, len(payloads), step):
                out += self._batch(nlmsg_type, flags, payloads[start : start + step])
            return out
        first = self._seq + 1
        want = len(payloads)
        parts = []
        for i, payload in enumerate(payloads):
            parts.append(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload), nlmsg_type, flags,
                                        (first + i) & 0xFFFF_FFFF, 0))
            parts.append(payload + b"\0" * (-len(payload) & 3))
        self._seq = (first + want - 1) & 0xFFFF_FFFF
        self._sock.send(b"".join(parts))
        answers: dict[int, tuple[int, bytes]] = {}
        buf = self._buf
        while len(answers) < want:
            n = self._recv(socket.MSG_DONTWAIT)
            data = bytes(buf[:n])
            offset = 0
            while n - offset >= _NLMSGHDR.size:
                length, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size or offset + length > n:
                    raise SockDiagError(f"sock_diag: reply cut off at byte {offset}", errno.EPROTO)
                index = (seq - first) & 0xFFFF_FFFF
                if index < want and index not in answers:  # else a straggler of an abandoned request
                    if mtype == _NLMSG_OVERRUN:
                        raise SockDiagError("sock_diag: netlink overrun, data lost", errno.ENOBUFS)
                    if mtype == _NLMSG_ERROR:
                        code = -_ERRNO.unpack_from(data, offset + _NLMSGHDR.size)[0]
                        answers[index] = (_NLMSG_ERROR, code.to_bytes(4, "little"))
                    else:
                        answers[index] = (mtype, data[offset + _NLMSGHDR.size : offset + length])
                offset += (length + 3) & ~3
        return [answers[i] for i in range(want)]

    def _one(self, nlmsg_type: int, flags: int, payload: bytes) -> tuple[int, bytes]:
        """:meth:`_batch` for a single request (the common case at a steady rate of FINs)."""
        seq = self._seq = (self._seq + 1) & 0xFFFF_FFFF
        sock, buf = self._sock, self._buf
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload), nlmsg_type, flags, seq, 0)
                  + payload + b"\0" * (-len(payload) & 3))
        while True:
            try:
                n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)  # _recv, one call less on the hot path
            except OSError as exc:
                raise _receive_error(exc) from None
            offset = 0
            while n - offset >= _NLMSGHDR.size:
                length, mtype, _flags, got, _pid = _NLMSGHDR.unpack_from(buf, offset)
                if length < _NLMSGHDR.size or offset + length > n:
                    raise SockDiagError(f"sock_diag: reply cut off at byte {offset}", errno.EPROTO)
                if got == seq:
                    if mtype == _NLMSG_ERROR:
                        code = -_ERRNO.unpack_from(buf, offset + _NLMSGHDR.size)[0]
                        return _NLMSG_ERROR, code.to_bytes(4, "little")
                    if mtype == _NLMSG_OVERRUN:
                        raise SockDiagError("sock_diag: netlink overrun, data lost", errno.ENOBUFS)
                    return mtype, bytes(buf[offset + _NLMSGHDR.size : offset + length])
                offset += (length + 3) & ~3

    def lookup_raw(self, requests: Sequence[bytes]) -> list[bytes | None]:
        """Exact lookups (``inet_diag_req_v2`` payloads, see :func:`~.wire.exact_request`) sent in
        one datagram; the raw ``inet_diag_msg`` reply of each, or None when there is no such
        socket (ENOENT, or ESTALE for a cookie that no longer matches).

        Raises:
            SockDiagError: the kernel refused a lookup for another reason.
        """
        if not requests:
            return []
        out: list[bytes | None] = []
        for mtype, payload in self._batch(SOCK_DIAG_BY_FAMILY, _REQUEST, requests):
            if mtype == _NLMSG_ERROR:
                code = int.from_bytes(payload, "little")
                if code not in (errno.ENOENT, errno.ESTALE):
                    raise SockDiagError(f"sock_diag: {os.strerror(code)}", code)
                out.append(None)
            else:
                out.append(payload)
        return out

    def lookup_one(self, request: bytes) -> bytes | None:
        """:meth:`lookup_raw` for one request."""
        mtype, payload = self._one(SOCK_DIAG_BY_FAMILY, _REQUEST, request)
        if mtype != _NLMSG_ERROR:
            return payload
        code = int.from_bytes(payload, "little")
        if code not in (errno.ENOENT, errno.ESTALE):
            raise SockDiagError(f"sock_diag: {os.strerror(code)}", code)
        return None

    def destroy_raw(self, requests: Sequence[bytes]) -> list[int]:
        """SOCK_DESTROY requests (``inet_diag_req_v2`` payloads) sent in one datagram; the errno
        each got (0: destroyed)."""
        if len(requests) == 1:
            mtype, payload = self._one(SOCK_DESTROY, _REQUEST_ACK, requests[0])
            return [int.from_bytes(payload[:4], "little") if mtype == _NLMSG_ERROR else 0]
        if not requests:
            return []
        return [
            int.from_bytes(payload[:4], "little") if mtype == _NLMSG_ERROR else 0
            for mtype, payload in self._batch(SOCK_DESTROY, _REQUEST_ACK, requests)
        ]

    def lookup_many(self, sockids: Sequence[InetDiagSockId]) -> list[InetDiagMsg | None]:
        """:meth:`lookup` for many sockets with one request datagram (and one read, mostly).

        Raises:
            SockDiagError: the kernel refused a lookup for another reason than "no such socket".
        """
        found = self.lookup_raw([exact_request(s.family, s.encode()) for s in sockids])
        return [None if raw is None else decode_inet_diag_msg(raw) for raw in found]

    def destroy_many(self, sockids: Sequence[InetDiagSockId]) -> list[DestroyResult]:
        """:meth:`destroy` for many sockets with one request datagram; results in order.

        Another refusal than those :meth:`destroy` raises as :class:`EnvironmentProblem` (EPERM,
        EOPNOTSUPP) gives a ``FAILED`` result for that socket; the rest of the batch is handled.
        """
        return [destroy_result(code) for code in self.destroy_raw([exact_request(s.family, s.encode())
                                                                    for s in sockids])]

    def destroy(self, sockid: InetDiagSockId, *, protocol: int = socket.IPPROTO_TCP) -> DestroyResult:
        """Abort the socket *sockid* names (SOCK_DESTROY); the kernel checks the cookie.

        Returns DESTROYED, or VANISHED when the socket is gone (ENOENT) or the 4-tuple now
        belongs to another socket (ESTALE).

        *protocol* is TCP unless another inet_diag protocol is meant (MPTCP, 262, has no destroy).

        Raises:
            EnvironmentProblem: not permitted (EPERM: needs CAP_NET_ADMIN) or the kernel has no
                SOCK_DESTROY (EOPNOTSUPP: built without CONFIG_INET_DIAG_DESTROY).
            SockDiagError: any other refusal.
        """
        req = encode_inet_diag_req_v2(
            sdiag_family=sockid.family, idiag_states=0xFFFF_FFFF, sockid=sockid, protocol=protocol
        )
        seq = self._send(SOCK_DESTROY, NlFlag.NLM_F_REQUEST | NlFlag.NLM_F_ACK, req)
        try:
            for _ in self._replies(seq):
                pass
        except SockDiagError as exc:
            return _destroy_outcome(exc.errno, protocol)
        return DestroyResult(outcome=DestroyOutcome.DESTROYED, errno=0)


def _receive_error(exc: OSError) -> Exception:
    """What a failed read of the sock_diag socket raises: ENOBUFS (answers dropped because the
    receive buffer was full) as :class:`SockDiagError`, and so EAGAIN from a read that must not
    wait (the kernel answers exact lookups and destroys before ``send`` returns, so a missing
    answer was dropped: once the kernel reported ENOBUFS it drops more without saying so until
    the buffer is read empty); anything else as it came."""
    if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
        return SockDiagError("sock_diag: receive buffer overrun, answers lost", errno.ENOBUFS)
    return exc


def destroy_result(code: int) -> DestroyResult:
    """What a TCP SOCK_DESTROY answer with *code* (0 or an errno) means: DESTROYED, VANISHED
    (ENOENT, ESTALE) or FAILED.

    Raises:
        EnvironmentProblem: not permitted (EPERM) or not supported (EOPNOTSUPP).
    """
    try:
        return _destroy_outcome(code, socket.IPPROTO_TCP)
    except SockDiagError as exc:
        return DestroyResult(outcome=DestroyOutcome.FAILED, errno=exc.errno)


def _destroy_outcome(code: int, protocol: int) -> DestroyResult:
    """What a SOCK_DESTROY answer with *code* (0 or an errno) means; raises for refusals."""
    if code == 0:
        return DestroyResult(outcome=DestroyOutcome.DESTROYED, errno=0)
    if code in (errno.ENOENT, errno.ESTALE):
        return DestroyResult(outcome=DestroyOutcome.VANISHED, errno=code)
    if code in (errno.EPERM, errno.EACCES):
        raise EnvironmentProblem(
            "destroying sockets (SOCK_DESTROY) needs CAP_NET_ADMIN in the socket's network "
            "namespace: run as root"
        )
    if code == errno.EOPNOTSUPP:
        raise EnvironmentProblem(
            f"this kernel cannot destroy protocol {protocol} sockets (SOCK_DESTROY answered "
            "EOPNOTSUPP; for TCP that means a kernel built without CONFIG_INET_DIAG_DESTROY): "
            "use the netfilter fix instead"
        )
    raise SockDiagError(f"sock_diag: {os.strerror(code)}", code)
