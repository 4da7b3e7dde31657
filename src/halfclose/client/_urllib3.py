"""urllib3 integration: connection classes, pools and a PoolManager that use a :class:`Guard`.

What each piece adds to urllib3:

* :class:`GuardedHTTPConnection` / :class:`GuardedHTTPSConnection`: connect through the guard's
  DNS cache (the TLS SNI and the Host header keep the name); before reuse, the guard's look at the
  socket replaces urllib3's readability poll (urllib3 asks ``is_connected`` exactly when it takes
  a connection from its pool); count the bytes each request wrote; and, when a reused connection
  fails before any response byte, send the request once more on a new socket if the retry rule
  allows it (otherwise the original error goes up unchanged).
* the pools stamp the moment a connection goes back to the pool, which is where its idle age
  starts.
"""

from __future__ import annotations

import contextlib
import errno
import io
import socket
import ssl
import sys
import typing
from dataclasses import dataclass

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.response import HTTPResponse

from halfclose.client._dns import DnsError
from halfclose.client._guard import Guard, Origin, guard_from_options
from halfclose.client._policy import IDEMPOTENT_METHODS, has_idempotency_key
from halfclose.client._watch import Watch

if typing.TYPE_CHECKING:
    from urllib3._base_connection import _TYPE_BODY

__all__ = [
    "GuardedHTTPConnection",
    "GuardedHTTPConnectionPool",
    "GuardedHTTPSConnection",
    "GuardedHTTPSConnectionPool",
    "GuardedPoolManager",
    "pool_manager",
]

#: Errors that mean "the connection is gone", as opposed to a slow server (timeouts) or a bad
#: response (a parse error after bytes arrived).
STALE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # ConnectionResetError (RemoteDisconnected), BrokenPipeError, ConnectionAbortedError
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


@dataclass(kw_only=True, slots=True, eq=False)
class _Record:
    """What the guard keeps on one connection: made with it, and reused by each of its exchanges
    (nothing is allocated per request)."""

    #: The connection's registration with the FIN watcher, from its first return to the pool.
    watch: Watch | None = None
    #: When it last went back to its pool (the guard's clock); None while it is out.
    idle_since: float | None = None
    #: Its idle age as the look before reuse measured it.
    checked_idle: float | None = None
    origin: Origin | None = None
    #: ``_dns_host`` when *origin* was made (a new host makes a new origin).
    origin_of: str | None = None
    #: What the first write of a new socket carries may be sent twice (Fast Open allowed).
    replay_safe: bool = False
    fo_pending: bool = False
    fo_check: bool = False
    # The exchange in flight (while *busy*): what a retry sends again, and what it may rely on.
    busy: bool = False
    method: str = ""
    url: str = ""
    body: typing.Any = None
    headers: typing.Mapping[str, str] | None = None
    chunked: bool = False
    preload_content: bool = True
    decode_content: bool = True
    enforce_content_length: bool = True
    reused: bool = False
    idle: float | None = None
    body_pos: int | None = None
    written: int = 0
    retried: bool = False


#: What :meth:`GuardedHTTPConnection.send` writes itself (a tuple: ``bytes | bytearray | ...``
#: written in the call would build a union at each request).
_BUFFERS = (bytes, bytearray, memoryview)


def _replayable(body: object, pos: int | None) -> bool:
    return body is None or isinstance(body, bytes | str | bytearray) or pos is not None


