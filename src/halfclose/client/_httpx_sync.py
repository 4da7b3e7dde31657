"""httpx integration (sync): a transport and a Client that use a :class:`Guard`.

Generated from :mod:`._httpx_async` by ``scripts/unasync``: edit that file, not this one.

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

__all__ = ["GuardedClient", "GuardedTransport", "httpx_client"]


class _CountingStream(httpcore.NetworkStream):
    """A network stream that counts bytes per exchange."""

    def __init__(self, inner: httpcore.NetworkStream, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        #: Bytes written and read since the connection opened (an exchange's: the difference).
        self.written = 0
        self.read_bytes = 0

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, timeout)
        self.read_bytes += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)
        self.written += len(buffer)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _CountingStream(inner, self._guard)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = base.in_thread(self._guard.addresses, host)
        except (DnsError, OSError) as exc:  # OSError: getaddrinfo, without the DNS cache
            raise httpcore.ConnectError(str(exc)) from exc
        options = list(socket_options) if socket_options is not None else None
        last: Exception | None = None
        for address in addresses:
            try:
                stream = base.open_tcp(
                    self._inner, self._guard, address, port,
                    timeout=timeout, local_address=local_address, options=options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            self._guard.connected()
            return _CountingStream(stream, self._guard)
        assert last is not None
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _ReturningStream:
    """A response body that tells its connection when it went back to the pool."""

    __slots__ = ("_conn", "_inner")

    def __init__(self, inner: typing.Any, conn: _GuardedConnection) -> None:
        self._inner = inner
        self._conn = conn

    def __iter__(self) -> typing.Iterator[bytes]:
        chunks: typing.Iterator[bytes] = self._inner.__iter__()  # no layer per chunk
        return chunks

    def close(self) -> None:
        if hasattr(self._inner, "close"):
            self._inner.close()
        self._conn.returned()


class _GuardedConnection(httpcore.ConnectionInterface):
    """Any httpcore connection (HTTP/1.1 or HTTP/2, direct or proxied), guarded."""

    def __init__(
        self,
        inner: httpcore.ConnectionInterface,
        *,
        guard: Guard,
        origin: httpcore.Origin,
        keepalive_expiry: float | None = None,
    ) -> None:
        self._inner = inner
        self._keepalive_expiry = keepalive_expiry
        self._guard = guard
        self._origin = base.origin_of(origin)
        self._stream: _CountingStream | None = None
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
            w = self._watch = base.fin_watch(self._guard, self._origin, self._sock, self.close, again=w)
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

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
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
            response = self._inner.handle_request(request)
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
        if network is not stream and isinstance(network, _CountingStream):
            self._stream = network
            self._sock = sock = network.get_extra_info("socket")
            self._tls = network.get_extra_info("ssl_object") is not None
            if sock is not None and self._guard.fast_open_used(sock):
                self._guard.fast_open_done(sock)
            self._http2 = extensions.get("http_version") == b"HTTP/2"
        self._done += 1
        hint = base.keep_alive(response.headers)
        self._guard.exchange_done(self._origin, reused=reused, idle=idle, keep_alive=hint)
        response.stream = _ReturningStream(response.stream, self)
        return response

    def close(self) -> None:
        w, self._watch = self._watch, None
        self._guard.unwatch(w)
        self._inner.close()

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


class _GuardedPool(httpcore.ConnectionPool):
    def __init__(self, *, guard: Guard, **options: typing.Any) -> None:
        super().__init__(network_backend=_GuardedBackend(guard), **options)
        self._hc_guard = guard
        self._hc_expiry: float | None = options.get("keepalive_expiry")

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        return _GuardedConnection(super().create_connection(origin), guard=self._hc_guard, origin=origin,
                                       keepalive_expiry=self._hc_expiry)


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose connections are guarded by *guard*.

    It takes the options of :class:`httpx.HTTPTransport` (``verify``, ``cert``,
    ``trust_env``, ``http1``, ``http2``, ``limits``, ``proxy``, ``uds``, ``local_address``,
    ``retries``, ``socket_options``). Without *limits*, httpx's fixed 5 s idle expiry gives way
    to the guard's policy.

    Example:
        >>> import httpx
        >>> from halfclose.client import GuardedTransport, Guard
        >>> client = httpx.Client(transport=GuardedTransport(guard=Guard(network="lab")))
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
        # httpx.HTTPTransport.__init__ would build an unguarded pool: set the guarded one.
        self.guard = guard if guard is not None else Guard()
        self._pool = _GuardedPool(
            guard=self.guard,
            **base.pool_options(
                verify=verify, cert=cert, trust_env=trust_env, http1=http1, http2=http2, limits=limits,
                proxy=proxy, uds=uds, local_address=local_address, retries=retries,
                socket_options=socket_options,
            ),
        )
        self.guard.attach()
        self._hc_attached = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except base.STALE:
            if not base.may_retry(self.guard, request, base.take_failure()):
                raise
        fresh = base.FRESH_ONLY.set(True)
        try:
            return super().handle_request(request)
        except base.STALE:
            base.take_failure()  # the retry's own, if any: not carried to the next request
            raise
        finally:
            base.FRESH_ONLY.reset(fresh)

    def close(self) -> None:
        super().close()
        if self._hc_attached:
            self._hc_attached = False
            self.guard.detach()


class GuardedClient(httpx.Client):
    """An httpx Client whose transports (and proxy transports) are guarded.

    Every option of :class:`httpx.Client` works as there; the transport options (``verify``,
    ``cert``, ``trust_env``, ``http1``, ``http2``, ``limits``, ``proxy``) reach the
    :class:`GuardedTransport`. ``transport=`` and ``mounts=`` take guarded transports only
    (anything else raises ``TypeError``, since it would bypass the guard); with ``transport=``
    the client's guard is that transport's.

    Attributes:
        guard: the guard of its transports.
    """

    def __init__(self, *, guard: Guard | None = None, **client_options: typing.Any) -> None:
        base.check_client_options(type(self).__name__, client_options, GuardedTransport)
        transport = client_options.get("transport")
        if isinstance(transport, GuardedTransport):
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
        return GuardedTransport(guard=self.guard, **options)

    def _init_proxy_transport(  # type: ignore[override]
        self, proxy: httpx.Proxy, **options: typing.Any
    ) -> typing.Any:
        options["limits"] = self._hc_limits
        return GuardedTransport(guard=self.guard, proxy=proxy, **options)

    def counts(self) -> GuardCounts:
        """The guard's counters (see :class:`~halfclose.client.GuardCounts`)."""
        return self.guard.counts()


def httpx_client(
    *, network: str = "default", guard: Guard | None = None, **options: typing.Any
) -> GuardedClient:
    """An httpx Client guarded against half-closed keep-alive connections, in one line.

    Args:
        network: the DNS cache's network key (unused when *guard* is given).
        guard: a guard to share.
        options: options of :class:`~halfclose.client.Guard` (``profile``, ``nameservers``, ...)
            when no *guard* is given; all others go to the httpx client (``timeout``,
            ``headers``, ``verify``, ``http2``, ``limits``, ``proxy``, ...).

    Example:
        >>> import halfclose.client
        >>> def main() -> None:
        ...     with halfclose.client.httpx_client(network="lab") as client:
        ...         pass   # client.get("http://img.lab.test/")
        >>> main()
    """
    guard, rest = guard_from_options("httpx_client", network=network, guard=guard, options=options)
    return GuardedClient(guard=guard, **rest)
