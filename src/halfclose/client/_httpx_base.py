"""What the async and the sync httpx integrations share: the state of one attempt, option handling.

:mod:`._httpx_async` is the source; :mod:`._httpx_sync` is derived from it by ``scripts/unasync``
(as httpcore derives its sync code). Everything that is the same in both lives here, once.

The seams used, and why each is safe:

* public: ``httpcore.AsyncConnectionPool.create_connection`` (overridden to wrap every connection
  in a guarded one), ``httpcore.AsyncConnectionInterface`` (what the wrapper implements),
  ``httpcore.AsyncNetworkBackend`` (connects through the DNS cache), the ``network_stream`` and
  ``http_version`` response extensions, ``httpcore.ConnectionNotAvailable`` (makes the pool pick
  another connection), ``httpx.create_ssl_context``, ``httpx.Proxy``.
* private, pinned (``httpx>=0.28,<0.29``, ``httpcore>=1.0.5,<1.1``) and tested in
  tests/test_client_httpx.py: ``httpx.HTTPTransport._pool`` (the transport's pool, set to the
  guarded one) and ``httpx.Client._init_transport`` / ``_init_proxy_transport`` (where a Client
  builds its transports from its options); for Fast Open (tests/test_client_tfo.py), httpcore's
  stream classes over a socket opened here: ``httpcore._backends.sync.SyncStream`` and
  ``httpcore._backends.anyio.AnyIOStream`` (over anyio's public ``SocketStream.from_socket`` and
  ``wait_writable``, ``anyio>=4.7``).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio.abc
import anyio.to_thread
import httpcore
import httpx
from httpcore._backends.anyio import AnyIOStream
from httpcore._backends.sync import SyncStream

from halfclose.client._guard import Guard, Origin
from halfclose.client._policy import IDEMPOTENT_METHODS
from halfclose.client._watch import Watch

__all__ = [
    "FAILURE",
    "FRESH_ONLY",
    "REPLAY_SAFE",
    "STALE",
    "TRANSPORT_OPTIONS",
    "Failure",
    "async_fin_watch",
    "async_in_thread",
    "async_open_tcp",
    "check_client_options",
    "fin_watch",
    "in_thread",
    "keep_alive",
    "may_retry",
    "open_tcp",
    "origin_of",
    "pool_options",
    "replay_safe",
    "take_failure",
]

_T = typing.TypeVar("_T")


@dataclass(kw_only=True)
class Failure:
    """A request that failed on a connection before its response head arrived."""

    origin: Origin
    reused: bool
    idle: float | None
    written: int
    response_started: bool


#: The failure a guarded connection saw in the request under way in this context (set only on a
#: failure, so that the common case costs nothing), for the transport's retry decision.
FAILURE: contextvars.ContextVar[Failure | None] = contextvars.ContextVar("halfclose_failure", default=None)


def take_failure() -> Failure | None:
    """The failure noted in :data:`FAILURE`, which is cleared."""
    failure = FAILURE.get()
    if failure is not None:
        FAILURE.set(None)
    return failure

#: While set, only connections that never carried an exchange are available (the retry).
FRESH_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("halfclose_fresh_only", default=False)

#: Whether what a new connection will carry first is safe to replay (Fast Open may put it in the SYN).
REPLAY_SAFE: contextvars.ContextVar[bool] = contextvars.ContextVar("halfclose_replay_safe", default=False)

#: httpx errors that mean "the connection is gone".
STALE = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)

#: Options of :class:`httpx.HTTPTransport` that the guarded transports take too.
TRANSPORT_OPTIONS = (
    "verify", "cert", "trust_env", "http1", "http2", "limits", "proxy", "uds",
    "local_address", "retries", "socket_options",
)


def replay_safe(request: httpcore.Request) -> bool:
    """Whether *request* may be sent twice (idempotent, or an ``Idempotency-Key``), or goes over TLS
    (then the first thing on a new connection is the ClientHello)."""
    if request.url.scheme == b"https" or request.method.upper() in _IDEMPOTENT:
        return True
    return any(k.lower() in (b"idempotency-key", b"x-idempotency-key") for k, _ in request.headers)


_IDEMPOTENT = {m.encode() for m in IDEMPOTENT_METHODS}


def origin_of(origin: httpcore.Origin) -> Origin:
    """The guard's :class:`Origin` of an httpcore origin."""
    return Origin(scheme=origin.scheme.decode("ascii"), host=origin.host.decode("ascii"), port=origin.port)


def may_retry(guard: Guard, request: httpx.Request, failure: Failure | None) -> bool:
    """Whether *request*, which failed as *failure* says, may go out once more (the guard decides)."""
    if failure is None:
        return False
    reason = guard.exchange_failed(
        failure.origin,
        method=request.method,
        idempotency_key="idempotency-key" in request.headers or "x-idempotency-key" in request.headers,
        bytes_written=failure.written,
        reused=failure.reused,
        idle=failure.idle,
        response_started=failure.response_started,
        replayable=isinstance(request.stream, httpx.ByteStream),
    )
    return reason is not None


