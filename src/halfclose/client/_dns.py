"""A DNS cache for HTTP clients: TTL floor and cap, refresh on use, RFC 8767 serve-stale.

The cache itself (:class:`DnsCache`) is a pure core: it takes a clock and a resolver function and
does no I/O of its own. :func:`dnspython_resolver` is the real resolver function (A and AAAA
through dnspython, the system's /etc/resolv.conf or a given nameserver list).

Rules (RFC 8767 numbers are sections of the RFC):

1. Entries are keyed by ``(network, name, type)``; the caller names the network (a Wi-Fi SSID, an
   Android netId, ``"lab"``), so an address learned on one network is never used on another.
2. A positive answer is kept for ``clamp(TTL, min_ttl, max_ttl)``. A negative answer (NODATA,
   NXDOMAIN) is kept for its RFC 2308 negative TTL, clamped the same way. A TTL of 0 means "use
   for this transaction only" (RFC 1035 §3.2.1): such an answer is used and not stored, and so is
   never served stale (RFC 8767 §7).
3. A hit in the last part of an entry's lifetime (``prefetch_fraction`` of it, at least
   ``prefetch_min`` seconds) answers at once from the cache and refreshes in the background.
4. After expiry the cache first tries to refresh (RFC 8767 §7: stale data only when refreshing
   failed), with the short ``refresh_timeout`` (the §5 client response timer, 1.8 s). If that
   fails, the expired answer is served, for at most ``max_stale`` past expiry (§5: 1 to 3 days;
   1 day here), and the refresh is not tried again for ``stale_recheck`` seconds (§5 failure
   recheck timer, 30 s).
5. A failed refresh never replaces or shortens good data (§4: "leave any previous state intact").
"""

from __future__ import annotations

import enum
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from halfclose.errors import EnvironmentProblem

__all__ = [
    "Answer",
    "DnsCache",
    "DnsCounts",
    "DnsError",
    "DnsPolicy",
    "RecordType",
    "Resolve",
    "dnspython_resolver",
    "read_hosts",
]


class DnsError(EnvironmentProblem):
    """No answer could be had from the network's DNS (timeout, SERVFAIL, no server reachable)."""


@enum.unique
class RecordType(enum.Enum):
    """The address record types the cache asks for."""

    A = "A"
    AAAA = "AAAA"


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """One resolution of one name and type.

    Attributes:
        addresses: the addresses, in the order received; empty for NODATA or NXDOMAIN.
        ttl: the TTL in seconds as received (the least over the chain, or the RFC 2308 negative
            TTL for an empty answer; 0 when the answer must not be cached).
    """

    addresses: tuple[str, ...]
    ttl: float


