"""The configuration each resolver takes for a TTL floor and serve-stale, and what it lacks.

Facts each rendering follows (sources in the project's notes on DNS caches):

* dnsmasq: ``min-cache-ttl`` (capped by dnsmasq at one hour unless recompiled), ``use-stale-cache``
  (answers from an expired entry at once and refreshes it afterwards; the stale answer's TTL is 0);
  negative answers without an SOA are cached only with ``neg-ttl``.
* unbound: ``cache-min-ttl`` (no cap), ``serve-expired`` with
  ``serve-expired-ttl`` (how long past expiry), ``serve-expired-reply-ttl`` (30 s, RFC 8767) and
  ``serve-expired-client-timeout`` (1800 ms: upstream first, stale when it is slow).
* systemd-resolved: ``StaleRetentionSec=`` (v254) serves stale when the upstream fails; there is no
  TTL floor.
* Android's resolver (DnsResolver ``res_cache.cpp``): the answer's minimum TTL, dropped at expiry;
  no floor, no serve-stale, no setting: the floor has to be in the app or in a cache the device is
  pointed at.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from halfclose.errors import UsageError

__all__ = [
    "DNSMASQ_FLOOR_LIMIT",
    "MAX_FLOOR_S",
    "STALE_REPLY_TTL_S",
    "CacheWish",
    "Gap",
    "Resolver",
    "ResolverConfig",
    "render",
]

#: dnsmasq's hard limit on ``min-cache-ttl`` (``TTL_FLOOR_LIMIT`` in its config.h).
DNSMASQ_FLOOR_LIMIT = 3600
#: The TTL of a stale answer where the resolver lets it be chosen (RFC 8767 section 4's 30 s).
STALE_REPLY_TTL_S = 30
#: The largest floor and stale window accepted (RFC 8767's recommended cap on TTLs: 7 days).
MAX_FLOOR_S = 604_800


class Resolver(enum.StrEnum):
    """A resolver a configuration is rendered for."""

    DNSMASQ = "dnsmasq"
    UNBOUND = "unbound"
    SYSTEMD_RESOLVED = "systemd-resolved"
    ANDROID = "android"


class Gap(enum.StrEnum):
    """Something of the wish a resolver cannot do."""

    #: No minimum TTL at all.
    NO_FLOOR = "no-floor"
    #: The floor asked for is above the resolver's limit; the limit is used.
    FLOOR_CAPPED = "floor-capped"
    #: No way to answer from an expired entry.
    NO_STALE = "no-stale"
    #: Stale answers only when the upstream fails (not when it is merely slow or simply asked again).
    STALE_ON_FAILURE_ONLY = "stale-on-failure-only"
    #: Stale answers go out with TTL 0 (RFC 8767 asks for more than 0).
    STALE_TTL_ZERO = "stale-ttl-zero"
    #: Nothing can be configured: the fix is in the app or in a cache the device is pointed at.
    NOT_CONFIGURABLE = "not-configurable"


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheWish:
    """What the user wants of the cache.

    Fields:
        floor_s: keep every answer at least this long (None: no floor).
        serve_stale: answer from an expired entry (RFC 8767).
        stale_s: how long past expiry an entry may still be served (1 day by default, RFC 8767's
            suggestion is 1 to 3 days).
    """

    floor_s: int | None = None
    serve_stale: bool = False
    stale_s: int = 86_400

    def __post_init__(self) -> None:
        if self.floor_s is None and not self.serve_stale:
            raise UsageError("dns config: give --floor SECONDS, --serve-stale, or both")
        if self.floor_s is not None and not 1 <= self.floor_s <= MAX_FLOOR_S:
            raise UsageError(f"--floor must be between 1 and {MAX_FLOOR_S} seconds (7 days), not {self.floor_s}")
        if not 1 <= self.stale_s <= MAX_FLOOR_S:
            raise UsageError(f"--stale-for must be between 1 and {MAX_FLOOR_S} seconds (7 days), not {self.stale_s}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolverConfig:
    """A rendered configuration.

    Fields:
        resolver: which resolver it is for.
        wish: what was asked.
        path: where the file usually goes (empty: there is no file).
        lines: the file's lines, without comments (empty: nothing to configure).
        floor_s: the floor the file sets (None: none).
        stale: the file turns serve-stale on.
        gaps: what of the wish the resolver cannot do.
    """

    resolver: Resolver
    wish: CacheWish
    path: str
    lines: tuple[str, ...]
    floor_s: int | None
    stale: bool
    gaps: tuple[Gap, ...]

    @property
    def text(self) -> str:
        """The file's lines as one text ("" when there is nothing to configure)."""
        return "".join(f"{line}\n" for line in self.lines)


