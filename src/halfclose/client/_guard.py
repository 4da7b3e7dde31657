"""The guard: one object that every integration consults, holding what is learned and counted.

A :class:`Guard` brings together the pure parts (:mod:`._policy`, :mod:`._dns`, :mod:`._profile`)
and the socket look (:mod:`._sockcheck`). Integrations call four methods:

* :meth:`Guard.connect` for every new connection (DNS through the cache, then TCP);
* :meth:`Guard.may_reuse` before a pooled connection carries another request;
* :meth:`Guard.exchange_done` when a response head arrived;
* :meth:`Guard.exchange_failed` when a request failed before any response byte, which says whether
  to send it again.

and, to close idle connections at the server's FIN (:mod:`._watch`), :meth:`Guard.watch_idle` when
a connection goes back to its pool and :meth:`Guard.checkout` when it is taken out again. Clients
call :meth:`Guard.attach` when they start and :meth:`Guard.detach` when they close: the watcher
stops with the last client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
import threading
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from halfclose.client._dns import DnsCache, DnsCounts, DnsError, DnsPolicy, dnspython_resolver
from halfclose.client._policy import (
    IdleTimeout,
    KeepAlivePolicy,
    RetryReason,
    TimeoutLearner,
    choose_timeout,
    parse_keep_alive,
    retry_reason,
)
from halfclose.client._profile import Profile, load_profile
from halfclose.client._sockcheck import SocketState, is_established, probe, read_tcp_info
from halfclose.client._tfo import TCP_FASTOPEN_CONNECT, FastOpen, FastOpenResult
from halfclose.client._watch import CLOSED, LoopWatcher, ThreadWatcher, Watch, Watcher

__all__ = ["Guard", "GuardCounts", "Origin", "SocketOptions", "guard_from_options"]

#: Decisions are logged at DEBUG level on this logger (one line each).
log = logging.getLogger("halfclose.client")


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """Where a connection goes: scheme, host name (as in the URL) and port.

    Example:
        >>> Origin(scheme="https", host="IMG.lab.test", port=443).key
        'https://img.lab.test:443'
    """

    scheme: str
    host: str
    port: int
    #: The origin as one string (lower case, no trailing dot).
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.scheme.lower()}://{self.host.lower().rstrip('.')}:{self.port}")


class SocketOptions(typing.TypedDict, total=False):
    """How :meth:`Guard.open_socket` (and :meth:`Guard.connect`) open a socket."""

    #: The local address to bind to first.
    source_address: tuple[str, int] | None
    #: ``setsockopt`` arguments, applied before ``connect()``.
    socket_options: Sequence[tuple[int, int, int | bytes]] | None
    #: What the first write carries may be sent twice (Fast Open may put it in the SYN).
    replay_safe: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardCounts:
    """What a guard did, for the application to read and log.

    Attributes:
        new_connections: TCP connections opened.
        reused: idle connections that carried another exchange and got a response.
        retired_early: idle connections closed because the server's idle timeout was near.
        half_closed_skipped: idle connections not reused because the server had closed them
            (FIN seen: CLOSE_WAIT or end of stream).
        broken_skipped: idle connections not reused because they were reset or the server had
            sent something unasked.
        closed_at_fin: idle pooled connections closed the moment the server's FIN or reset arrived.
        fast_open_syn_data: new connections whose SYN carried data the server took (TCP Fast Open).
        fast_open_failed: Fast Open connections whose SYN data the path lost or the server ignored
            (the destination then goes without Fast Open for a while).
        retried_nothing_written: requests sent again because none of their bytes had been written.
        retried_idempotent: requests sent again because the method is idempotent.
        retried_idempotency_key: requests sent again because of an ``Idempotency-Key`` header.
        not_retried: failures on reused connections that were not safe to repeat (raised).
        dns_hits, dns_misses, dns_stale, dns_prefetches, dns_failures: see
            :class:`~halfclose.client.DnsCounts`.
    """

    new_connections: int = 0
    reused: int = 0
    retired_early: int = 0
    half_closed_skipped: int = 0
    broken_skipped: int = 0
    closed_at_fin: int = 0
    fast_open_syn_data: int = 0
    fast_open_failed: int = 0
    retried_nothing_written: int = 0
    retried_idempotent: int = 0
    retried_idempotency_key: int = 0
    not_retried: int = 0
    dns_hits: int = 0
    dns_misses: int = 0
    dns_stale: int = 0
    dns_prefetches: int = 0
    dns_failures: int = 0

    @property
    def retries(self) -> int:
        """All requests sent again, whatever the reason."""
        return self.retried_nothing_written + self.retried_idempotent + self.retried_idempotency_key

    def as_dict(self) -> dict[str, int]:
        """The counters as a flat mapping, ready for a log line or a metrics exporter."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


