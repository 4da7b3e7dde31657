"""httpx integration: a transport and a Client that use a :class:`Guard` (sync, HTTP/1.1).

The transport keeps httpx's own pool (httpcore) and plugs the guard in at its three seams:

* a network backend that connects through the guard's DNS cache and counts the bytes each
  exchange reads and writes;
* a connection class whose ``has_expired`` (what the pool asks before it hands out an idle
  connection) consults :meth:`Guard.may_reuse`;
* the transport's ``handle_request``, which sends a request once more on a *new* connection when a
  reused one failed before any response byte and the retry rule allows it.
"""

from __future__ import annotations

import contextvars
import ssl
import typing
from dataclasses import dataclass

import httpcore
import httpx

from halfclose.client._dns import DnsError
from halfclose.client._guard import Guard, GuardCounts, Origin

__all__ = ["GuardedClient", "GuardedTransport", "httpx_client"]


@dataclass(kw_only=True)
class _Failure:
    origin: Origin
    reused: bool
    idle: float | None
    written: int
    response_started: bool


@dataclass(kw_only=True)
class _Attempt:
    failure: _Failure | None = None


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("halfclose_attempt", default=None)
_FRESH_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("halfclose_fresh_only", default=False)


class _CountingStream(httpcore.NetworkStream):
    """A network stream that counts bytes per exchange and remembers the last read."""

    def __init__(self, inner: httpcore.NetworkStream, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        self.written = 0
        self.read_bytes = 0
        self.last_read = guard.clock()

    def begin(self) -> None:
        self.written = 0
        self.read_bytes = 0

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, timeout)
        self.read_bytes += len(data)
        self.last_read = self._guard.clock()
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
        return _CountingStream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._guard)

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
            addresses = self._guard.addresses(host)
        except DnsError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        options = list(socket_options) if socket_options is not None else None
        last: Exception | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(address, port, timeout, local_address, options)
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


class _GuardedConnection(httpcore.HTTPConnection):
    def __init__(self, *, guard: Guard, **kwargs: typing.Any) -> None:
        super().__init__(**kwargs)
        self._hc_guard = guard
        self._hc_stream: _CountingStream | None = None
        self._hc_done = 0
        origin = kwargs["origin"]
        self._hc_origin = Origin(
            scheme=origin.scheme.decode("ascii"), host=origin.host.decode("ascii"), port=origin.port
        )

    def _connect(self, request: httpcore.Request) -> httpcore.NetworkStream:
        stream = super()._connect(request)
        if isinstance(stream, _CountingStream):
            self._hc_stream = stream
        return stream

    def _hc_is_idle_reusable(self) -> bool:
        return self._hc_stream is not None and self._hc_done > 0 and self.is_idle()

    def has_expired(self) -> bool:
        stream = self._hc_stream
        if stream is not None and self._hc_is_idle_reusable() and not self.is_closed():
            sock = stream.get_extra_info("socket")
            idle = self._hc_guard.clock() - stream.last_read
            if sock is not None and not self._hc_guard.may_reuse(self._hc_origin, sock, idle=idle):
                return True
        return super().has_expired()

    def is_available(self) -> bool:
        if _FRESH_ONLY.get() and self._hc_done > 0:
            return False
        return super().is_available()

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        stream = self._hc_stream
        reused = stream is not None and self._hc_done > 0
        idle = self._hc_guard.clock() - stream.last_read if stream is not None and reused else None
        if stream is not None:
            stream.begin()
        try:
            response = super().handle_request(request)
        except (httpcore.ReadError, httpcore.WriteError, httpcore.RemoteProtocolError):
            attempt, stream = _ATTEMPT.get(), self._hc_stream
            if attempt is not None and stream is not None:
                attempt.failure = _Failure(
                    origin=self._hc_origin,
                    reused=reused,
                    idle=idle,
                    written=stream.written,
                    response_started=stream.read_bytes > 0,
                )
            raise
        self._hc_done += 1
        keep_alive = None
        for name, value in response.headers:
            if name.lower() == b"keep-alive":
                keep_alive = value.decode("latin-1")
        self._hc_guard.exchange_done(self._hc_origin, reused=reused, idle=idle, keep_alive=keep_alive)
        return response