def keep_alive(headers: typing.Iterable[tuple[bytes, bytes]]) -> str | None:
    """The last ``Keep-Alive`` header among raw response *headers*."""
    found = None
    for name, value in headers:
        if name.lower() == b"keep-alive":
            found = value.decode("latin-1")
    return found


def pool_options(
    *,
    verify: typing.Any,
    cert: typing.Any,
    trust_env: bool,
    http1: bool,
    http2: bool,
    limits: httpx.Limits | None,
    proxy: httpx.Proxy | httpx.URL | str | None,
    uds: str | None,
    local_address: str | None,
    retries: int,
    socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None,
) -> dict[str, typing.Any]:
    """httpcore pool options from httpx transport options, as ``httpx.HTTPTransport`` makes them.

    Without *limits*, idle connections do not expire on httpx's fixed 5 s: the guard's policy
    decides.

    Raises:
        ValueError: a proxy URL whose scheme httpcore cannot speak.
    """
    if limits is None:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=None)
    hc_proxy = None
    if proxy is not None:
        p = httpx.Proxy(url=proxy) if isinstance(proxy, str | httpx.URL) else proxy
        if p.url.scheme not in ("http", "https", "socks5", "socks5h"):
            raise ValueError(f"proxy {p.url}: the scheme must be http, https, socks5 or socks5h")
        hc_proxy = httpcore.Proxy(
            url=httpcore.URL(scheme=p.url.raw_scheme, host=p.url.raw_host, port=p.url.port, target=p.url.raw_path),
            auth=p.raw_auth,
            headers=p.headers.raw,
            ssl_context=p.ssl_context,
        )
    return {
        "ssl_context": httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env),
        "proxy": hc_proxy,
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": http1,
        "http2": http2,
        "uds": uds,
        "local_address": local_address,
        "retries": retries,
        "socket_options": socket_options,
    }


def check_client_options(who: str, options: typing.Mapping[str, typing.Any], guarded: type) -> None:
    """Refuse Client options that would bypass the guard, with what to do instead.

    Raises:
        TypeError: ``transport=`` or a mount that is not a *guarded* transport.
    """
    transport = options.get("transport")
    if transport is not None and not isinstance(transport, guarded):
        raise TypeError(
            f"{who}: transport={type(transport).__name__} would not be guarded; give the transport's "
            f"options ({', '.join(TRANSPORT_OPTIONS)}) to {who} instead, or pass a {guarded.__name__}"
        )
    for pattern, mounted in (options.get("mounts") or {}).items():
        if mounted is not None and not isinstance(mounted, guarded):
            raise TypeError(
                f"{who}: mounts[{pattern!r}] is a {type(mounted).__name__}, which would not be guarded; "
                f"mount a {guarded.__name__} (it takes the same options)"
            )


async def async_in_thread(fn: typing.Callable[[str], _T], arg: str) -> _T:
    """Run blocking *fn(arg)* in a worker thread (a name lookup that misses the cache)."""
    return await anyio.to_thread.run_sync(fn, arg)


def in_thread(fn: typing.Callable[[str], _T], arg: str) -> _T:
    """The sync twin of :func:`async_in_thread`: call *fn(arg)*."""
    return fn(arg)


_CLOSING: set[asyncio.Task[None]] = set()


def async_fin_watch(
    guard: Guard,
    origin: Origin,
    sock: typing.Any,
    aclose: typing.Callable[[], typing.Awaitable[None]],
    *,
    again: Watch | None = None,
) -> Watch | None:
    """Watch an idle pooled connection on the running asyncio loop; on the FIN, schedule *aclose*.

    *again*: its registration from the last time it was pooled (see :meth:`Guard.watch_idle`).
    Under another event loop (trio) nothing watches: the look before reuse still applies.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None

    def close() -> None:
        task = loop.create_task(_await(aclose))
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    return guard.watch_idle(origin, sock, close, loop=loop, again=again)


async def _await(aclose: typing.Callable[[], typing.Awaitable[None]]) -> None:
    await aclose()


def fin_watch(
    guard: Guard, origin: Origin, sock: typing.Any, close: typing.Callable[[], None], *, again: Watch | None = None
) -> Watch | None:
    """The sync twin of :func:`async_fin_watch`: the guard's watcher thread calls *close*."""
    return guard.watch_idle(origin, sock, close, again=again)