#: A resolver function: ``(name, type, timeout in seconds) -> Answer``; raises :class:`DnsError`
#: when no answer could be had. NXDOMAIN and NODATA are answers (empty), not errors.
Resolve = Callable[[str, RecordType, float], Answer]


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsPolicy:
    """How long answers are kept and when they are refreshed (defaults argued in docs/client.md).

    Attributes:
        min_ttl: the TTL floor, 60 s (Chromium's floor for its own resolver; the field report's
            image server published TTLs under a minute for addresses that did not change).
        max_ttl: the TTL cap, 3600 s (CoreDNS's cap, dnsmasq's limit on a floor).
        prefetch_fraction: refresh on use in the last tenth of the lifetime (Unbound's prefetch).
        prefetch_min: ... and at least this many seconds before expiry (OkHttp's 2 s).
        refresh_timeout: how long a refresh of expired data may take before stale data is served
            (RFC 8767 §5 client response timer, 1.8 s).
        resolve_timeout: how long a lookup with nothing cached may take.
        max_stale: how long past expiry stale data may be served (RFC 8767 §5, 1 day).
        stale_recheck: after a failed refresh, no new attempt for this long (RFC 8767 §5, 30 s).
        max_entries: entries kept; the least recently used go first, expired ones before them.
    """

    min_ttl: float = 60.0
    max_ttl: float = 3600.0
    prefetch_fraction: float = 0.1
    prefetch_min: float = 2.0
    refresh_timeout: float = 1.8
    resolve_timeout: float = 5.0
    max_stale: float = 86400.0
    stale_recheck: float = 30.0
    max_entries: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.min_ttl <= self.max_ttl:
            raise ValueError("DnsPolicy needs 0 <= min_ttl <= max_ttl")
        if self.max_stale > 3 * 86400:
            raise ValueError("DnsPolicy.max_stale above 3 days goes against RFC 8767 §5")
        if self.stale_recheck <= 0 or self.max_entries < 1:
            raise ValueError("DnsPolicy.stale_recheck and max_entries must be positive")

    def lifetime(self, ttl: float) -> float:
        """Seconds an answer with *ttl* is kept fresh (0: not stored)."""
        if ttl <= 0:
            return 0.0
        return min(max(ttl, self.min_ttl), self.max_ttl)

    def prefetch_window(self, lifetime: float) -> float:
        """Seconds before expiry in which a hit triggers a background refresh."""
        return min(max(self.prefetch_fraction * lifetime, self.prefetch_min), lifetime / 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsCounts:
    """What the cache did, since it was made.

    Attributes:
        hits: answered from fresh data without a query.
        misses: answered after a query the caller waited for (nothing cached, or expired).
        stale: answered from expired data because a refresh failed (RFC 8767).
        prefetches: background refreshes started before expiry.
        failures: queries that got no answer (the caller got stale data or an error).
    """

    hits: int = 0
    misses: int = 0
    stale: int = 0
    prefetches: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    answer: Answer
    expires: float
    failed_at: float | None = None

    def is_fresh(self, now: float) -> bool:
        return now < self.expires

    def may_serve_stale(self, now: float, policy: DnsPolicy) -> bool:
        return self.answer.ttl > 0 and now - self.expires <= policy.max_stale

    def recently_failed(self, now: float, policy: DnsPolicy) -> bool:
        return self.failed_at is not None and now - self.failed_at < policy.stale_recheck


def _start_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="halfclose-dns-refresh", daemon=True).start()


_Key = tuple[str, str, RecordType]


