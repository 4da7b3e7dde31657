"""What starting a lab server means, as data: the processes, their files, how to know they are up.

Each server module turns a :class:`Site` (where to listen, the idle timeout, TLS, HTTP/2) into
:class:`Process` records; the runner writes their files, starts them in the server namespace in
order, waits until each is ready and stops them in reverse order. Nothing here starts anything.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Process", "Site", "Tls", "listen_pairs"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tls:
    """The server's side of the run's PKI (see :mod:`halfclose.lab.tls`)."""

    cert: Path
    key: Path
    bundle: Path
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """What every lab server is given.

    Fields:
        listen: the server namespace's addresses (IPv4 and IPv6), each listened on.
        port: the port the app connects to.
        idle_timeout_s: the keep-alive idle timeout the server's config sets.
        folder: a folder for the server's config, pid and state files (removed with the run).
        image: the image file every path is answered with.
        python: the interpreter for the Python servers.
        tls: the certificate and the one TLS version to accept (None: plain TCP).
        http2: offer HTTP/2 (ALPN h2 with TLS, h2c without).
        race: the built-in server's race mode (see its module).
        keepalive_header: announce the idle timeout in ``Keep-Alive: timeout=N`` (where it can).
        close_rst: close idle keep-alive connections with RST (SO_LINGER 0) instead of FIN.
        fast_open: listen with TCP Fast Open (data in the SYN accepted), where the server can.
    """

    listen: tuple[str, ...]
    port: int
    idle_timeout_s: float
    folder: Path
    image: Path
    python: str
    tls: Tls | None = None
    http2: bool = False
    race: bool = False
    keepalive_header: bool = False
    close_rst: bool = False
    fast_open: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Process:
    """One server process to start.

    Fields:
        what: its name in messages ("nginx", "the built-in backend").
        argv: its command line (argv[0] a program on PATH or a path).
        files: files to write first (path -> text).
        check: a command to run first that fails with a message when the config is bad.
        ready: a stderr line that says it is ready ("" : wait until it listens on *port*).
        port: the TCP port it listens on.
        env: extra environment variables.
        stop_signal: the signal that stops it (the process group gets it).
    """

    what: str
    argv: tuple[str, ...]
    port: int
    files: Mapping[Path, str] = field(default_factory=dict)
    check: tuple[str, ...] = ()
    ready: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM


def listen_pairs(site: Site) -> list[str]:
    """``host:port`` for each address, IPv6 in brackets (the form most configs take)."""
    return [f"[{addr}]:{site.port}" if ":" in addr else f"{addr}:{site.port}" for addr in site.listen]
