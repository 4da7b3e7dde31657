"""aiohttp integration: a ClientSession that uses a :class:`Guard`, in one line.

aiohttp already closes a pooled connection when the server's FIN arrives (its protocol sees the
end of stream on the event loop) and sends an idempotent request once more when a reused
connection failed. The guard adds, through aiohttp's public interfaces but one
(``BaseConnector._release``, where a connection goes back to the pool: one call per request where
a release callback costs four; the aiohttp range is pinned and the seam tested):

* the DNS cache, as an ``aiohttp.abc.AbstractResolver`` (aiohttp's own 10 s cache is turned off,
  so the guard's TTL floor and serve-stale rules apply);
* retirement before the server's idle timeout (``Keep-Alive: timeout=N``, learned, profile): a
  ``TCPConnector`` whose ``connect`` hands out a pooled connection only when
  :meth:`Guard.may_reuse` allows it (one ``epoll_wait(0)`` decides while nothing arrived on its
  socket and its idle age is below the cached limit), otherwise closes it and takes or opens
  another; and whose
  retirement timer (the event loop's ``call_later``) closes a connection still pooled at
  :meth:`Guard.retire_in`, before the server's timer fires;
* a reuse counted and taught to the learner when its connection goes back to the pool after its
  response (in ``_release``; the learner only when the reuse's idle age is outside the bounds
  it knows, the count without the guard's lock: :meth:`Guard.add_tally`);
* in a client middleware: the ``Keep-Alive`` hint of each response head (``headers.get``, the
  guard called only when there is one), and the guard's retry rule for what aiohttp does not
  send again itself (a request that is not idempotent, with an ``Idempotency-Key`` header);
  idempotent requests take no frame of their own there.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import select
import socket
import typing

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from halfclose.client._dns import DnsError
from halfclose.client._guard import Guard, Origin, guard_from_options
from halfclose.client._policy import has_idempotency_key
from halfclose.client._sockcheck import is_established

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


#: What the connector tells the middleware of a request it was asked about (one that is not
#: idempotent, see ``GuardedConnector._hc_asked``) that went out on a reused connection: its
#: origin and idle age.
_Seen = tuple[Origin, float]


#: What the look set watches for (Linux ``epoll``; 0 elsewhere), and the most events read at once
#: (when that many sockets hold something, each connection is looked at by itself).
_LOOK_EVENTS = select.EPOLLIN | select.EPOLLRDHUP if hasattr(select, "epoll") else 0
_LOOK_MAX = 64


class _Conn:
    """The guard's record of one aiohttp connection, made when it opens: its origin, socket and
    release callback are looked up once per connection, not once per request."""

    __slots__ = ("connector", "fd", "limit", "lower", "origin", "proto", "reused", "since", "sock", "teach",
                 "timer", "tls", "tried", "upper", "version")

    def __init__(self, connector: GuardedConnector, proto: aiohttp.client_proto.ResponseHandler,
                 origin: Origin, sock: socket.socket | None, tls: bool) -> None:
        self.connector, self.proto, self.origin, self.sock, self.tls = connector, proto, origin, sock, tls
        #: Its descriptor in the connector's look set, or -1 when it is not in it.
        self.fd = -1
        #: When it last went back to the pool (the guard's clock); None while it carries an exchange.
        self.since: float | None = None
        #: The idle age from which it is not reused, as of :attr:`Guard.timeouts_version` *version*.
        self.limit, self.version = 0.0, -1
        #: The learner's bounds on the server's idle timeout as of *version* (-inf, inf: none): a
        #: reuse at an idle age at or below *lower* and below *upper* teaches it nothing.
        self.lower, self.upper = -math.inf, math.inf
        #: The exchange it carries as a reuse: the idle age it was taken at (None: not a reuse),
        #: and whether that teaches the learner something; noted when it goes back to the pool.
        self.reused: float | None = None
        self.teach = False
        #: Its pending retirement timer (one at most: pooled again before it fires, it keeps it).
        self.timer: asyncio.TimerHandle | None = None
        #: :attr:`Guard.timeouts_version` when :meth:`Guard.retire_in` last said "no timer" for it.
        self.tried = -1


class GuardedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that retires pooled connections before the server's idle timeout."""

    def __init__(self, *, guard: Guard, **options: typing.Any) -> None:
        if guard.use_dns_cache:
            options.setdefault("resolver", GuardedResolver(guard))
            options.setdefault("use_dns_cache", False)
        super().__init__(**options)
        self.guard = guard
        self._hc_conns: dict[aiohttp.client_proto.ResponseHandler, _Conn] = {}
        # Pooled with no retirement timer because the server's idle timeout was not known then
        # (aiohttp releases a connection at the end of the body, which may come before the
        # response head reaches the middleware); tried again when what the timeouts derive from
        # changes (a Keep-Alive hint, a learned bound, an RTT).
        self._hc_unarmed: dict[_Conn, None] = {}
        self._hc_seen = -1  # Guard.timeouts_version when every unarmed connection was last tried
        # Requests the middleware wants to hear about (those not idempotent, for the retry rule):
        # the connector notes which connection each went out on. Keyed by the request object: one
        # the middleware did not ask about (a new one made by a middleware further in) is not noted.
        self._hc_asked: dict[aiohttp.ClientRequest, _Seen | None] = {}
        # Exchanges on reused connections, counted here without the guard's lock (the event loop
        # is the only thread that changes it); Guard.counts() adds it.
        self.hc_reused = 0
        self._hc_tally = self._hc_counts
        guard.add_tally(self._hc_tally)
        # Every connection's socket, for input (level-triggered: what is unread now); nobody waits
        # on it. Sockets leave it by themselves when they close.
        self._hc_look: select.epoll | None = None
        self._hc_clock = guard.clock

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[typing.Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.connector.Connection:
        guard = self.guard
        while True:
            conn = await _tcp_connect(self, req, traces, timeout)
            proto = conn.protocol
            c = self._hc_conns.get(proto) if proto is not None else None
            if c is None or c.since is None:  # new (or never pooled): nothing to check
                if c is None and proto is not None:
                    self._hc_new(req, proto)
                return conn
            idle, c.since = self._hc_clock() - c.since, None
            # What Guard.may_reuse decides, with the idle age it refuses from cached per
            # connection: yes when nothing arrived on the socket and the age is below that.
            if idle < c.limit and c.version == guard.timeouts_version:
                look = self._hc_look  # nothing unread on any socket: _hc_quiet's answer, without a call
                if (look is not None and c.fd >= 0 and not look.poll(0, _LOOK_MAX)) or self._hc_quiet(c):
                    # the learner's bounds cached on it are those of this version too
                    c.reused, c.teach = idle, idle > c.lower or idle >= c.upper
                    if self._hc_asked and req in self._hc_asked:
                        self._hc_asked[req] = (c.origin, idle)
                    return conn
            if self._hc_may_reuse(c, idle):
                c.reused, c.teach = idle, True
                if req in self._hc_asked:
                    self._hc_asked[req] = (c.origin, idle)
                return conn
            self._hc_forget(c)
            conn.close()
            self.hc_arm()  # the guard may have learned the server's idle timeout

    def _release(self, key: typing.Any, protocol: aiohttp.client_proto.ResponseHandler, *,
                 should_close: bool = False) -> None:
        # aiohttp's seam where a connection goes back to the pool (or closes): one call, where a
        # release callback (Connection.add_callback) would cost four per request.
        c = self._hc_conns.get(protocol)
        if c is not None:  # back in the pool (or closed): its idle age starts
            reused = c.reused
            if reused is not None:
                # A reuse that carried its response (aiohttp closes instead when it failed, or
                # when the response was closed before its end): what Guard.exchange_done notes
                # of it, inline; the learner is called only when the reuse teaches it something.
                c.reused = None
                if not should_close:
                    self.hc_reused += 1
                    if c.teach:
                        self.guard.learner.record_reuse_ok(c.origin.key, idle=reused)
            c.since = self._hc_clock()
            # A pending timer moves itself when it fires; none is tried again only if what the
            # server's idle timeout derives from has changed since it was last tried.
            if c.timer is None and c.tried != self.guard.timeouts_version:
                self._hc_try_arm(c)
        _tcp_release(self, key, protocol, should_close=should_close)

    def _hc_quiet(self, c: _Conn) -> bool:
        """Whether nothing waits unread on pooled *c*'s socket: no byte, no FIN, no reset (then it
        is ESTABLISHED). One ``epoll_wait(0)`` on the look set of all the connector's sockets;
        the event loop reads what arrives, so a socket it names is one the loop has not read yet."""
        look = self._hc_look
        if look is None or c.fd < 0:
            return c.sock is not None and is_established(c.sock)
        try:
            events = look.poll(0, _LOOK_MAX)
        except (OSError, ValueError):
            return False
        if not events:
            return True
        return len(events) < _LOOK_MAX and all(fd != c.fd for fd, _ in events)

    def _hc_may_reuse(self, c: _Conn, idle: float) -> bool:
        """:meth:`Guard.may_reuse` for pooled *c* (it counts, learns and logs), and *c*'s cached
        idle age from which it is not reused."""
        guard, sock = self.guard, c.sock
        if sock is None:
            return True
        c.version = guard.timeouts_version
        c.limit = guard.reuse_limit(c.origin, sock)
        b = guard.learner.bounds(c.origin.key)
        c.lower = -math.inf if b.lower is None else b.lower
        c.upper = math.inf if b.upper is None else b.upper
        return guard.may_reuse(c.origin, sock, idle=idle, tls=c.tls, peek=False)

    def _hc_new(self, req: aiohttp.ClientRequest, proto: aiohttp.client_proto.ResponseHandler) -> _Conn:
        """A connection aiohttp just opened: its record (and those of closed ones are dropped)."""
        for old in [o for o in self._hc_conns.values() if not o.proto.is_connected()]:
            self._hc_forget(old)
        transport = proto.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        c = self._hc_conns[proto] = _Conn(self, proto, _origin(req.url), sock, tls)
        self.guard.connected(c.origin, sock)
        if sock is not None and _LOOK_EVENTS:
            with contextlib.suppress(OSError, ValueError):  # then its socket is looked at by itself
                if self._hc_look is None:
                    self._hc_look = select.epoll()
                fd = sock.fileno()
                self._hc_look.register(fd, _LOOK_EVENTS)
                c.fd = fd
        return c

    def _hc_forget(self, c: _Conn) -> None:
        self._hc_conns.pop(c.proto, None)
        self._hc_unarmed.pop(c, None)
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None

    def _hc_try_arm(self, c: _Conn) -> None:
        """Start pooled *c*'s retirement timer if the server's idle timeout is known now."""
        if c.sock is None:
            return
        version = self.guard.timeouts_version
        after = self.guard.retire_in(c.origin, c.sock)
        if after is None:
            c.tried = version
            self._hc_unarmed[c] = None
            return
        self._hc_unarmed.pop(c, None)
        since = c.since if c.since is not None else self.guard.clock()
        self._hc_schedule(c, after - (self.guard.clock() - since))

    def hc_arm(self) -> None:
        """Start the retirement timers of pooled connections that have none yet, if what the
        server's idle timeout derives from changed since they were last tried (called once a
        response head arrived: its ``Keep-Alive`` hint may have made it known)."""
        version = self.guard.timeouts_version
        if not self._hc_unarmed or version == self._hc_seen:
            return
        self._hc_seen = version
        for c in list(self._hc_unarmed):
            if c.since is not None and c.timer is None and c.tried != version:
                self._hc_try_arm(c)

    def _hc_schedule(self, c: _Conn, delay: float) -> None:
        c.timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._retire, c)

    def _retire(self, c: _Conn) -> None:
        """The retirement timer: close *c* if it is still pooled and has been idle long enough;
        if it was pooled again since the timer was set, wait for its new deadline instead."""
        c.timer = None
        since = c.since
        if not c.proto.is_connected():
            self._hc_forget(c)
            return
        if since is None or c.sock is None:
            return  # out of the pool: its next release arms a timer again
        after = self.guard.retire_in(c.origin, c.sock)
        idle = self.guard.clock() - since
        if after is None:  # the timeout is no longer known: armed again once it is
            c.tried = self.guard.timeouts_version
            self._hc_unarmed[c] = None
            return
        if idle < after:
            self._hc_schedule(c, after - idle)
            return
        self._hc_forget(c)
        c.proto.close()
        self.guard.retired(c.origin, idle=idle)

    def _hc_counts(self) -> dict[str, int]:
        return {"reused": self.hc_reused}

    async def close(self, *, abort_ssl: bool = False) -> None:
        self.guard.remove_tally(self._hc_tally)
        for c in list(self._hc_conns.values()):
            self._hc_forget(c)
        look, self._hc_look = self._hc_look, None
        if look is not None:
            look.close()
        await super().close(abort_ssl=abort_ssl)
        self.guard.detach()