class GuardedHTTPConnection(HTTPConnection):
    """An urllib3 HTTP connection guarded against reuse after the server's FIN.

    Normally made by :class:`GuardedPoolManager`; *hc_guard* is set by the pool. What the guard
    does per reused request is kept to its minimum: one ``epoll_wait(0)`` in place of urllib3's
    readability ``poll``, one record per connection, and the guard's decision inline while
    nothing arrived on the socket and nothing the decision derives from changed.
    """

    hc_guard: Guard | None = None
    hc_scheme: typing.ClassVar[str] = "http"

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        super().__init__(*args, **kwargs)
        self._hc = _Record()

    @property
    def hc_origin(self) -> Origin:
        """The origin this connection serves."""
        r = self._hc
        origin = r.origin
        if origin is None or r.origin_of is not self._dns_host:
            port = self.port or self.default_port
            origin = r.origin = Origin(scheme=self.hc_scheme, host=self.host, port=port)
            r.origin_of = self._dns_host
        return origin

    @property
    def hc_watch(self) -> Watch | None:
        """The connection's registration with the guard's FIN watcher (None before its first
        return to the pool, after its close, or when nothing watches)."""
        return self._hc.watch

    def hc_mark_idle(self) -> None:
        """Note that the connection went back to the pool now (its idle age starts)."""
        guard = self.hc_guard
        if guard is None or self.sock is None:
            return
        r = self._hc
        w = r.watch
        if w is not None and w.retire_version == guard.timeouts_version and w.watcher is not None:
            # Guard.watch_idle(again=w), inline: registered, and its retirement age still holds.
            since = guard.clock()
            if w.watcher.repool(w, since, w.retire_in):
                r.idle_since = since
                return
        w = r.watch = guard.watch_idle(self.hc_origin, self.sock, self.close, again=w)
        r.idle_since = w.since if w is not None else guard.clock()

    # -- connecting through the DNS cache -------------------------------------------------------

    def _new_conn(self) -> socket.socket:
        guard = self.hc_guard
        if guard is None or self.proxy is not None or self._tunnel_host:
            sock = super()._new_conn()
            if guard is not None:
                guard.connected()
            return sock
        r = self._hc
        try:
            timeout = self.timeout if isinstance(self.timeout, int | float) else None
            sock = guard.connect(
                self._dns_host,
                int(self.port or self.default_port),
                timeout=timeout,
                source_address=self.source_address,
                socket_options=list(self.socket_options or []),
                replay_safe=r.replay_safe or self.hc_scheme == "https",  # TLS: the ClientHello
            )
        except DnsError as exc:
            raise NameResolutionError(self.host, self, socket.gaierror(socket.EAI_NONAME, str(exc))) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        sys.audit("http.client.connect", self, self.host, self.port)
        r.fo_pending = r.fo_check = guard.fast_open_used(sock)
        return sock

    # -- the look before reuse ------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        guard = self.hc_guard
        if guard is None:
            return super().is_connected
        r, sock = self._hc, self.sock
        w = r.watch
        if w is not None and w.watcher is not None and not w.watcher.checkout(w):  # Guard.checkout
            return False
        if sock is None:
            return False
        since = r.idle_since
        if since is None:
            return super().is_connected
        idle = r.checked_idle = guard.clock() - since
        if (w is not None and not w.seen and w.limit_version == guard.timeouts_version and idle < w.limit
                and w.active and sock.fileno() == w.fd):
            return True  # Guard.may_reuse's answer while nothing arrived (its limit cached on w)
        origin = r.origin if r.origin is not None and r.origin_of is self._dns_host else self.hc_origin
        return guard.may_reuse(origin, sock, idle=idle, watch=w)

    def close(self) -> None:
        r = self._hc
        w, r.watch = r.watch, None
        if self.hc_guard is not None:
            self.hc_guard.unwatch(w)
        r.idle_since = r.checked_idle = None
        super().close()

    # -- writing, counted -----------------------------------------------------------------------

    def send(self, data: typing.Any) -> None:
        r = self._hc
        if not r.busy or not isinstance(data, _BUFFERS):
            super().send(data)
            if r.busy:
                r.written += 1
            return
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        sys.audit("http.client.send", self, data)
        if not r.fo_pending:
            sent = self.sock.send(data)
            r.written += sent
            if sent == len(data):
                return
            data = data[sent:]
        view = memoryview(data).cast("B")
        while view:
            sent = self._hc_first_send(view) if r.fo_pending else self.sock.send(view)
            r.written += sent
            view = view[sent:]

    def _hc_first_send(self, view: memoryview) -> int:
        """The first write of a Fast Open socket, which is also its connect: on failure, connect plainly."""
        self._hc.fo_pending = False
        assert self.sock is not None and self.hc_guard is not None
        try:
            return self.sock.send(view)
        except TimeoutError as exc:  # the handshake did not complete: a connect timeout, as without Fast Open
            self.sock.close()
            self.sock = None
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from exc
        except OSError:
            with contextlib.suppress(OSError, IndexError):
                peer = self.sock.getpeername()
                self.hc_guard.fast_open_disable((str(peer[0]), int(peer[1])))
            self.sock.close()
            self.sock = None
            self._hc.replay_safe = False  # without Fast Open: errors are the usual connect errors
            self.connect()
            sock = typing.cast("socket.socket | None", self.sock)
            assert sock is not None
            return sock.send(view)

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        body: _TYPE_BODY | None = None,
        headers: typing.Mapping[str, str] | None = None,
        *,
        chunked: bool = False,
        preload_content: bool = True,
        decode_content: bool = True,
        enforce_content_length: bool = True,
    ) -> None:
        guard = self.hc_guard
        if guard is None:
            super().request(method, url, body, headers, chunked=chunked, preload_content=preload_content,
                            decode_content=decode_content, enforce_content_length=enforce_content_length)
            return
        r = self._hc
        r.replay_safe = method.upper() in IDEMPOTENT_METHODS or has_idempotency_key(headers)  # is_idempotent()
        idle = None
        if self.sock is not None and r.idle_since is not None:
            idle = r.checked_idle if r.checked_idle is not None else guard.clock() - r.idle_since
        r.idle_since = r.checked_idle = None
        r.body_pos = body.tell() if body is not None and isinstance(body, io.IOBase) and body.seekable() else None
        r.method, r.url, r.body, r.headers = method, url, body, headers
        r.chunked, r.preload_content, r.decode_content, r.enforce_content_length = (
            chunked, preload_content, decode_content, enforce_content_length)
        r.reused, r.idle, r.written, r.retried, r.busy = idle is not None, idle, 0, False, True
        try:
            super().request(method, url, body, headers, chunked=chunked, preload_content=preload_content,
                            decode_content=decode_content, enforce_content_length=enforce_content_length)
        except STALE_ERRORS as exc:
            if isinstance(exc, BrokenPipeError) or getattr(exc, "errno", None) == errno.ECONNRESET:
                # urllib3 goes on to read the response (a server may answer and close early);
                # getresponse() then decides on a retry.
                raise
            if not self._hc_retry(exc):
                r.busy, r.body, r.headers = False, None, None
                raise

    def _hc_retry(self, exc: BaseException) -> bool:
        """Send the current request again on a new socket if the guard allows it."""
        r, guard = self._hc, self.hc_guard
        if not r.busy or guard is None or r.retried:
            return False
        reason = guard.exchange_failed(
            self.hc_origin,
            method=r.method,
            idempotency_key=has_idempotency_key(r.headers),
            bytes_written=r.written,
            reused=r.reused,
            idle=r.idle,
            response_started=False,
            replayable=_replayable(r.body, r.body_pos),
        )
        if reason is None:
            return False
        super().close()
        if r.body_pos is not None and isinstance(r.body, io.IOBase):
            r.body.seek(r.body_pos)
        r.retried = True
        r.reused = False
        r.written = 0
        super().request(r.method, r.url, r.body, r.headers, chunked=r.chunked, preload_content=r.preload_content,
                        decode_content=r.decode_content, enforce_content_length=r.enforce_content_length)
        return True

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        guard, r = self.hc_guard, self._hc
        if guard is None or not r.busy:
            return super().getresponse()
        try:
            try:
                response = super().getresponse()
            except STALE_ERRORS as exc:
                if not self._hc_retry(exc):
                    raise
                response = super().getresponse()
            if r.fo_check and self.sock is not None:
                r.fo_check = False
                guard.fast_open_done(self.sock)
            headers = response.headers
            keep_alive = headers.get("Keep-Alive") if "Keep-Alive" in headers else None
            if r.reused or keep_alive is not None:  # else Guard.exchange_done has nothing to note
                origin = r.origin if r.origin is not None and r.origin_of is self._dns_host else self.hc_origin
                guard.exchange_done(origin, reused=r.reused, idle=r.idle, keep_alive=keep_alive)
            return response
        finally:
            r.busy, r.body, r.headers = False, None, None  # nothing of the request outlives it


