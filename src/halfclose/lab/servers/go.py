"""Go: a ``net/http`` server with ``IdleTimeout`` the lab's idle timeout (``go_server.go``).

Built with Debian's golang-go (standard library only, nothing downloaded) into a cache outside
/root, named after the source's hash: ``./scripts/setup`` builds it, and a run builds it when the
cache has no binary for the current source. Go's net/http speaks HTTP/2 over TLS only (h2c is
not in its standard library).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from halfclose.lab.servers.plan import Process, Site

__all__ = ["CACHE", "SOURCE", "binary", "build", "processes"]

SOURCE = Path(__file__).with_name("go_server.go")
#: Where built binaries and Go's build cache live (the app uid never runs them; root does).
CACHE = Path("/var/cache/halfclose/go")


def binary() -> Path:
    """Where the binary for the current source is (or will be) built."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return CACHE / digest / "halfclose-lab-server"


def build() -> Path:
    """Build the server unless the cache has it; return the binary's path.

    Raises:
        EnvironmentProblem: go is not installed, or the build failed (its last line).
    """
    from halfclose.proc import require_program, run

    target = binary()
    if target.is_file():
        return target
    go = require_program("go")
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "GOCACHE": str(CACHE / "build-cache"), "GOPATH": str(CACHE / "gopath"), "GOPROXY": "off",
        "GOFLAGS": "-mod=mod", "GO111MODULE": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0",
        "HOME": str(CACHE), "GOENV": "off",
    }
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        run(["env", *[f"{k}={v}" for k, v in env.items()], go, "build", "-o", str(out), str(SOURCE)], timeout=900)
        os.replace(out, target)
    return target


def processes(site: Site) -> list[Process]:
    argv = [str(binary()), "-port", str(site.port), "-idle-timeout", f"{max(1, round(site.idle_timeout_s * 1000))}ms",
            "-image", str(site.image)]
    argv += [a for addr in site.listen for a in ("-listen", addr)]
    if site.tls is not None:
        argv += ["-tls-cert", str(site.tls.cert), "-tls-key", str(site.tls.key), "-tls-version", site.tls.version]
    argv += ["-http2"] if site.http2 else []
    return [Process(what="the Go server", argv=tuple(argv), port=site.port, ready="ready")]