def _middleware(connector: GuardedConnector) -> typing.Any:
    guard, asked = connector.guard, connector._hc_asked

    async def guard_middleware(
        request: aiohttp.ClientRequest, handler: typing.Callable[[aiohttp.ClientRequest], typing.Any]
    ) -> aiohttp.ClientResponse:
        # The reuse a response came on is noted by the connector when its connection goes back to
        # the pool; here: the retry rule for what aiohttp does not send again, and the hint.
        if request.method in _IDEMPOTENT:  # aiohttp sends it again itself
            response: aiohttp.ClientResponse = await handler(request)
        else:
            response = await guarded(request, handler)
        keep_alive = response.headers.get(_KEEP_ALIVE)
        if keep_alive is not None:  # its hint may make the server's idle timeout known
            guard.exchange_done(_origin(request.url), reused=False, idle=None, keep_alive=keep_alive)
            connector.hc_arm()
        return response

    async def guarded(
        request: aiohttp.ClientRequest, handler: typing.Callable[[aiohttp.ClientRequest], typing.Any]
    ) -> aiohttp.ClientResponse:
        asked[request] = None
        try:
            try:
                response: aiohttp.ClientResponse = await handler(request)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                seen = asked.get(request)
                if seen is None:
                    raise  # not on a reused connection
                origin, idle = seen
                reason = guard.exchange_failed(
                    origin, method=request.method, idempotency_key=has_idempotency_key(dict(request.headers)),
                    bytes_written=1, reused=True, idle=idle, response_started=False,
                    replayable=isinstance(request.body, aiohttp.payload.BytesPayload),
                )
                connector.hc_arm()  # it may have learned the server's idle timeout
                if reason is None:
                    raise
                asked[request] = None
                response = await handler(request)
        finally:
            asked.pop(request, None)
        return response

    return guard_middleware


_IDEMPOTENT = aiohttp.client.IDEMPOTENT_METHODS
_KEEP_ALIVE = aiohttp.hdrs.KEEP_ALIVE
_tcp_connect = aiohttp.TCPConnector.connect
_tcp_release = aiohttp.TCPConnector._release


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
