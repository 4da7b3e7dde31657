"""The lab's configuration: one frozen record, validated when built.

Everything a lab run does follows from a :class:`LabConfig`; :func:`validate` turns each wrong
value into a :class:`~halfclose.errors.UsageError` that says which option and what to do.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from halfclose.errors import UsageError

__all__ = [
    "BENCHMARK_V4",
    "SERVER_ANNOUNCES",
    "SERVER_HTTP2",
    "SERVER_RESETS",
    "TLS_PORT",
    "ClientKind",
    "DnsKind",
    "Fix",
    "LabConfig",
    "ServerKind",
    "TlsVersion",
    "validate",
]

#: The HTTP server's port with ``--tls`` unless ``--http-port`` says otherwise (without: the
#: field's default, 80).
TLS_PORT = 443

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
    AIOHTTP = "aiohttp"
    #: One curl process making all the requests, ``--rate`` spacing them.
    CURL = "curl"
    #: Node.js's built-in ``fetch`` (undici).
    NODE = "node"
    #: Headless Chromium loading a lab page whose script fetches the image (driven over DevTools).
    CHROMIUM = "chromium"
    #: A Go ``net/http`` client (stdlib only), built with Debian's golang-go.
    GO = "go"
    #: requests through halfclose's keep-alive guard and DNS cache.
    GUARD_REQUESTS = "guard-requests"
    #: httpx through halfclose's keep-alive guard and DNS cache.
    GUARD_HTTPX = "guard-httpx"
    #: aiohttp through halfclose's keep-alive guard and DNS cache.
    GUARD_AIOHTTP = "guard-aiohttp"


class ServerKind(enum.StrEnum):
    """The HTTP server in the server namespace: each the real program with a generated config."""

    BUILTIN = "builtin"
    NGINX = "nginx"
    APACHE = "apache"
    #: HAProxy in front of the built-in server.
    HAPROXY = "haproxy"
    NODE = "node"
    CADDY = "caddy"
    UVICORN = "uvicorn"
    GO = "go"


class TlsVersion(enum.StrEnum):
    """The one TLS version the server accepts with ``--tls``."""

    V1_2 = "1.2"
    V1_3 = "1.3"


#: Where each server speaks HTTP/2: "tls" (ALPN h2), "h2c" (cleartext, prior knowledge).
SERVER_HTTP2: dict[ServerKind, frozenset[str]] = {
    ServerKind.BUILTIN: frozenset({"tls", "h2c"}),
    ServerKind.NGINX: frozenset({"tls", "h2c"}),
    ServerKind.APACHE: frozenset({"tls", "h2c"}),
    ServerKind.HAPROXY: frozenset({"tls", "h2c"}),
    ServerKind.NODE: frozenset({"tls", "h2c"}),
    ServerKind.CADDY: frozenset({"tls", "h2c"}),
    ServerKind.UVICORN: frozenset(),
    ServerKind.GO: frozenset({"tls"}),
}


class DnsKind(enum.StrEnum):
    BUILTIN = "builtin"
    DNSMASQ = "dnsmasq"


class Fix(enum.StrEnum):
    """A network-level fix applied in the phone namespace during the run."""

    NONE = "none"
    RULES = "rules"
    REAP = "reap"
    #: The field report's own iptables commands as written, then ported as literally as a mainline
    #: kernel allows (see :mod:`halfclose.lab.verbatim`).
    RULES_VERBATIM = "rules-verbatim"
    #: The same with the refused owner match dropped instead of moved.
    RULES_NAIVE = "rules-naive"


#: Servers that can announce their idle timeout in ``Keep-Alive: timeout=N`` when asked
#: (``--keepalive-header``): the built-in server, nginx (``keepalive_timeout``'s second parameter)
#: and HAProxy (a response header rule). Apache and Node announce it on their own.
SERVER_ANNOUNCES = frozenset({ServerKind.BUILTIN, ServerKind.NGINX, ServerKind.HAPROXY})
#: Servers that can close idle keep-alive connections with RST (SO_LINGER 0) when asked
#: (``server_rst``): the built-in server and HAProxy (``option nolinger``).
SERVER_RESETS = frozenset({ServerKind.BUILTIN, ServerKind.HAPROXY})


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
        server: the HTTP server (see :class:`ServerKind`).
        dns: built-in DNS server or dnsmasq.
        race: built-in server only: a request arriving on a connection idle longer than the
            timeout is read and the connection closed unanswered (the idle timer firing while
            the request is in flight), instead of closing idle connections on the timer.
        keepalive_header: the server sends ``Keep-Alive: timeout=N`` (see :data:`SERVER_ANNOUNCES`).
        server_rst: the server closes idle keep-alive connections with RST (SO_LINGER 0) instead of
            FIN (see :data:`SERVER_RESETS`).
        dns_cache_floor_s: run a caching resolver (dnsmasq) in the phone namespace with this TTL
            floor and serve-stale, and point the app's resolv.conf at it (None: no phone cache).
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
        tls: the server speaks TLS (HTTPS) with a certificate for *hostname* from a CA made for
            the run, which the app trusts (see :mod:`halfclose.lab.tls`).
        tls_version: the one TLS version the server accepts (with *tls*).
        http2: the server offers HTTP/2: ALPN h2 over TLS, h2c (prior knowledge) without it;
            only where the server speaks it (see :data:`SERVER_HTTP2`).
        tfo: TCP Fast Open: ``net.ipv4.tcp_fastopen=3`` in the server's namespace, and the HTTP
            server listens with it where it can (see :data:`SERVER_FAST_OPEN`).
        drop_syn_data: the server's namespace drops SYNs that carry payload (a middlebox that
            breaks Fast Open).
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
    server_rst: bool = False
    dns_cache_floor_s: int | None = None
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
    tls: bool = False
    tls_version: TlsVersion = TlsVersion.V1_3
    http2: bool = False
    tfo: bool = False
    drop_syn_data: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LabConfig:
        """The validated configuration that parsed command-line options ask for.

        Each option whose destination is a field's name sets that field (strings become the
        field's enum); a field with no option, or whose option is unset (None), keeps its default
        (the HTTP port's is :data:`TLS_PORT` with TLS). Options that are not fields (``--json``,
        ``--html``) are left alone.

        Raises:
            UsageError: a value is unusable (see :func:`validate`).
        """
        hints = typing.get_type_hints(cls)
        values: dict[str, object] = {}
        for f in fields(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                kind = hints[f.name]
                values[f.name] = kind(value) if isinstance(kind, enum.EnumMeta) else value
        if "http_port" not in values and values.get("tls"):
            values["http_port"] = TLS_PORT
        return validate(cls(**values))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        """The configuration as JSON values (paths as strings)."""
        return {f.name: (str(v) if isinstance(v, Path) else v)
                for f in fields(self) for v in (getattr(self, f.name),)}


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
    if config.server is not ServerKind.BUILTIN and config.race:
        raise UsageError("--race needs the built-in server (--server builtin)")
    if config.keepalive_header and config.server not in SERVER_ANNOUNCES:
        raise UsageError(f"--keepalive-header: {config.server.value} cannot be told to announce its timeout here "
                         f"(use one of {', '.join(sorted(k.value for k in SERVER_ANNOUNCES))})")
    if config.server_rst and config.server not in SERVER_RESETS:
        raise UsageError(f"server-rst: {config.server.value} cannot close idle connections with RST here "
                         f"(use one of {', '.join(sorted(k.value for k in SERVER_RESETS))})")
    if config.dns_cache_floor_s is not None and not 1 <= config.dns_cache_floor_s <= 3600:
        raise UsageError(f"the phone's DNS cache floor must be between 1 and 3600 s, not {config.dns_cache_floor_s}")
    if config.server is ServerKind.NODE and config.idle_timeout_s <= 1:
        raise UsageError(f"--idle-timeout {config.idle_timeout_s:g}: node closes idle connections 1 s after its "
                         "keepAliveTimeout, which the lab sets to the idle timeout minus 1 s: use more than 1 s")
    if config.http2:
        where = SERVER_HTTP2[config.server]
        if not where:
            raise UsageError(f"--http2: {config.server.value} does not speak HTTP/2 (drop --http2 or pick "
                             "another --server)")
        if ("tls" if config.tls else "h2c") not in where:
            raise UsageError(f"--http2: {config.server.value} speaks HTTP/2 only over TLS here (add --tls)")
    for label in config.hostname.split("."):
        if not label or len(label) > 63 or not all(c.isalnum() or c == "-" for c in label):
            raise UsageError(f"--hostname {config.hostname!r} is not a valid DNS name")
    if config.pcap is not None and not config.pcap.parent.is_dir():
        raise UsageError(f"--pcap {config.pcap}: folder {config.pcap.parent} does not exist")
    return config
