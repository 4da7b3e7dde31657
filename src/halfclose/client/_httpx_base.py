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
  builds its transports from its options).
"""

from __future__ import annotations

import asyncio
import contextvars
import typing
from dataclasses import dataclass

import anyio.to_thread
import httpcore
import httpx

from halfclose.client._guard import Guard, Origin
from halfclose.client._watch import Watch

__all__ = [
    "ATTEMPT",
    "FRESH_ONLY",
    "STALE",
    "TRANSPORT_OPTIONS",
    "Attempt",
    "Failure",
    "async_fin_watch",
    "async_in_thread",
    "check_client_options",
    "fin_watch",
    "in_thread",
    "keep_alive",
    "may_retry",
    "origin_of",
    "pool_options",
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


@dataclass(kw_only=True)
class Attempt:
    """One request's way through the pool: the failure its connection saw, if any."""

    failure: Failure | None = None


ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("halfclose_attempt", default=None)
#: While set, only connections that never carried an exchange are available (the retry).
FRESH_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("halfclose_fresh_only", default=False)

#: httpx errors that mean "the connection is gone".
STALE = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)

#: Options of :class:`httpx.HTTPTransport` that the guarded transports take too.
TRANSPORT_OPTIONS = (
    "verify", "cert", "trust_env", "http1", "http2", "limits", "proxy", "uds",
    "local_address", "retries", "socket_options",
)


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
    guard: Guard, origin: Origin, sock: typing.Any, aclose: typing.Callable[[], typing.Awaitable[None]]
) -> Watch | None:
    """Watch an idle pooled connection on the running asyncio loop; on the FIN, schedule *aclose*.

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

    return guard.watch_idle(origin, sock, close, loop=loop)


async def _await(aclose: typing.Callable[[], typing.Awaitable[None]]) -> None:
    await aclose()


def fin_watch(guard: Guard, origin: Origin, sock: typing.Any, close: typing.Callable[[], None]) -> Watch | None:
    """The sync twin of :func:`async_fin_watch`: the guard's watcher thread calls *close*."""
    return guard.watch_idle(origin, sock, close)
