"""httpx integration (async): a transport and an AsyncClient that use a :class:`Guard`.

This file is the source: :mod:`._httpx_sync` is derived from it by ``scripts/unasync`` (run it
after an edit; a test fails while the two disagree).

The seams it uses are listed in :mod:`._httpx_base`.

The transport keeps httpcore's own pool and plugs the guard in at four places:

* a network backend that connects through the guard's DNS cache (sync: with TCP Fast Open for
  requests safe to replay and for TLS) and counts the bytes each exchange reads and writes;
* a wrapper around every connection the pool creates (plain, through a proxy, HTTP/1.1 or
  HTTP/2): ``has_expired`` (what the pool asks before it hands out an idle connection) consults
  :meth:`Guard.may_reuse`; while the connection sits idle in the pool the guard's FIN watcher
  closes it the moment the server's FIN or reset arrives;
* the transport's request handler, which sends a request once more on a *new* connection when a
  reused one failed before any response byte and the retry rule allows it;
* the Client, which builds its transports (and proxy transports) as guarded ones, with every
  transport option it was given.
"""

from __future__ import annotations

import ssl
import typing

import httpcore
import httpx

from halfclose.client import _httpx_base as base
from halfclose.client._dns import DnsError
from halfclose.client._guard import Guard, GuardCounts, guard_from_options
from halfclose.client._watch import Watch

__all__ = ["AsyncGuardedClient", "AsyncGuardedTransport", "async_httpx_client"]