class GuardedHTTPSConnection(GuardedHTTPConnection, HTTPSConnection):
    """The TLS variant of :class:`GuardedHTTPConnection` (the certificate is checked for the name)."""

    hc_scheme: typing.ClassVar[str] = "https"


class _GuardedPoolMixin:
    hc_guard: Guard | None = None

    def _hc_adopt(self, conn: typing.Any) -> typing.Any:
        if isinstance(conn, GuardedHTTPConnection):
            conn.hc_guard = self.hc_guard
        return conn


class GuardedHTTPConnectionPool(_GuardedPoolMixin, HTTPConnectionPool):
    """An urllib3 HTTP pool of :class:`GuardedHTTPConnection`."""

    ConnectionCls = GuardedHTTPConnection

    def _new_conn(self) -> HTTPConnection:
        return typing.cast(HTTPConnection, self._hc_adopt(super()._new_conn()))

    def _put_conn(self, conn: typing.Any) -> None:
        if isinstance(conn, GuardedHTTPConnection):
            conn.hc_mark_idle()
        super()._put_conn(conn)


class GuardedHTTPSConnectionPool(_GuardedPoolMixin, HTTPSConnectionPool):
    """An urllib3 HTTPS pool of :class:`GuardedHTTPSConnection`."""

    ConnectionCls = GuardedHTTPSConnection

    def _new_conn(self) -> HTTPSConnection:
        return typing.cast(HTTPSConnection, self._hc_adopt(super()._new_conn()))

    def _put_conn(self, conn: typing.Any) -> None:
        if isinstance(conn, GuardedHTTPConnection):
            conn.hc_mark_idle()
        super()._put_conn(conn)