class _FastOpenStream(SyncStream):
    """httpcore's sync stream over a socket opened with Fast Open: the first write is the connect."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._first = True

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not self._first:
            return super().write(buffer, timeout)
        self._first = False
        self.write = super().write  # type: ignore[method-assign]  # the rest: httpcore's own
        try:
            return super().write(buffer, timeout)
        except httpcore.WriteTimeout as exc:  # the handshake did not complete
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except httpcore.WriteError as exc:  # refused, unreachable: what connect() would have said
            raise httpcore.ConnectError(str(exc)) from exc


class _FastOpenSocket(anyio.abc.ByteStream):
    """An anyio byte stream over a socket opened with Fast Open, whose first send is its connect.

    ``connect()`` of such a socket returns at once when a cookie is cached; the first write then
    carries the SYN and its data: the request, or, for TLS, the ClientHello that anyio's TLS layer
    sends through this stream. Once the handshake is over the socket is handed to anyio
    (``SocketStream.from_socket``), which does the rest.
    """

    def __init__(self, sock: socket.socket, *, timeout: float | None, deferred: bool) -> None:
        self._sock = sock
        self._timeout = timeout
        self._deferred = deferred  # connect() returned at once: the first send opens the connection
        self._stream: anyio.abc.SocketStream | None = None

    async def connected(self) -> anyio.abc.SocketStream:
        """Wait for the handshake to end; errors are what a connect would raise."""
        if self._stream is not None:
            return self._stream
        try:
            with anyio.fail_after(self._timeout):
                await anyio.wait_writable(self._sock)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("the TCP handshake did not complete in time") from exc
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise httpcore.ConnectError(f"[Errno {err}] {os.strerror(err)}")
        self._stream = await anyio.abc.SocketStream.from_socket(self._sock)
        return self._stream

    async def send(self, item: bytes) -> None:
        if self._stream is None:
            sent = 0
            if self._deferred:
                self._deferred = False
                try:
                    sent = self._sock.send(item)  # the SYN, with as much of *item* as it carries
                except BlockingIOError:
                    sent = 0
                except OSError as exc:  # refused, unreachable: what connect() would have said
                    raise httpcore.ConnectError(str(exc)) from exc
            await self.connected()
            item = item[sent:]
            if not item:
                return
        assert self._stream is not None
        await self._stream.send(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._stream is None:
            await self.send(b"")  # nothing written first: connect without data
        assert self._stream is not None
        return await self._stream.receive(max_bytes)

    async def send_eof(self) -> None:
        await (await self.connected()).send_eof()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        else:
            self._sock.close()

    @property
    def extra_attributes(self) -> Mapping[typing.Any, Callable[[], typing.Any]]:
        if self._stream is not None:
            return self._stream.extra_attributes
        return {anyio.abc.SocketAttribute.raw_socket: lambda: self._sock}


async def async_open_tcp(
    inner: httpcore.AsyncNetworkBackend,
    guard: Guard,
    address: str,
    port: int,
    *,
    timeout: float | None,
    local_address: str | None,
    options: list[httpcore.SOCKET_OPTION] | None,
) -> httpcore.AsyncNetworkStream:
    """Connect to one address for the async backend, with Fast Open when the guard allows it.

    anyio connects before socket options can be set, so such sockets are made here, connected
    without blocking (``connect()`` returns at once where a cookie is cached: the first write is
    the connect) and handed to httpcore's ``AnyIOStream`` through :class:`_FastOpenSocket`.
    """
    if not guard.fast_open_allowed(address, port, replay_safe=REPLAY_SAFE.get()):
        return await inner.connect_tcp(address, port, timeout, local_address, options)
    try:
        sock = guard.new_socket(address, port, source_address=(local_address, 0) if local_address else None,
                                socket_options=typing.cast("list[tuple[int, int, int | bytes]] | None", options),
                                replay_safe=True)
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's own connections
        sock.setblocking(False)
        try:
            sock.connect((address, port))
            deferred = True
        except BlockingIOError:  # no cookie yet: the SYN asks for one, the handshake is normal
            deferred = False
        stream = _FastOpenSocket(sock, timeout=timeout, deferred=deferred)
        if not deferred:
            await stream.connected()
    except OSError as exc:
        sock.close()
        raise httpcore.ConnectError(str(exc)) from exc
    except BaseException:
        sock.close()
        raise
    return AnyIOStream(stream)


def open_tcp(
    inner: httpcore.NetworkBackend,
    guard: Guard,
    address: str,
    port: int,
    *,
    timeout: float | None,
    local_address: str | None,
    options: list[httpcore.SOCKET_OPTION] | None,
) -> httpcore.NetworkStream:
    """Connect to one address for the sync backend, with Fast Open when the guard allows it.

    Fast Open needs ``TCP_FASTOPEN_CONNECT`` before ``connect()``, which httpcore's backend applies
    socket options after: such sockets are opened here and handed to httpcore's ``SyncStream``
    (``httpcore._backends.sync``, private, pinned and tested).
    """
    if not guard.fast_open_allowed(address, port, replay_safe=REPLAY_SAFE.get()):
        return inner.connect_tcp(address, port, timeout, local_address, options)
    try:
        sock = guard.open_socket(address, port, timeout=timeout,
                                 source_address=(local_address, 0) if local_address else None,
                                 socket_options=typing.cast("list[tuple[int, int, int | bytes]] | None", options),
                                 replay_safe=True)
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(str(exc)) from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as httpcore's backend does
    return _FastOpenStream(sock)