class _GuardedPool(httpcore.ConnectionPool):
    def __init__(self, *, guard: Guard, **kwargs: typing.Any) -> None:
        super().__init__(network_backend=_GuardedBackend(guard), **kwargs)
        self._hc_guard = guard

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        if self._proxy is not None or self._uds is not None:
            return super().create_connection(origin)
        return _GuardedConnection(
            guard=self._hc_guard,
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            http1=self._http1,
            http2=self._http2,
            retries=self._retries,
            local_address=self._local_address,
            uds=self._uds,
            network_backend=self._network_backend,
            socket_options=self._socket_options,
        )


_STALE = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose connections are guarded by *guard* (HTTP/1.1, no proxy).

    httpx's own idle expiry (``Limits.keepalive_expiry``, 5 s by default) is replaced by the
    guard's policy unless *limits* is given.

    Example:
        >>> import httpx
        >>> from halfclose.client import Guard, GuardedTransport
        >>> client = httpx.Client(transport=GuardedTransport(guard=Guard(network="lab")))
        >>> # client.get("http://img.lab.test/")
        >>> client.close()
    """

    def __init__(
        self,
        *,
        guard: Guard | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: typing.Any = None,
        trust_env: bool = True,
        limits: httpx.Limits | None = None,
        local_address: str | None = None,
        retries: int = 0,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> None:
        limits = limits if limits is not None else httpx.Limits(
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=None
        )
        super().__init__(
            verify=verify, cert=cert, trust_env=trust_env, limits=limits,
            local_address=local_address, retries=retries, socket_options=socket_options,
        )
        self.guard = guard if guard is not None else Guard()
        plain = self._pool
        assert isinstance(plain, httpcore.ConnectionPool)
        self._pool = _GuardedPool(
            guard=self.guard,
            ssl_context=plain._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            local_address=local_address,
            retries=retries,
            socket_options=socket_options,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            try:
                return super().handle_request(request)
            except _STALE:
                failure = attempt.failure
                if failure is None:
                    raise
                reason = self.guard.exchange_failed(
                    failure.origin,
                    method=request.method,
                    idempotency_key="idempotency-key" in request.headers
                    or "x-idempotency-key" in request.headers,
                    bytes_written=failure.written,
                    reused=failure.reused,
                    idle=failure.idle,
                    response_started=failure.response_started,
                    replayable=isinstance(request.stream, httpx.ByteStream),
                )
                if reason is None:
                    raise
            attempt.failure = None
            fresh = _FRESH_ONLY.set(True)
            try:
                return super().handle_request(request)
            finally:
                _FRESH_ONLY.reset(fresh)
        finally:
            _ATTEMPT.reset(token)


class GuardedClient(httpx.Client):
    """An httpx Client over a :class:`GuardedTransport`.

    Attributes:
        guard: the guard of its transport.
    """

    def __init__(self, *, guard: Guard | None = None, **client_options: typing.Any) -> None:
        self.guard = guard if guard is not None else Guard()
        verify = client_options.pop("verify", True)
        super().__init__(transport=GuardedTransport(guard=self.guard, verify=verify), **client_options)

    def counts(self) -> GuardCounts:
        """The guard's counters (see :class:`~halfclose.client.GuardCounts`)."""
        return self.guard.counts()


def httpx_client(
    *, network: str = "default", guard: Guard | None = None, **guard_options: typing.Any
) -> GuardedClient:
    """An httpx Client guarded against half-closed keep-alive connections, in one line.

    Args:
        network: the DNS cache's network key.
        guard: a guard to share (then *network* and *guard_options* are unused).
        guard_options: passed to :class:`~halfclose.client.Guard`.

    Example:
        >>> import halfclose.client
        >>> with halfclose.client.httpx_client(network="lab") as client:
        ...     pass   # client.get("http://img.lab.test/")
    """
    return GuardedClient(guard=guard if guard is not None else Guard(network=network, **guard_options))
