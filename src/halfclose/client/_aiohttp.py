"""aiohttp integration: a ClientSession that uses a :class:`Guard`, in one line.

aiohttp already closes a pooled connection when the server's FIN arrives (its protocol sees the
end of stream on the event loop) and sends an idempotent request once more when a reused
connection failed. The guard adds, through aiohttp's public interfaces:

* the DNS cache, as an ``aiohttp.abc.AbstractResolver`` (aiohttp's own 10 s cache is turned off,
  so the guard's TTL floor and serve-stale rules apply);
* retirement before the server's idle timeout (``Keep-Alive: timeout=N``, learned, profile): a
  ``TCPConnector`` whose ``connect`` hands out a pooled connection only when
  :meth:`Guard.may_reuse` allows it, otherwise closes it and takes or opens another; and whose
  retirement timer (the event loop's ``call_later``) closes a connection still pooled at
  :meth:`Guard.retire_in`, before the server's timer fires;
* the guard's retry rule for the rest (an ``Idempotency-Key`` header), and the ``Keep-Alive`` hint
  and the counters, in a client middleware.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import socket
import typing
import weakref
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from halfclose.client._dns import DnsError
from halfclose.client._guard import Guard, Origin, guard_from_options
from halfclose.client._policy import has_idempotency_key

__all__ = ["GuardedConnector", "GuardedResolver", "aiohttp_session"]


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver interface over the guard's DNS cache (lookups that miss run in a thread)."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await asyncio.to_thread(self._guard.addresses, host)
        except DnsError as exc:
            raise OSError(socket.EAI_NONAME, str(exc)) from exc
        out: list[ResolveResult] = []
        for a in addresses:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            if family in (socket.AF_UNSPEC, fam):
                out.append(ResolveResult(hostname=host, host=a, port=port, family=fam, proto=0,
                                         flags=socket.AI_NUMERICHOST))
        if not out:
            raise OSError(socket.EAI_NONAME, f"{host} has no address of family {family.name}")
        return out

    async def close(self) -> None:
        return None


@dataclass(kw_only=True)
class _Exchange:
    reused: bool = False
    idle: float | None = None


_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar("halfclose_aiohttp", default=None)


class GuardedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that retires pooled connections before the server's idle timeout."""

    def __init__(self, *, guard: Guard, **options: typing.Any) -> None:
        if guard.use_dns_cache:
            options.setdefault("resolver", GuardedResolver(guard))
            options.setdefault("use_dns_cache", False)
        super().__init__(**options)
        self.guard = guard
        self._hc_idle_since: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()
        # Pooled before their response's Keep-Alive was read (aiohttp releases a connection at the
        # end of the body, which may come before the response head reaches the middleware).
        self._hc_unarmed: weakref.WeakKeyDictionary[aiohttp.client_proto.ResponseHandler, Origin] = (
            weakref.WeakKeyDictionary())
        # One pending retirement timer per connection at most: a connection pooled again before its
        # timer fires keeps that timer, which moves itself to the new deadline when it fires.
        self._hc_timers: weakref.WeakKeyDictionary[aiohttp.client_proto.ResponseHandler, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary())

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[typing.Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.connector.Connection:
        origin = _origin(req.url)
        while True:
            conn = await super().connect(req, traces, timeout)
            proto = conn.protocol
            since = self._hc_idle_since.pop(proto, None) if proto is not None else None
            if proto is not None:
                self._hc_unarmed.pop(proto, None)
            idle = None if since is None else self.guard.clock() - since
            transport = conn.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if idle is not None and sock is not None:
                tls = transport is not None and transport.get_extra_info("sslcontext") is not None
                if not self.guard.may_reuse(origin, sock, idle=idle, tls=tls, peek=False):
                    conn.close()
                    continue
            elif since is None:
                self.guard.connected(origin, sock)
            exchange = _EXCHANGE.get()
            if exchange is not None:
                exchange.reused, exchange.idle = idle is not None, idle
            if proto is not None:
                conn.add_callback(self._released(proto, origin))
            return conn

    def _released(self, proto: aiohttp.client_proto.ResponseHandler, origin: Origin) -> typing.Callable[[], None]:
        def mark() -> None:  # the connection went back to the pool (or closed): its idle age starts
            self._hc_idle_since[proto] = self.guard.clock()
            if proto not in self._hc_timers:  # else its pending timer moves itself when it fires
                self._hc_unarmed[proto] = origin
                self.hc_arm(origin)

        return mark

    def hc_arm(self, origin: Origin) -> None:
        """Start the retirement timer of *origin*'s pooled connections that have none yet, now that
        the server's idle timeout may be known (called at release and once a response head arrived)."""
        for proto, o in list(self._hc_unarmed.items()):
            since = self._hc_idle_since.get(proto)
            transport = proto.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if o != origin or since is None or sock is None:
                continue
            after = self.guard.retire_in(origin, sock)
            if after is not None:
                del self._hc_unarmed[proto]
                self._hc_schedule(proto, origin, after - (self.guard.clock() - since))

    def _hc_schedule(self, proto: aiohttp.client_proto.ResponseHandler, origin: Origin, delay: float) -> None:
        self._hc_timers[proto] = asyncio.get_running_loop().call_later(max(delay, 0.0), self._retire, proto, origin)

    def _retire(self, proto: aiohttp.client_proto.ResponseHandler, origin: Origin) -> None:
        """The retirement timer: close *proto* if it is still pooled and has been idle long enough;
        if it was pooled again since the timer was set, wait for its new deadline instead."""
        self._hc_timers.pop(proto, None)
        since = self._hc_idle_since.get(proto)
        if since is None or not proto.is_connected():
            return  # out of the pool (its next release arms a timer again) or closed
        transport = proto.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        after = self.guard.retire_in(origin, sock) if sock is not None else None
        idle = self.guard.clock() - since
        if after is None:  # the timeout is no longer known: armed again once it is
            self._hc_unarmed[proto] = origin
            return
        if idle < after:
            self._hc_schedule(proto, origin, after - idle)
            return
        self._hc_unarmed.pop(proto, None)
        del self._hc_idle_since[proto]
        proto.close()
        self.guard.retired(origin, idle=idle)

    async def close(self, *, abort_ssl: bool = False) -> None:
        await super().close(abort_ssl=abort_ssl)
        self.guard.detach()


def _middleware(connector: GuardedConnector) -> typing.Any:
    guard = connector.guard

    async def guard_middleware(
        request: aiohttp.ClientRequest, handler: typing.Callable[[aiohttp.ClientRequest], typing.Any]
    ) -> aiohttp.ClientResponse:
        exchange = _Exchange()
        token = _EXCHANGE.set(exchange)
        try:
            origin = _origin(request.url)
            try:
                response: aiohttp.ClientResponse = await handler(request)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if not exchange.reused or request.method in aiohttp.client.IDEMPOTENT_METHODS:
                    raise  # aiohttp has already sent idempotent requests again
                reason = guard.exchange_failed(
                    origin, method=request.method, idempotency_key=has_idempotency_key(dict(request.headers)),
                    bytes_written=1, reused=True, idle=exchange.idle, response_started=False,
                    replayable=isinstance(request.body, aiohttp.payload.BytesPayload),
                )
                if reason is None:
                    raise
                response = await handler(request)
            guard.exchange_done(origin, reused=exchange.reused, idle=exchange.idle,
                                keep_alive=response.headers.get("Keep-Alive"))
            connector.hc_arm(origin)
            return response
        finally:
            _EXCHANGE.reset(token)

    return guard_middleware


_ORIGINS: dict[tuple[str, str, int], Origin] = {}


def _origin(url: typing.Any) -> Origin:
    """The guard's origin of a request URL (made once per scheme, host and port)."""
    key = (url.scheme, url.host or "", url.port or 0)
    origin = _ORIGINS.get(key)
    if origin is None:
        if len(_ORIGINS) > 1000:
            _ORIGINS.clear()
        origin = _ORIGINS[key] = Origin(scheme=key[0], host=key[1], port=key[2])
    return origin


_CONNECTOR_OPTIONS = frozenset(inspect.signature(aiohttp.TCPConnector.__init__).parameters) - {"self"}


def aiohttp_session(
    *, network: str = "default", guard: Guard | None = None, **options: typing.Any
) -> aiohttp.ClientSession:
    """An aiohttp ClientSession guarded against half-closed keep-alive connections, in one line.

    Call it inside a running event loop (as for ``aiohttp.ClientSession``). The session's
    connector is a :class:`GuardedConnector`: read the counters as
    ``session.connector.guard.counts()`` (aiohttp discourages subclassing or extending sessions).

    Args:
        network: the DNS cache's network key (unused when *guard* is given).
        guard: a guard to share.
        options: options of :class:`~halfclose.client.Guard` when no *guard* is given; options of
            ``aiohttp.TCPConnector`` (``limit``, ``ssl``, ``keepalive_timeout``, ...) go to the
            guarded connector; all others to ``aiohttp.ClientSession`` (``timeout``,
            ``headers``, ``middlewares``, ...).

    Raises:
        TypeError: ``connector=`` (it would not be guarded).

    Example:
        >>> import asyncio, halfclose.client
        >>> async def main() -> None:
        ...     async with halfclose.client.aiohttp_session(network="lab") as session:
        ...         pass   # await session.get("http://img.lab.test/")
        >>> asyncio.run(main())
    """
    guard, rest = guard_from_options("aiohttp_session", network=network, guard=guard, options=options)
    if "connector" in rest:
        raise TypeError("aiohttp_session: connector= would not be guarded; give its options "
                        "(limit=, ssl=, keepalive_timeout=, ...) to aiohttp_session instead")
    connector_options = {k: rest.pop(k) for k in list(rest) if k in _CONNECTOR_OPTIONS}
    connector = GuardedConnector(guard=guard, **connector_options)
    middlewares = (_middleware(connector), *rest.pop("middlewares", ()))
    guard.attach()
    return aiohttp.ClientSession(connector=connector, middlewares=middlewares, **rest)