class _AsyncCountingStream(httpcore.AsyncNetworkStream):
    """A network stream that counts bytes per exchange."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        #: Bytes written and read since the connection opened (an exchange's: the difference).
        self.written = 0
        self.read_bytes = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._inner.read(max_bytes, timeout)
        self.read_bytes += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)
        self.written += len(buffer)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _AsyncCountingStream(inner, self._guard)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await base.async_in_thread(self._guard.addresses, host)
        except (DnsError, OSError) as exc:  # OSError: getaddrinfo, without the DNS cache
            raise httpcore.ConnectError(str(exc)) from exc
        options = list(socket_options) if socket_options is not None else None
        last: Exception | None = None
        for address in addresses:
            try:
                stream = await base.async_open_tcp(
                    self._inner, self._guard, address, port,
                    timeout=timeout, local_address=local_address, options=options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            self._guard.connected()
            return _AsyncCountingStream(stream, self._guard)
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _AsyncReturningStream:
    """A response body that tells its connection when it went back to the pool."""

    __slots__ = ("_conn", "_inner")

    def __init__(self, inner: typing.Any, conn: _AsyncGuardedConnection) -> None:
        self._inner = inner
        self._conn = conn

    def __aiter__(self) -> typing.AsyncIterator[bytes]:
        chunks: typing.AsyncIterator[bytes] = self._inner.__aiter__()  # no layer per chunk
        return chunks

    async def aclose(self) -> None:
        if hasattr(self._inner, "aclose"):
            await self._inner.aclose()
        self._conn.returned()


class _AsyncGuardedConnection(httpcore.AsyncConnectionInterface):
    """Any httpcore connection (HTTP/1.1 or HTTP/2, direct or proxied), guarded."""

    def __init__(
        self,
        inner: httpcore.AsyncConnectionInterface,
        *,
        guard: Guard,
        origin: httpcore.Origin,
        keepalive_expiry: float | None = None,
    ) -> None:
        self._inner = inner
        self._keepalive_expiry = keepalive_expiry
        self._guard = guard
        self._origin = base.origin_of(origin)
        self._stream: _AsyncCountingStream | None = None
        self._sock: typing.Any = None
        self._tls = False
        self._http2 = False
        self._done = 0
        self._idle_since: float | None = None
        self._watch: Watch | None = None
        self._expired = False
        # What the pool asks of every connection each time it assigns requests: straight to httpcore.
        self.is_idle = inner.is_idle  # type: ignore[method-assign]
        self.is_closed = inner.is_closed  # type: ignore[method-assign]
        self.can_handle_request = inner.can_handle_request  # type: ignore[method-assign]

    def _idle(self) -> float | None:
        since = self._idle_since
        return None if since is None or self._done == 0 else self._guard.clock() - since

    def returned(self) -> None:
        """The response is closed; watch the connection while it is idle in the pool."""
        if self._stream is None or not self._inner.is_idle() or self._inner.is_closed():
            return
        w = self._watch
        guard = self._guard
        if w is not None and w.retire_version == guard.timeouts_version and w.watcher is not None:
            # Guard.watch_idle(again=w), inline: registered, and its retirement age still holds.
            since = guard.clock()
            if w.watcher.repool(w, since, w.retire_in):
                self._idle_since = w.since
                return
        if self._sock is not None:
            w = self._watch = base.async_fin_watch(self._guard, self._origin, self._sock, self.aclose, again=w)
        self._idle_since = w.since if w is not None else self._guard.clock()

    def _arrived(self, w: Watch, idle: float | None) -> bool:
        """The look before reuse when something arrived while *w*'s connection was pooled (False:
        not available)."""
        if idle is not None and not self._guard.may_reuse(
            self._origin, self._sock, idle=idle, tls=self._tls, peek=not self._http2, watch=w
        ):
            self._expired = True  # arrived while pooled: has_expired tells the pool to close it
            return False
        return True

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        stream = self._stream
        since = self._idle_since  # self._idle(), inline
        idle = None if since is None or self._done == 0 else self._guard.clock() - since
        w = self._watch  # the look before reuse, at the moment the connection is taken: Guard.checkout, inline
        if w is not None and ((w.watcher is not None and not w.watcher.checkout(w))
                              or (w.seen and not self._arrived(w, idle))):
            raise httpcore.ConnectionNotAvailable()  # closed at the server's FIN: the pool picks another
        reused = idle is not None
        written = read = 0
        if stream is not None:
            written, read = stream.written, stream.read_bytes
            replay = None
        else:  # only a connection that is still to be opened needs to know (Fast Open)
            replay = base.REPLAY_SAFE.set(base.replay_safe(request))
        try:
            response = await self._inner.handle_async_request(request)
        except (httpcore.ReadError, httpcore.WriteError, httpcore.RemoteProtocolError):
            if stream is not None:
                base.FAILURE.set(base.Failure(
                    origin=self._origin,
                    reused=reused,
                    idle=idle,
                    # HTTP/2 streams share the connection's counters: count this one as written.
                    written=max(stream.written - written, 1) if self._http2 else stream.written - written,
                    response_started=not self._http2 and stream.read_bytes > read,
                ))
            raise
        finally:
            if replay is not None:
                base.REPLAY_SAFE.reset(replay)
        extensions = response.extensions
        network = extensions.get("network_stream")
        if network is not stream and isinstance(network, _AsyncCountingStream):
            self._stream = network
            self._sock = sock = network.get_extra_info("socket")
            self._tls = network.get_extra_info("ssl_object") is not None
            if sock is not None and self._guard.fast_open_used(sock):
                self._guard.fast_open_done(sock)
            self._http2 = extensions.get("http_version") == b"HTTP/2"
        self._done += 1
        hint = base.keep_alive(response.headers)
        self._guard.exchange_done(self._origin, reused=reused, idle=idle, keep_alive=hint)
        response.stream = _AsyncReturningStream(response.stream, self)
        return response

    async def aclose(self) -> None:
        w, self._watch = self._watch, None
        self._guard.unwatch(w)
        await self._inner.aclose()

    def info(self) -> str:
        return self._inner.info()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return self._inner.can_handle_request(origin)

    def is_available(self) -> bool:
        if base.FRESH_ONLY.get() and self._done > 0:
            return False
        return self._inner.is_available()

    def has_expired(self) -> bool:
        w = self._watch
        if w is not None:
            if w.fired or self._expired:
                return True
            if (w.pooled and not w.seen and w.limit_version == self._guard.timeouts_version
                    and self._keepalive_expiry is None and self._done
                    and self._guard.clock() - w.since < w.limit and self._sock.fileno() == w.fd):
                # Pooled and watched, nothing arrived, below the limit Guard.may_reuse cached on w:
                # its answer (and httpcore's own look would only repeat the watcher's).
                return False
        elif self._expired:
            return True
        sock, idle = self._sock, self._idle()
        if sock is not None and idle is not None and self._inner.is_idle() and not self._inner.is_closed():
            # With a watch the socket itself is looked at only when something arrived (see _arrived).
            if not self._guard.may_reuse(self._origin, sock, idle=idle, tls=self._tls, peek=not self._http2,
                                         watch=w):
                return True
            if w is not None and w.active and self._keepalive_expiry is None:
                return False  # httpcore's own look (a poll of the socket) would only repeat the watcher's
        return self._inner.has_expired()

    def is_idle(self) -> bool:
        return self._inner.is_idle()

    def is_closed(self) -> bool:
        return self._inner.is_closed()

    def __repr__(self) -> str:
        return f"<guarded {self._inner!r}>"


class _AsyncGuardedPool(httpcore.AsyncConnectionPool):
    def __init__(self, *, guard: Guard, **options: typing.Any) -> None:
        super().__init__(network_backend=_AsyncGuardedBackend(guard), **options)
        self._hc_guard = guard
        self._hc_expiry: float | None = options.get("keepalive_expiry")

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return _AsyncGuardedConnection(super().create_connection(origin), guard=self._hc_guard, origin=origin,
                                       keepalive_expiry=self._hc_expiry)


class AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose connections are guarded by *guard*.

    It takes the options of :class:`httpx.AsyncHTTPTransport` (``verify``, ``cert``,
    ``trust_env``, ``http1``, ``http2``, ``limits``, ``proxy``, ``uds``, ``local_address``,
    ``retries``, ``socket_options``). Without *limits*, httpx's fixed 5 s idle expiry gives way
    to the guard's policy.

    Example:
        >>> import httpx
        >>> from halfclose.client import AsyncGuardedTransport, Guard
        >>> client = httpx.AsyncClient(transport=AsyncGuardedTransport(guard=Guard(network="lab")))
    """

    def __init__(
        self,
        *,
        guard: Guard | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: typing.Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits | None = None,
        proxy: httpx.Proxy | httpx.URL | str | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> None:
        # httpx.AsyncHTTPTransport.__init__ would build an unguarded pool: set the guarded one.
        self.guard = guard if guard is not None else Guard()
        self._pool = _AsyncGuardedPool(
            guard=self.guard,
            **base.pool_options(
                verify=verify, cert=cert, trust_env=trust_env, http1=http1, http2=http2, limits=limits,
                proxy=proxy, uds=uds, local_address=local_address, retries=retries,
                socket_options=socket_options,
            ),
        )
        self.guard.attach()
        self._hc_attached = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except base.STALE:
            if not base.may_retry(self.guard, request, base.take_failure()):
                raise
        fresh = base.FRESH_ONLY.set(True)
        try:
            return await super().handle_async_request(request)
        except base.STALE:
            base.take_failure()  # the retry's own, if any: not carried to the next request
            raise
        finally:
            base.FRESH_ONLY.reset(fresh)

    async def aclose(self) -> None:
        await super().aclose()
        if self._hc_attached:
            self._hc_attached = False
            self.guard.detach()


class AsyncGuardedClient(httpx.AsyncClient):
    """An httpx AsyncClient whose transports (and proxy transports) are guarded.

    Every option of :class:`httpx.AsyncClient` works as there; the transport options (``verify``,
    ``cert``, ``trust_env``, ``http1``, ``http2``, ``limits``, ``proxy``) reach the
    :class:`AsyncGuardedTransport`. ``transport=`` and ``mounts=`` take guarded transports only
    (anything else raises ``TypeError``, since it would bypass the guard); with ``transport=``
    the client's guard is that transport's.

    Attributes:
        guard: the guard of its transports.
    """

    def __init__(self, *, guard: Guard | None = None, **client_options: typing.Any) -> None:
        base.check_client_options(type(self).__name__, client_options, AsyncGuardedTransport)
        transport = client_options.get("transport")
        if isinstance(transport, AsyncGuardedTransport):
            guard = transport.guard
        self.guard = guard if guard is not None else Guard()
        self._hc_limits = client_options.get("limits")
        super().__init__(**client_options)

    def _init_transport(  # type: ignore[override]
        self, transport: typing.Any = None, **options: typing.Any
    ) -> typing.Any:
        if transport is not None:
            return transport
        options["limits"] = self._hc_limits
        return AsyncGuardedTransport(guard=self.guard, **options)

    def _init_proxy_transport(  # type: ignore[override]
        self, proxy: httpx.Proxy, **options: typing.Any
    ) -> typing.Any:
        options["limits"] = self._hc_limits
        return AsyncGuardedTransport(guard=self.guard, proxy=proxy, **options)

    def counts(self) -> GuardCounts:
        """The guard's counters (see :class:`~halfclose.client.GuardCounts`)."""
        return self.guard.counts()


def async_httpx_client(
    *, network: str = "default", guard: Guard | None = None, **options: typing.Any
) -> AsyncGuardedClient:
    """An httpx AsyncClient guarded against half-closed keep-alive connections, in one line.

    Args:
        network: the DNS cache's network key (unused when *guard* is given).
        guard: a guard to share.
        options: options of :class:`~halfclose.client.Guard` (``profile``, ``nameservers``, ...)
            when no *guard* is given; all others go to the httpx client (``timeout``,
            ``headers``, ``verify``, ``http2``, ``limits``, ``proxy``, ...).

    Example:
        >>> import asyncio, halfclose.client
        >>> async def main() -> None:
        ...     async with halfclose.client.async_httpx_client(network="lab") as client:
        ...         pass   # await client.get("http://img.lab.test/")
        >>> asyncio.run(main())
    """
    guard, rest = guard_from_options("async_httpx_client", network=network, guard=guard, options=options)
    return AsyncGuardedClient(guard=guard, **rest)