def _dnsmasq(wish: CacheWish) -> ResolverConfig:
    lines: list[str] = []
    gaps: list[Gap] = []
    floor = None
    if wish.floor_s is not None:
        floor = min(wish.floor_s, DNSMASQ_FLOOR_LIMIT)
        if floor < wish.floor_s:
            gaps.append(Gap.FLOOR_CAPPED)
        # neg-ttl: a negative answer without an SOA is otherwise not cached at all.
        lines += [f"min-cache-ttl={floor}", f"neg-ttl={floor}"]
    if wish.serve_stale:
        lines.append(f"use-stale-cache={wish.stale_s}")
        gaps.append(Gap.STALE_TTL_ZERO)
    return ResolverConfig(resolver=Resolver.DNSMASQ, wish=wish, path="/etc/dnsmasq.d/halfclose-cache.conf",
                          lines=tuple(lines), floor_s=floor, stale=wish.serve_stale, gaps=tuple(gaps))


def _unbound(wish: CacheWish) -> ResolverConfig:
    lines = ["server:"]
    if wish.floor_s is not None:
        # cache-min-negative-ttl would floor negative answers too, but Debian 12's unbound (1.17)
        # does not know it.
        lines.append(f"    cache-min-ttl: {wish.floor_s}")
    if wish.serve_stale:
        lines += ["    serve-expired: yes", f"    serve-expired-ttl: {wish.stale_s}",
                  f"    serve-expired-reply-ttl: {STALE_REPLY_TTL_S}", "    serve-expired-client-timeout: 1800"]
    return ResolverConfig(resolver=Resolver.UNBOUND, wish=wish, path="/etc/unbound/unbound.conf.d/halfclose-cache.conf",
                          lines=tuple(lines), floor_s=wish.floor_s, stale=wish.serve_stale, gaps=())


def _systemd_resolved(wish: CacheWish) -> ResolverConfig:
    gaps = [Gap.NO_FLOOR] if wish.floor_s is not None else []
    lines: list[str] = []
    if wish.serve_stale:
        lines = ["[Resolve]", "Cache=yes", f"StaleRetentionSec={wish.stale_s}"]
        gaps.append(Gap.STALE_ON_FAILURE_ONLY)
    return ResolverConfig(resolver=Resolver.SYSTEMD_RESOLVED, wish=wish,
                          path="/etc/systemd/resolved.conf.d/halfclose-cache.conf" if lines else "",
                          lines=tuple(lines), floor_s=None, stale=wish.serve_stale, gaps=tuple(gaps))


def _android(wish: CacheWish) -> ResolverConfig:
    gaps = [Gap.NOT_CONFIGURABLE]
    gaps += [Gap.NO_FLOOR] if wish.floor_s is not None else []
    gaps += [Gap.NO_STALE] if wish.serve_stale else []
    return ResolverConfig(resolver=Resolver.ANDROID, wish=wish, path="", lines=(), floor_s=None, stale=False,
                          gaps=tuple(gaps))


_RENDER = {
    Resolver.DNSMASQ: _dnsmasq,
    Resolver.UNBOUND: _unbound,
    Resolver.SYSTEMD_RESOLVED: _systemd_resolved,
    Resolver.ANDROID: _android,
}


def render(resolver: Resolver, wish: CacheWish) -> ResolverConfig:
    """The configuration *resolver* takes for *wish*, and what of it the resolver cannot do."""
    return _RENDER[resolver](wish)