_RETRY_FIELD = {
    RetryReason.NOTHING_WRITTEN: "retried_nothing_written",
    RetryReason.IDEMPOTENT_METHOD: "retried_idempotent",
    RetryReason.IDEMPOTENCY_KEY: "retried_idempotency_key",
}


@dataclass(kw_only=True)
class Guard:
    """Keep-alive guard and DNS cache shared by the connections of one client.

    Args:
        network: the DNS cache's network key (set it per network the device is on).
        policy: when idle connections are retired.
        profile: server idle timeouts: a :class:`~halfclose.client.Profile`, a mapping of server
            name to seconds, or the path of a profile file (``halfclose analyze --profile``).
        dns: the DNS cache; by default one of its own, over *nameservers* (or /etc/resolv.conf).
        nameservers: DNS servers for the default cache; None uses the system's configuration.
        dns_port: their port.
        dns_policy: TTL floor, cap and serve-stale timers for the default cache.
        use_dns_cache: False leaves name resolution to the system (``getaddrinfo``).
        prefer_ipv6: try AAAA addresses before A addresses.
        close_at_fin: close idle pooled connections when the server's FIN or reset arrives
            (Linux ``epoll``); False leaves them to the look before reuse.
        fast_open: open new connections with TCP Fast Open where the kernel allows it, for
            requests safe to replay and for TLS (the ClientHello rides in the SYN); False turns
            it off. A :class:`~halfclose.client.FastOpen` sets its rules.
        clock: a monotonic clock in seconds.

    Example:
        >>> g = Guard(network="lab", profile={"img.lab.test": 2.0})
        >>> g.idle_timeout(Origin(scheme="http", host="img.lab.test", port=80))
        IdleTimeout(seconds=2.0, source=<TimeoutSource.PROFILE: 'profile'>)
        >>> g.counts().retries
        0
    """

    network: str = "default"
    policy: KeepAlivePolicy = field(default_factory=KeepAlivePolicy)
    profile: Profile | Mapping[str, object] | str | Path | None = None
    dns: DnsCache | None = None
    nameservers: Sequence[str] | None = None
    dns_port: int = 53
    dns_policy: DnsPolicy | None = None
    use_dns_cache: bool = True
    prefer_ipv6: bool = False
    close_at_fin: bool = True
    fast_open: bool | FastOpen = True
    clock: Callable[[], float] = time.monotonic
    learner: TimeoutLearner = field(init=False)
    _profile: Profile = field(init=False, repr=False)
    _hints: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _rtts: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    #: Goes up whenever what idle timeouts and margins derive from changes (a ``Keep-Alive`` hint,
    #: a learned bound, an RTT that matters): while it stays the same, :meth:`retire_in` and
    #: :meth:`reuse_limit` give the same answers for the same connection (integrations cache
    #: them on it; an attribute, not a method: it is read once or twice per request).
    timeouts_version: int = field(default=0, init=False)
    _retire: dict[str, tuple[int, float, float | None]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _thread_watcher: ThreadWatcher | None = field(default=None, init=False, repr=False)
    _loop_watchers: dict[asyncio.AbstractEventLoop, LoopWatcher] = field(
        default_factory=dict, init=False, repr=False
    )
    _clients: int = field(default=0, init=False, repr=False)
    _tallies: list[Callable[[], Mapping[str, int]]] = field(default_factory=list, init=False, repr=False)
    _fo: FastOpen = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.fast_open, FastOpen):
            self._fo = self.fast_open
        else:
            self._fo = FastOpen(enabled=bool(self.fast_open), kernel=None if self.fast_open else False,
                                clock=self.clock)
        self.learner = TimeoutLearner(min_timeout=self.policy.min_learned_timeout, on_change=self._learned)
        if isinstance(self.profile, Profile):
            self._profile = self.profile
        elif isinstance(self.profile, str | Path):
            self._profile = load_profile(self.profile)
        elif self.profile is None:
            self._profile = Profile()
        else:
            self._profile = Profile.from_mapping(self.profile)
        if self.dns is None and self.use_dns_cache:
            nameservers, port = self.nameservers, self.dns_port
            self.dns = DnsCache(
                resolve=(dnspython_resolver(nameservers, port=port) if nameservers is not None else None),
                policy=self.dns_policy or DnsPolicy(),
            )

    # -- counters -------------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def add_tally(self, tally: Callable[[], Mapping[str, int]]) -> None:
        """Counters an integration keeps by itself, without the lock, on the one thread that changes
        them (aiohttp's event loop): :meth:`counts` adds what *tally* returns."""
        with self._lock:
            self._tallies.append(tally)

    def remove_tally(self, tally: Callable[[], Mapping[str, int]]) -> None:
        """*tally*'s client closed: what it counted joins the guard's own counters."""
        with self._lock:
            if tally in self._tallies:
                self._tallies.remove(tally)
                for name, n in tally().items():
                    self._counts[name] = self._counts.get(name, 0) + n

    def counts(self) -> GuardCounts:
        """A snapshot of the counters (DNS counters are those of the guard's cache)."""
        with self._lock:
            merged = dict(self._counts)
            for tally in self._tallies:
                for name, n in tally().items():
                    merged[name] = merged.get(name, 0) + n
            counts = GuardCounts(**merged)
        d = self.dns.counts() if self.dns is not None else DnsCounts()
        return replace(
            counts,
            dns_hits=d.hits,
            dns_misses=d.misses,
            dns_stale=d.stale,
            dns_prefetches=d.prefetches,
            dns_failures=d.failures,
        )

    # -- idle timeouts --------------------------------------------------------------------------

    def idle_timeout(self, origin: Origin, *, address: str | None = None) -> IdleTimeout | None:
        """The idle timeout the guard believes *origin*'s server has (rule 1 of ``_policy``).

        *address*, the address the connection goes to, finds profile entries written for servers
        the capture showed no name for.
        """
        with self._lock:
            header = self._hints.get(origin.key)
        return choose_timeout(
            header=header,
            learned=self.learner.estimate(origin.key),
            profile=self._profile.idle_timeout(origin.host, origin.port, address=address),
            default=self.policy.default_timeout,
        )

    def _learned(self) -> None:
        self.timeouts_version += 1

    def _retirement(self, origin: Origin, address: str | None) -> tuple[float, float | None]:
        """The idle age from which *origin*'s connections are not reused (``inf``: never), and the one
        at which the retirement timer closes them (None: no timer), cached until what they derive
        from changes."""
        stamp = self.timeouts_version
        if address is None:
            hit = self._retire.get(origin.key)
            if hit is not None and hit[0] == stamp:
                return hit[1], hit[2]
        timeout = self.idle_timeout(origin, address=address)
        rtt = self._rtts.get(origin.key)
        at = math.inf if timeout is None else timeout.seconds - self.policy.margin(timeout.seconds, rtt=rtt)
        timer = self.policy.retire_after(timeout, rtt=rtt)
        if address is None:
            self._retire[origin.key] = (stamp, at, timer)
        return at, timer

    def _profile_address(self, sock: socket.socket) -> str | None:
        """*sock*'s peer address when the profile has entries (they may name an address: servers the
        capture showed no name for), else None."""
        if not self._profile.timeouts:
            return None
        try:
            return str(sock.getpeername()[0])
        except (OSError, IndexError):
            return None

    def _note_rtt(self, origin: Origin, rtt: float | None) -> None:
        if not rtt:
            return
        with self._lock:
            old = self._rtts.get(origin.key)
            self._rtts[origin.key] = rtt
            if old != rtt and self.policy.margin_rtts * max(old or 0.0, rtt) > self.policy.margin_floor:
                self.timeouts_version += 1  # the margin depends on it

    def may_reuse(
        self,
        origin: Origin,
        sock: socket.socket,
        *,
        idle: float,
        tls: bool | None = None,
        peek: bool = True,
        watch: Watch | None = None,
    ) -> bool:
        """Whether pooled *sock*, idle for *idle* seconds, may carry the next request.

        *peek* False looks at the TCP state only (see :func:`~halfclose.client.probe`): without
        *watch*, one byte of ``TCP_INFO`` unless it is not ESTABLISHED. *watch*, the connection's
        registration with the FIN watcher (just checked out), says whether anything arrived while
        it was pooled: when nothing did, the socket is not looked at; the idle age from which
        *sock* is refused is then cached on it too (with :attr:`timeouts_version`), so that an
        integration can decide the common case inline (:attr:`Watch.limit`).

        False when the server has closed it (counted, and its close age learned), when it is
        broken, or when its idle age is within the margin of the server's idle timeout (counted
        as retired early). The caller then closes it and opens a new one.
        """
        stamp = self.timeouts_version
        if watch is not None and watch.active:  # and still this socket (not closed behind our back)
            unseen = not watch.seen & (-1 if peek else CLOSED) and sock.fileno() == watch.fd
            if unseen and watch.limit_version == stamp and idle < watch.limit:
                return True  # nothing arrived, and below the limit cached on the registration
        else:
            unseen = not peek and is_established(sock)
        if not unseen and not self._look(origin, sock, idle=idle, tls=tls, peek=peek):
            return False
        address = self._profile_address(sock)
        limit = self._retirement(origin, address)[0]  # reuse_limit(), inline
        if idle < limit:
            if watch is not None:
                watch.limit, watch.limit_version = limit, stamp
            return True
        self._count("retired_early")
        timeout = self.idle_timeout(origin, address=address)
        if timeout is not None:
            log.debug("%s: connection idle %.3f s retired (server idle timeout %.3f s from %s, margin %.3f s)",
                      origin.key, idle, timeout.seconds, timeout.source.value,
                      self.policy.margin(timeout.seconds, rtt=self._rtts.get(origin.key)))
        return False

    def reuse_limit(self, origin: Origin, sock: socket.socket) -> float:
        """The idle age from which :meth:`may_reuse` refuses *sock* (``inf``: never); it stays the
        same while :attr:`timeouts_version` does (integrations cache it per connection)."""
        return self._retirement(origin, self._profile_address(sock))[0]

    def _look(self, origin: Origin, sock: socket.socket, *, idle: float, tls: bool | None, peek: bool) -> bool:
        """The look at the socket itself: False when the server closed it or it is broken (counted)."""
        look = probe(sock, tls=tls, peek=peek)
        self._note_rtt(origin, look.rtt)
        if look.state is SocketState.PEER_CLOSED:
            self._count("half_closed_skipped")
            age = idle - look.closed_ago if look.closed_ago is not None else idle
            learned = self.learner.record_closed(
                origin.key, age=max(age, 0.0), exact=look.closed_ago is not None
            )
            log.debug("%s: server closed a connection idle %.3f s (at %.3f s%s); not reused",
                      origin.key, idle, age, "" if learned else ", too early to learn")
            return False
        if not look.state.is_reusable():
            self._count("broken_skipped")
            log.debug("%s: connection idle %.3f s is %s; not reused", origin.key, idle, look.state.value)
            return False
        return True

    def exchange_done(
        self, origin: Origin, *, reused: bool, idle: float | None, keep_alive: str | None
    ) -> None:
        """A response head arrived; *idle* is how long the connection had been idle before."""
        if reused and idle is not None:
            with self._lock:  # _count("reused"), inline: once per reused exchange
                self._counts["reused"] = self._counts.get("reused", 0) + 1
            self.learner.record_reuse_ok(origin.key, idle=idle)
        hint = _parse_keep_alive(keep_alive) if keep_alive else None
        if hint is not None and self._hints.get(origin.key) != hint:
            with self._lock:
                self._hints[origin.key] = hint
                self.timeouts_version += 1

    def exchange_failed(
        self,
        origin: Origin,
        *,
        method: str,
        idempotency_key: bool,
        bytes_written: int,
        reused: bool,
        idle: float | None,
        response_started: bool,
        replayable: bool,
    ) -> RetryReason | None:
        """A request failed with a connection error; return why it may be retried, or None.

        A failure on a reused connection before any response byte teaches the learner that the
        server had closed at that idle age or earlier.
        """
        if reused and not response_started and idle is not None:
            self.learner.record_closed(origin.key, age=idle)
        reason = retry_reason(
            method=method,
            idempotency_key=idempotency_key,
            bytes_written=bytes_written,
            reused=reused,
            response_started=response_started,
            replayable=replayable,
        )
        if reason is not None:
            self._count(_RETRY_FIELD[reason])
            log.debug("%s: %s on a connection idle %s s failed before a response; sent again (%s)",
                      origin.key, method, _secs(idle), reason.value)
        elif reused and not response_started:
            self._count("not_retried")
            log.debug("%s: %s on a connection idle %s s failed before a response; not safe to repeat",
                      origin.key, method, _secs(idle))
        return reason

    # -- closing at the FIN -----------------------------------------------------------------------

    def attach(self) -> None:
        """A client starts using this guard."""
        with self._lock:
            self._clients += 1

    def detach(self) -> None:
        """A client using this guard closed; the last one stops the FIN watchers."""
        with self._lock:
            self._clients = max(self._clients - 1, 0)
            if self._clients:
                return
            watchers: list[Watcher] = list(self._loop_watchers.values())
            if self._thread_watcher is not None:
                watchers.append(self._thread_watcher)
            self._thread_watcher = None
            self._loop_watchers.clear()
        for w in watchers:
            w.stop()

    def _watcher(self, loop: asyncio.AbstractEventLoop | None) -> Watcher:
        with self._lock:
            if loop is None:
                if self._thread_watcher is None:
                    self._thread_watcher = ThreadWatcher()
                return self._thread_watcher
            for old in [k for k in self._loop_watchers if k.is_closed()]:
                del self._loop_watchers[old]
            lw = self._loop_watchers.get(loop)
            if lw is None:
                lw = self._loop_watchers[loop] = LoopWatcher(loop=loop)
            return lw

    def watch_idle(
        self,
        origin: Origin,
        sock: socket.socket,
        close: Callable[[], object],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        again: Watch | None = None,
    ) -> Watch | None:
        """Watch pooled *sock* and run *close* the moment the server closes it, or when its idle
        age reaches the retirement timer's (:meth:`~halfclose.client.KeepAlivePolicy.retire_after`:
        the server's idle timeout is known), whichever comes first.

        *loop*: the asyncio event loop of an async client (then the loop watches, no thread).
        *again*: the connection's registration from the last time it was pooled; it is reused
        (no system call) while the watcher still holds it.
        Returns the registration for :meth:`checkout` (and the next *again*), or None when
        nothing watches (or the server closed the connection while it was out: it is closed now).
        """
        if not self.close_at_fin:
            return None
        since = self.clock()
        version = self.timeouts_version
        if again is not None and again.retire_version == version:
            after = again.retire_in  # what retire_in() said for this connection, nothing changed since
        else:
            after = self.retire_in(origin, sock)
        if again is not None and again.watcher is not None:
            # Pooled again: its callbacks, made at its registration, stay (they read its `since`).
            if again.watcher.repool(again, since, after):
                again.retire_in, again.retire_version = after, version
                return again
            if again.fired:
                return None
        try:
            fd = sock.fileno()
        except (OSError, ValueError):
            return None
        if fd < 0:
            return None
        info = read_tcp_info(sock)  # once per connection: its RTT for the margin
        self._note_rtt(origin, info.rtt if info is not None else None)
        registered: list[Watch] = []

        def retired() -> None:
            close()
            self.retired(origin, idle=self.clock() - (registered[0].since if registered else since))

        def closed_by_server() -> None:
            idle = self.clock() - (registered[0].since if registered else since)
            close()
            learned = self.learner.record_closed(origin.key, age=idle, exact=True)
            self._count("closed_at_fin")
            log.debug("%s: server closed a pooled connection idle %.3f s; closed at once%s",
                      origin.key, idle, "" if learned else " (too early to learn)")

        watcher = self._watcher(loop)
        w = watcher.watch(fd, closed_by_server, since=since, expire_in=after, on_expire=retired)
        if w is not None:
            w.watcher = watcher
            w.retire_in, w.retire_version = after, version
            registered.append(w)
        return w

    def retire_in(self, origin: Origin, sock: socket.socket) -> float | None:
        """Idle seconds after which pooled *sock* is closed by the retirement timer (rule 4 of
        ``_policy``), or None for no timer. Integrations that keep their own timers (aiohttp) call
        it when a connection goes back to its pool, and :meth:`retired` once they closed it."""
        if not self.policy.retire_idle:
            return None
        if origin.key not in self._rtts:
            info = read_tcp_info(sock)
            self._note_rtt(origin, info.rtt if info is not None else None)
        return self._retirement(origin, self._profile_address(sock))[1]

    def retired(self, origin: Origin, *, idle: float) -> None:
        """The retirement timer closed a pooled connection of *origin*, idle *idle* seconds (counted)."""
        self._count("retired_early")
        log.debug("%s: pooled connection idle %.3f s closed before the server's idle timeout", origin.key, idle)

    def checkout(self, w: Watch | None) -> bool:
        """A watched connection leaves the pool; False when the server had closed it (it is closed).

        The registration stays (pass it to :meth:`may_reuse`, and as *again* to
        :meth:`watch_idle`) until :meth:`unwatch`.
        """
        if w is None or w.watcher is None:
            return True
        return w.watcher.checkout(w)

    def unwatch(self, w: Watch | None) -> None:
        """The connection of registration *w* is closing (its socket still open): forget it."""
        if w is not None and w.watcher is not None:
            w.watcher.unwatch(w)

    def watching(self) -> int:
        """Pooled connections watched now (by the thread and every loop)."""
        with self._lock:
            watchers: list[Watcher] = list(self._loop_watchers.values())
            if self._thread_watcher is not None:
                watchers.append(self._thread_watcher)
        return sum(w.pooled() for w in watchers)

    def watcher_thread_running(self) -> bool:
        """Whether the FIN watcher's thread is alive now."""
        with self._lock:
            tw = self._thread_watcher
        return tw is not None and tw.running()

    # -- connecting -----------------------------------------------------------------------------

    def addresses(self, host: str) -> list[str]:
        """Addresses to try for *host*, from the DNS cache (raises :class:`DnsError`)."""
        if self.dns is None:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            return list(dict.fromkeys(str(i[4][0]) for i in infos))
        return self.dns.addresses(host, network=self.network, prefer_ipv6=self.prefer_ipv6)

    def connect(
        self, host: str, port: int, *, timeout: float | None, **options: typing.Unpack[SocketOptions]
    ) -> socket.socket:
        """Open a TCP connection to *host* through the DNS cache, trying each address in turn.

        *options* are :meth:`open_socket`'s. With *replay_safe* (what the first write will carry
        may be sent twice) and Fast Open allowed for the address, the socket gets
        ``TCP_FASTOPEN_CONNECT``: ``connect()`` returns at once and the first write goes in the
        SYN; :meth:`fast_open_used` tells such sockets.

        Raises:
            DnsError: the name could not be resolved.
            OSError: no address accepted the connection (the last error).
        """
        last: OSError | None = None
        for address in self.addresses(host):
            try:
                sock = self.open_socket(address, port, timeout=timeout, **options)
            except OSError as exc:
                last = exc
                continue
            self.connected()
            return sock
        if last is None:
            raise DnsError(f"{host} has no address to connect to")
        raise last

    def open_socket(
        self,
        address: str,
        port: int,
        *,
        timeout: float | None,
        source_address: tuple[str, int] | None = None,
        socket_options: Sequence[tuple[int, int, int | bytes]] | None = None,
        replay_safe: bool = False,
    ) -> socket.socket:
        """Connect to one *address* (with Fast Open as :meth:`connect` says); raises OSError."""
        sock = self.new_socket(address, port, source_address=source_address, socket_options=socket_options,
                               replay_safe=replay_safe)
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
        except OSError:
            sock.close()
            raise
        return sock

    def new_socket(self, address: str, port: int, **options: typing.Unpack[SocketOptions]) -> socket.socket:
        """A TCP socket for *address* with *options* applied (Fast Open as :meth:`connect` says), bound
        where asked, not connected (for integrations that connect by themselves); raises OSError."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for opt in options.get("socket_options") or ():
                sock.setsockopt(*opt)
            if self._fo.allowed((address, port), replay_safe=options.get("replay_safe", False)):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
            source_address = options.get("source_address")
            if source_address:
                sock.bind(source_address)
        except OSError:
            sock.close()
            raise
        return sock

    def fast_open_allowed(self, address: str, port: int, *, replay_safe: bool) -> bool:
        """Whether a new connection to *address* for something *replay_safe* would use Fast Open."""
        return self._fo.allowed((address, port), replay_safe=replay_safe)

    def connected(self, origin: Origin | None = None, sock: socket.socket | None = None) -> None:
        """Count a new connection (for integrations that connect by themselves).

        With *origin* and *sock*, the connection's RTT is noted for the margin (for integrations
        whose connections the watcher does not hold).
        """
        self._count("new_connections")
        if origin is not None and sock is not None:
            info = read_tcp_info(sock)
            self._note_rtt(origin, info.rtt if info is not None else None)

    def fast_open_used(self, sock: socket.socket) -> bool:
        """Whether *sock* was opened with ``TCP_FASTOPEN_CONNECT``."""
        try:
            return bool(sock.getsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT))
        except (OSError, ValueError):
            return False

    def fast_open_done(self, sock: socket.socket) -> FastOpenResult:
        """After a Fast Open connection's handshake: what its SYN did (counted, failures remembered)."""
        info = read_tcp_info(sock)
        result = (FastOpenResult.UNKNOWN if info is None
                  else FastOpenResult.from_tcp_info(info.options, info.fastopen_client_fail))
        try:
            peer = sock.getpeername()
            destination = (str(peer[0]), int(peer[1]))
        except (OSError, IndexError):
            return result
        self._fo.record(destination, result)
        if result is FastOpenResult.SYN_DATA:
            self._count("fast_open_syn_data")
        elif result.is_failure():
            self._count("fast_open_failed")
            log.debug("%s:%d: SYN data %s; no Fast Open there for %.0f s", destination[0], destination[1],
                      result.value, self._fo.retry_after)
        return result

    def fast_open_disable(self, destination: tuple[str, int]) -> None:
        """Remember that Fast Open to *destination* failed (its first write raised)."""
        self._fo.record(destination, FastOpenResult.SYN_RETRANSMITTED)



#: ``Keep-Alive`` values repeat (one per server): parse each once.
_parse_keep_alive = functools.lru_cache(maxsize=256)(parse_keep_alive)


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def guard_from_options(
    who: str, *, network: str, guard: Guard | None, options: dict[str, Any]
) -> tuple[Guard, dict[str, Any]]:
    """Take :class:`Guard`'s options out of a factory's keyword arguments.

    Returns the guard (*guard*, or a new one for *network* and the options that are Guard's) and
    the remaining options, for the HTTP library.

    Raises:
        TypeError: Guard options were given together with *guard*.

    Example:
        >>> g, rest = guard_from_options("f", network="lab", guard=None, options={"timeout": 3, "prefer_ipv6": True})
        >>> (g.network, g.prefer_ipv6, rest)
        ('lab', True, {'timeout': 3})
    """
    names = {f.name for f in fields(Guard) if f.init}
    mine = {k: v for k, v in options.items() if k in names}
    rest = {k: v for k, v in options.items() if k not in names}
    if guard is not None:
        if mine:
            raise TypeError(f"{who}: {', '.join(mine)} given together with guard=")
        return guard, rest
    return Guard(network=network, **mine), rest
