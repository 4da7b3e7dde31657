"""A caching resolver on the phone side of the lab: dnsmasq with the configuration ``dns config`` renders.

The ``dns-cache`` remedy runs dnsmasq in the phone namespace, listening on the phone's loopback,
forwarding to the lab's DNS server, with a TTL floor and serve-stale from
:func:`halfclose.dnsconf.render` (the file ``halfclose dns config --for dnsmasq`` prints), and
points the app's resolv.conf at it; the app itself is unchanged. Only dnsmasq's own queries to the
server cross the phone's interface, so the capture counts what reached the network.
"""

from __future__ import annotations

from pathlib import Path

from halfclose.dnsconf import CacheWish, Resolver, ResolverConfig, render

__all__ = ["LISTEN", "RESOLV_CONF", "cache_config", "dnsmasq_argv"]

#: Where the phone's cache listens.
LISTEN = "127.0.0.1"
#: The phone's resolv.conf while the cache runs.
RESOLV_CONF = f"nameserver {LISTEN}\noptions timeout:2 attempts:2\n"


def cache_config(floor_s: int) -> ResolverConfig:
    """The rendered dnsmasq configuration: TTL floor *floor_s* and serve-stale."""
    return render(Resolver.DNSMASQ, CacheWish(floor_s=floor_s, serve_stale=True))


def dnsmasq_argv(*, conf: Path, upstream: str, pid_file: Path) -> list[str]:
    """dnsmasq in the foreground with *conf*, on the phone's loopback only, forwarding to *upstream*."""
    return [
        "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--no-resolv", "--no-hosts", "--no-poll",
        "--bind-interfaces", f"--listen-address={LISTEN}", f"--server={upstream}", "--user=root", "--group=root",
        f"--pid-file={pid_file}", "--log-facility=-", "--port=53",
    ]
