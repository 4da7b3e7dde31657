"""What ``halfclose dns config`` prints: the rendered file, headed by what the resolver can and cannot do.

The printed text is itself a valid file for the resolver (every sentence is a ``#`` comment), so
it can be redirected to the path it names.
"""

from __future__ import annotations

from halfclose.dnsconf import STALE_REPLY_TTL_S, Gap, Resolver, ResolverConfig

__all__ = ["config_text", "gap_sentence"]

_GAPS: dict[Gap, str] = {
    Gap.NO_FLOOR: "{name} has no minimum TTL: answers are kept only as long as their TTL says.",
    Gap.FLOOR_CAPPED: "{name} caps its TTL floor at {floor} s (unless recompiled): the floor is {floor} s, "
                      "not {wanted} s.",
    Gap.NO_STALE: "{name} cannot answer from an expired entry: an expired name is always asked again.",
    Gap.STALE_ON_FAILURE_ONLY: "{name} answers from an expired entry only when the upstream fails (it asks "
                               "upstream first), so serve-stale saves no query while the upstream answers.",
    Gap.STALE_TTL_ZERO: "{name} answers from an expired entry at once and refreshes it afterwards; those stale "
                        "answers carry TTL 0.",
    Gap.NOT_CONFIGURABLE: "Android's resolver (DnsResolver) caches an answer for its smallest TTL and drops it at "
                          "expiry, and has no setting for either: the fix must be in the app (a DNS cache with a "
                          "floor, such as halfclose.client's DnsCache) or in a local cache the device is pointed "
                          "at (a dnsmasq or unbound on the network, set as the device's DNS server or Private DNS).",
}

_NAMES = {Resolver.DNSMASQ: "dnsmasq", Resolver.UNBOUND: "unbound", Resolver.SYSTEMD_RESOLVED: "systemd-resolved",
          Resolver.ANDROID: "Android's resolver"}


def gap_sentence(config: ResolverConfig, gap: Gap) -> str:
    """One sentence on one thing *config*'s resolver cannot do."""
    return _GAPS[gap].format(name=_NAMES[config.resolver], floor=config.floor_s, wanted=config.wish.floor_s)


def _does(config: ResolverConfig) -> list[str]:
    name = _NAMES[config.resolver]
    said = []
    if config.floor_s is not None:
        negative = " (negative answers too)" if config.resolver is Resolver.DNSMASQ else ""
        said.append(f"{name} keeps every answer at least {config.floor_s} s, whatever its TTL{negative}.")
    if config.stale and config.resolver is Resolver.UNBOUND:
        said.append(f"{name} serves an expired answer for up to {config.wish.stale_s} s past its TTL when the "
                    f"upstream is slower than 1.8 s, with TTL {STALE_REPLY_TTL_S} s (RFC 8767).")
    elif config.stale and config.resolver is Resolver.DNSMASQ:
        said.append(f"{name} serves an expired answer for up to {config.wish.stale_s} s past its TTL.")
    elif config.stale:
        said.append(f"{name} keeps answers {config.wish.stale_s} s past their TTL for when the upstream fails.")
    return said


def config_text(config: ResolverConfig) -> str:
    """The whole output: comments (where it goes, what it does, what it cannot), then the file."""
    sentences = _does(config) + [gap_sentence(config, gap) for gap in config.gaps]
    if not config.lines:
        return "".join(f"{s}\n" for s in sentences) + ("" if config.resolver is Resolver.ANDROID else
                                                       "Nothing to configure.\n")
    head = [f"# {config.path} ({_NAMES[config.resolver]})", *(f"# {s}" for s in sentences)]
    return "".join(f"{line}\n" for line in head) + config.text
