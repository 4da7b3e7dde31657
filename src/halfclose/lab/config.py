"""The lab's configuration: one frozen record, validated when built.

Everything a lab run does follows from a :class:`LabConfig`; :func:`validate` turns each wrong
value into a :class:`~halfclose.errors.UsageError` that says which option and what to do.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from halfclose.errors import UsageError

__all__ = [
    "BENCHMARK_V4",
    "ClientKind",
    "DnsKind",
    "Fix",
    "LabConfig",
    "ServerKind",
    "validate",
]

#: Lab hosts only ever use the benchmarking range (RFC 2544) and a ULA prefix (RFC 4193).
BENCHMARK_V4 = ipaddress.IPv4Network("198.18.0.0/15")
ULA = ipaddress.IPv6Network("fc00::/7")


class ClientKind(enum.StrEnum):
    """What the app emulator uses to make its requests."""

    #: The app from the field report: one http.client connection written to blindly,
    #: reconnect and retry once on failure, the name resolved again for every new connection.
    REUSE = "reuse"
    URLLIB3 = "urllib3"
    REQUESTS = "requests"
    HTTPX = "httpx"
    #: requests through halfclose's keep-alive guard and DNS cache.
    GUARD_REQUESTS = "guard-requests"
    #: httpx through halfclose's keep-alive guard and DNS cache.
    GUARD_HTTPX = "guard-httpx"
    AIOHTTP = "aiohttp"
    #: aiohttp through halfclose's keep-alive guard and DNS cache.
    GUARD_AIOHTTP = "guard-aiohttp"


class ServerKind(enum.StrEnum):
    BUILTIN = "builtin"
    NGINX = "nginx"


class DnsKind(enum.StrEnum):
    BUILTIN = "builtin"
    DNSMASQ = "dnsmasq"


class Fix(enum.StrEnum):
    """A network-level fix applied in the phone namespace during the run."""

    NONE = "none"
    RULES = "rules"
    REAP = "reap"


@dataclass(frozen=True, slots=True, kw_only=True)
class LabConfig:
    """One lab run.

    Fields:
        client: the app emulator's HTTP client.
        requests: how many requests the app makes (>= 1).
        gap_s: seconds between the end of one request and the start of the next (>= 0).
        idle_timeout_s: the server's keep-alive idle timeout (> 0).
        dns_ttl_s: TTL of the lab DNS answers (>= 0).
        ipv6: serve the lab name over IPv6 only (AAAA answers, no A).
        server: built-in asyncio HTTP server or nginx.
        dns: built-in DNS server or dnsmasq.
        race: built-in server only: a request arriving on a connection idle longer than the
            timeout is read and the connection closed unanswered (the idle timer firing while
            the request is in flight), instead of closing idle connections on the timer.
        keepalive_header: built-in server only: send ``Keep-Alive: timeout=N``.
        uid: the app's uid (an Android app uid by default).
        fix: a network-level fix to run in the phone namespace.
        rtt_ms: emulated round-trip time between phone and server (0: none).
        jitter_ms, loss_pct, seed: link impairments (with rtt_ms).
        http_port: the HTTP server's port.
        hostname: the name the app asks for.
        pcap: where the capture goes (None: in the run folder).
        out_dir: the run folder (None: ./halfclose-lab/<time>-<run id>).
        linger_s: how long to keep capturing after the app is done.
        capture_any: capture on all of the phone's interfaces (``tcpdump -i any``, Linux cooked
            headers, as captures taken on a phone are) instead of its eth0 (Ethernet).
    """

    client: ClientKind = ClientKind.REUSE
    requests: int = 4
    gap_s: float = 3.0
    idle_timeout_s: float = 2.0
    dns_ttl_s: int = 3
    ipv6: bool = False
    server: ServerKind = ServerKind.BUILTIN
    dns: DnsKind = DnsKind.BUILTIN
    race: bool = False
    keepalive_header: bool = False
    uid: int = 10400
    fix: Fix = Fix.NONE
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    seed: int = 1
    http_port: int = 80
    hostname: str = "img.lab.test"
    pcap: Path | None = None
    out_dir: Path | None = None
    linger_s: float = 0.5
    capture_any: bool = False
    #: TCP Fast Open: ``net.ipv4.tcp_fastopen=3`` in the server's namespace, servers listen with it.
    tfo: bool = False
    #: The server's namespace drops SYNs that carry payload (a middlebox that breaks Fast Open).
    drop_syn_data: bool = False


def validate(config: LabConfig) -> LabConfig:
    """Return *config* if every value is usable, else raise :class:`UsageError` naming the option."""
    if not 1 <= config.requests <= 100_000:
        raise UsageError(f"--requests must be between 1 and 100000, not {config.requests}")
    if not 0 <= config.gap_s <= 3600:
        raise UsageError(f"--gap must be between 0 and 3600 seconds, not {config.gap_s:g}")
    if not 0 < config.idle_timeout_s <= 3600:
        raise UsageError(f"--idle-timeout must be above 0 and at most 3600 seconds, not {config.idle_timeout_s:g}")
    if not 0 <= config.dns_ttl_s <= 86400:
        raise UsageError(f"--dns-ttl must be between 0 and 86400 seconds, not {config.dns_ttl_s}")
    if not 1 <= config.uid <= 2**31 - 2:
        raise UsageError(f"--uid must be a positive user id other than root, not {config.uid}")
    if not 0 <= config.rtt_ms <= 1000:
        raise UsageError(f"--rtt must be between 0 and 1000 ms, not {config.rtt_ms:g}")
    if not 0 <= config.jitter_ms <= max(config.rtt_ms, 0):
        raise UsageError(f"--jitter must be between 0 and the RTT ({config.rtt_ms:g} ms), not {config.jitter_ms:g}")
    if not 0 <= config.loss_pct <= 100:
        raise UsageError(f"--loss must be a percentage between 0 and 100, not {config.loss_pct:g}")
    if not 0 <= config.seed < 2**63:
        raise UsageError(f"--seed must be between 0 and {2**63 - 1}, not {config.seed}")
    if (config.jitter_ms or config.loss_pct) and not config.rtt_ms:
        raise UsageError("--jitter and --loss need --rtt above 0")
    if not 1 <= config.http_port <= 65535:
        raise UsageError(f"--http-port must be between 1 and 65535, not {config.http_port}")
    if not 0 <= config.linger_s <= 600:
        raise UsageError(f"--linger must be between 0 and 600 seconds, not {config.linger_s:g}")
    if config.server is ServerKind.NGINX and (config.race or config.keepalive_header):
        raise UsageError("--race and --keepalive-header need the built-in server (--server builtin)")
    for label in config.hostname.split("."):
        if not label or len(label) > 63 or not all(c.isalnum() or c == "-" for c in label):
            raise UsageError(f"--hostname {config.hostname!r} is not a valid DNS name")
    if config.pcap is not None and not config.pcap.parent.is_dir():
        raise UsageError(f"--pcap {config.pcap}: folder {config.pcap.parent} does not exist")
    return config
