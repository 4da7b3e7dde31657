"""Go: a ``net/http`` server with ``IdleTimeout`` the lab's idle timeout (``go_server.go``).

Built with Debian's golang-go by :mod:`halfclose.lab.gobuild` (standard library only, nothing
downloaded; ``./scripts/setup`` builds it, and a run builds it when the cache has no binary for
the current source). Go's net/http speaks HTTP/2 over TLS only (h2c is
not in its standard library).
"""

from __future__ import annotations

from pathlib import Path

from halfclose.lab import gobuild
from halfclose.lab.servers.plan import Process, Site

__all__ = ["NAME", "SOURCE", "binary", "build", "processes"]

SOURCE = Path(__file__).with_name("go_server.go")
NAME = "halfclose-lab-server"


def binary() -> Path:
    """Where the binary for the current source is (or will be) built."""
    return gobuild.binary(SOURCE, NAME)


def build() -> Path:
    """Build the server unless the cache has it; return the binary's path.

    Raises:
        EnvironmentProblem: go is not installed, or the build failed (its last line).
    """
    return gobuild.build(SOURCE, NAME)


def processes(site: Site) -> list[Process]:
    argv = [str(binary()), "-port", str(site.port), "-idle-timeout", f"{max(1, round(site.idle_timeout_s * 1000))}ms",
            "-image", str(site.image)]
    argv += [a for addr in site.listen for a in ("-listen", addr)]
    if site.tls is not None:
        argv += ["-tls-cert", str(site.tls.cert), "-tls-key", str(site.tls.key), "-tls-version", site.tls.version]
    argv += ["-http2"] if site.http2 else []
    return [Process(what="the Go server", argv=tuple(argv), port=site.port, ready="ready")]
