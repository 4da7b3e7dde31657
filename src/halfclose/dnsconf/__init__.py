"""Resolver configurations for a TTL floor and serve-stale, one per resolver (pure rendering).

:func:`render` turns a :class:`CacheWish` (a floor, serve-stale or both) into the
:class:`ResolverConfig` a given resolver (:class:`Resolver`) takes: the file's lines, where the
file goes, and what of the wish that resolver cannot do (:class:`Gap`). Nothing here reads or
writes a file or starts a program; :mod:`halfclose.report.dnsconf` words the result.
"""

from __future__ import annotations

from halfclose.dnsconf.render import (
    DNSMASQ_FLOOR_LIMIT,
    STALE_REPLY_TTL_S,
    CacheWish,
    Gap,
    Resolver,
    ResolverConfig,
    render,
)

__all__ = [
    "DNSMASQ_FLOOR_LIMIT",
    "STALE_REPLY_TTL_S",
    "CacheWish",
    "Gap",
    "Resolver",
    "ResolverConfig",
    "render",
]