@dataclass(kw_only=True)
class DnsCache:
    """A per-network DNS cache over a resolver function (see the module docstring for its rules).

    Args:
        resolve: the resolver function; :func:`dnspython_resolver` by default (made on first use).
        policy: TTL floor, cap and the RFC 8767 timers.
        clock: seconds from a monotonic clock (injectable for tests).
        spawn: runs a background refresh; a daemon thread by default (tests pass ``lambda f: f()``).

    Example:
        >>> clock = [0.0]
        >>> cache = DnsCache(resolve=lambda name, rtype, timeout: Answer(
        ...     addresses=("198.18.0.10",) if rtype is RecordType.A else (), ttl=20),
        ...     clock=lambda: clock[0], spawn=lambda work: work())
        >>> cache.lookup("img.lab.test", RecordType.A, network="lab")
        ('198.18.0.10',)
        >>> clock[0] = 50.0   # the TTL was 20 s, the 60 s floor keeps it
        >>> cache.lookup("img.lab.test", RecordType.A, network="lab")
        ('198.18.0.10',)
        >>> cache.counts().hits, cache.counts().misses
        (1, 1)
    """

    resolve: Resolve | None = None
    policy: DnsPolicy = field(default_factory=DnsPolicy)
    clock: Callable[[], float] = time.monotonic
    spawn: Callable[[Callable[[], None]], None] = _start_thread
    _entries: OrderedDict[_Key, _Entry] = field(default_factory=OrderedDict, repr=False)
    _refreshing: set[_Key] = field(default_factory=set, repr=False)
    _counts: DnsCounts = field(default_factory=DnsCounts, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _resolver(self) -> Resolve:
        if self.resolve is None:
            self.resolve = dnspython_resolver()
        return self.resolve

    def _count(self, **deltas: int) -> None:
        c = self._counts
        self._counts = replace(c, **{k: getattr(c, k) + v for k, v in deltas.items()})

    def counts(self) -> DnsCounts:
        """The counters so far."""
        with self._lock:
            return self._counts

    def lookup(self, name: str, rtype: RecordType, *, network: str = "default") -> tuple[str, ...]:
        """The addresses of *name* of type *rtype* on *network* (empty: the name has none).

        Raises:
            DnsError: nothing usable is cached and the resolver got no answer.
        """
        key: _Key = (network, _norm(name), rtype)
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            if entry is not None and entry.is_fresh(now):
                self._count(hits=1)
                lifetime = self.policy.lifetime(entry.answer.ttl)
                prefetch = (
                    now >= entry.expires - self.policy.prefetch_window(lifetime)
                    and key not in self._refreshing
                    and not entry.recently_failed(now, self.policy)
                )
                if prefetch:
                    self._refreshing.add(key)
                    self._count(prefetches=1)
            elif entry is not None and entry.may_serve_stale(now, self.policy):
                if entry.recently_failed(now, self.policy):
                    self._count(stale=1)
                    return entry.answer.addresses
                prefetch = False
            else:
                if entry is not None:
                    del self._entries[key]
                entry = None
                prefetch = False
        if entry is not None and entry.is_fresh(now):
            if prefetch:
                self.spawn(lambda: self._refresh_in_background(key))
            return entry.answer.addresses
        if entry is not None:
            # Expired but still servable: refresh first, stale only if that fails (RFC 8767 §7).
            try:
                answer = self._resolver()(key[1], rtype, self.policy.refresh_timeout)
            except DnsError:
                with self._lock:
                    self._count(failures=1, stale=1)
                    self._mark_failed(key, self.clock())
                return entry.answer.addresses
            with self._lock:
                self._count(misses=1)
                self._store(key, answer, self.clock())
            return answer.addresses
        try:
            answer = self._resolver()(key[1], rtype, self.policy.resolve_timeout)
        except DnsError:
            with self._lock:
                self._count(misses=1, failures=1)
            raise
        with self._lock:
            self._count(misses=1)
            self._store(key, answer, self.clock())
        return answer.addresses

    def addresses(
        self, name: str, *, network: str = "default", prefer_ipv6: bool = False
    ) -> list[str]:
        """All addresses of *name* (A and AAAA), IPv4 first unless *prefer_ipv6*.

        An IP literal is returned as it is, without a lookup.

        Raises:
            DnsError: neither type could be resolved, or the name has no address.
        """
        literal = _ip_literal(name)
        if literal is not None:
            return [literal]
        order = (RecordType.AAAA, RecordType.A) if prefer_ipv6 else (RecordType.A, RecordType.AAAA)
        found: list[str] = []
        errors: list[DnsError] = []
        for rtype in order:
            try:
                found.extend(self.lookup(name, rtype, network=network))
            except DnsError as exc:
                errors.append(exc)
        if not found:
            if errors:
                raise errors[0]
            raise DnsError(f"{name} has no A or AAAA record (network {network!r})")
        return found

    def flush(self, network: str | None = None) -> None:
        """Forget every entry, or the entries of one *network* (call it on a network change)."""
        with self._lock:
            for key in [k for k in self._entries if network is None or k[0] == network]:
                del self._entries[key]

    def _mark_failed(self, key: _Key, now: float) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries[key] = replace(entry, failed_at=now)

    def _store(self, key: _Key, answer: Answer, now: float) -> None:
        lifetime = self.policy.lifetime(answer.ttl)
        if lifetime <= 0:
            # TTL 0: for this transaction only; whatever was cached before stays as it was.
            return
        self._entries[key] = _Entry(answer=answer, expires=now + lifetime)
        self._entries.move_to_end(key)
        self._evict(now)

    def _evict(self, now: float) -> None:
        excess = len(self._entries) - self.policy.max_entries
        if excess <= 0:
            return
        dead = [k for k, e in self._entries.items() if not e.may_serve_stale(now, self.policy)]
        stale = [k for k, e in self._entries.items() if not e.is_fresh(now) and k not in dead]
        for key in (dead + stale)[:excess]:
            del self._entries[key]
            excess -= 1
        while excess > 0:
            self._entries.popitem(last=False)
            excess -= 1

    def _refresh_in_background(self, key: _Key) -> None:
        try:
            answer = self._resolver()(key[1], key[2], self.policy.resolve_timeout)
        except DnsError:
            with self._lock:
                self._count(failures=1)
                self._mark_failed(key, self.clock())
            return
        finally:
            with self._lock:
                self._refreshing.discard(key)
        with self._lock:
            self._store(key, answer, self.clock())


def _norm(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _ip_literal(name: str) -> str | None:
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return None


def read_hosts(path: str | Path = "/etc/hosts") -> dict[str, tuple[str, ...]]:
    """Name -> addresses from a hosts file (missing file: empty), for names DNS does not serve."""
    out: dict[str, list[str]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or _ip_literal(fields[0]) is None:
            continue
        for name in fields[1:]:
            out.setdefault(_norm(name), []).append(fields[0])
    return {k: tuple(v) for k, v in out.items()}


def dnspython_resolver(
    nameservers: Sequence[str] | None = None,
    *,
    port: int = 53,
    hosts: Iterable[tuple[str, tuple[str, ...]]] | None = None,
) -> Resolve:
    """A resolver function backed by dnspython.

    Args:
        nameservers: server addresses to ask; None reads the system's /etc/resolv.conf.
        port: the servers' port.
        hosts: fixed name -> addresses pairs answered without a query (TTL 0, never cached);
            None reads /etc/hosts when *nameservers* is None (so ``localhost`` keeps working).

    Example:
        >>> resolve = dnspython_resolver(["127.0.0.53"], port=5353)   # nothing is sent yet
        >>> callable(resolve)
        True
    """
    import dns.exception
    import dns.message
    import dns.name
    import dns.rdatatype
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=nameservers is None)
    if nameservers is not None:
        resolver.nameservers = list(nameservers)
    resolver.port = port
    resolver.cache = None
    fixed = dict(hosts) if hosts is not None else (read_hosts() if nameservers is None else {})
    families = {RecordType.A: 4, RecordType.AAAA: 6}

    def resolve(name: str, rtype: RecordType, timeout: float) -> Answer:
        local = fixed.get(_norm(name))
        if local is not None:
            picked = tuple(a for a in local if ipaddress.ip_address(a).version == families[rtype])
            return Answer(addresses=picked, ttl=0)
        try:
            answer = resolver.resolve(name, rtype.value, lifetime=timeout)
        except dns.resolver.NXDOMAIN as exc:
            return Answer(addresses=(), ttl=_negative_ttl(exc.kwargs.get("responses", {}).values()))
        except dns.resolver.NoAnswer as exc:
            response = exc.kwargs.get("response")
            return Answer(addresses=(), ttl=_negative_ttl([response] if response is not None else []))
        except dns.exception.DNSException as exc:
            raise DnsError(f"no DNS answer for {name} {rtype.value}: {exc}") from exc
        addresses = tuple(str(rd.address) for rd in answer)
        return Answer(addresses=addresses, ttl=float(answer.chaining_result.minimum_ttl))

    return resolve


def _negative_ttl(responses: Iterable[object]) -> float:
    import dns.message

    ttls = [
        r.resolve_chaining().minimum_ttl for r in responses if isinstance(r, dns.message.QueryMessage)
    ]
    return float(min(ttls)) if ttls else 0.0