class GuardedPoolManager(PoolManager):
    """A urllib3 PoolManager whose connections are guarded by *guard*.

    Example:
        >>> from halfclose.client import Guard, GuardedPoolManager
        >>> http = GuardedPoolManager(guard=Guard(network="wifi-home"))
        >>> # r = http.request("GET", "http://img.example.com/a.png")
        >>> http.guard.counts().retries
        0
    """

    def __init__(
        self,
        num_pools: int = 10,
        headers: typing.Mapping[str, str] | None = None,
        *,
        guard: Guard | None = None,
        **connection_pool_kw: typing.Any,
    ) -> None:
        super().__init__(num_pools, headers, **connection_pool_kw)
        self.guard = guard if guard is not None else Guard()
        self.guard.attach()
        self._hc_attached = True
        self.pool_classes_by_scheme = {
            "http": GuardedHTTPConnectionPool,
            "https": GuardedHTTPSConnectionPool,
        }

    def _new_pool(
        self,
        scheme: str,
        host: str,
        port: int,
        request_context: dict[str, typing.Any] | None = None,
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        if isinstance(pool, _GuardedPoolMixin):
            pool.hc_guard = self.guard
        if not self._hc_attached:  # used again after clear()
            self._hc_attached = True
            self.guard.attach()
        return pool

    def clear(self) -> None:
        """Close every pool; the guard's FIN watcher stops with its last client."""
        super().clear()
        if self._hc_attached:
            self._hc_attached = False
            self.guard.detach()


def pool_manager(
    *, network: str = "default", guard: Guard | None = None, **kwargs: typing.Any
) -> GuardedPoolManager:
    """A guarded urllib3 PoolManager in one line.

    Args:
        network: the DNS cache's network key (ignored when *guard* is given).
        guard: a guard to share; by default a new one.
        kwargs: options of :class:`~halfclose.client.Guard` (``profile``, ``nameservers``, ...)
            when no *guard* is given; all others go to :class:`urllib3.PoolManager` (``retries``,
            ``timeout``, ``maxsize``, ...).

    Example:
        >>> from halfclose.client import pool_manager
        >>> http = pool_manager(network="lab", profile={"img.lab.test": 2}, retries=False)
        >>> # http.request("GET", "http://img.lab.test/")
    """
    guard, rest = guard_from_options("pool_manager", network=network, guard=guard, options=kwargs)
    return GuardedPoolManager(guard=guard, **rest)
