"""``halfclose dns config``: the resolver configuration for a TTL floor and serve-stale.

Exit statuses: 0 printed, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse

from halfclose.dnsconf import CacheWish, Resolver, render
from halfclose.report.dnsconf import config_text

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``config``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("config", help="print a resolver's configuration for a TTL floor and serve-stale")
    c.add_argument("--for", dest="resolver", required=True, choices=[r.value for r in Resolver],
                   help="the resolver: dnsmasq, unbound, systemd-resolved, android")
    c.add_argument("--floor", type=int, metavar="SECONDS", help="keep every answer at least this long")
    c.add_argument("--serve-stale", action="store_true", help="answer from expired entries (RFC 8767)")
    c.add_argument("--stale-for", type=int, default=86_400, metavar="SECONDS",
                   help="how long past its TTL an entry may be served (default 86400, one day)")


def run(args: argparse.Namespace) -> int:
    wish = CacheWish(floor_s=args.floor, serve_stale=args.serve_stale, stale_s=args.stale_for)
    print(config_text(render(Resolver(args.resolver), wish)), end="")
    return 0
