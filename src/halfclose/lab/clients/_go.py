"""A Go ``net/http`` client (``goclient.go``, standard library only), built once with Debian's golang-go.

:func:`build` runs at the lab's set-up (as root) and leaves the binary in a cache outside /root,
keyed by the source's hash, where the app uid can run it; :func:`run` runs it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from halfclose.errors import EnvironmentProblem
from halfclose.lab.app import RequestRecord, Workload
from halfclose.lab.clients._external import from_json_line, run_program

__all__ = ["CACHE", "SOURCE", "build", "run"]

SOURCE = Path(__file__).with_name("goclient.go")
#: Where built clients (and Go's build cache) live: readable by every uid, not under /root.
CACHE = Path("/var/cache/halfclose/go")


def build(cache: Path = CACHE, go: str = "go") -> Path:
    """The built client for the current source, building it first if needed.

    Raises:
        EnvironmentProblem: the Go toolchain failed (its last line says why).
    """
    source = SOURCE.read_bytes()
    binary = cache / f"lab-client-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    for path in (cache.parent, cache):
        path.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cache), "GOCACHE": str(cache / "build"),
        "GOPATH": str(cache / "gopath"), "GO111MODULE": "off", "CGO_ENABLED": "0", "GOFLAGS": "-trimpath",
    }
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        main_go = Path(tmp) / "main.go"
        main_go.write_bytes(source)
        out = Path(tmp) / "lab-client"
        done = subprocess.run([go, "build", "-o", str(out), str(main_go)], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise EnvironmentProblem(f"the Go client does not build with {go}: {last}")
        out.chmod(0o755)
        os.replace(out, binary)
    return binary


def run(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Run the built Go client (``workload.program``) for the whole workload."""
    argv = [workload.program, "-url", workload.url, "-requests", str(workload.requests), "-gap", str(workload.gap_s)]
    argv += ["-http2"] if workload.http2 else []
    env = {"SSL_CERT_FILE": workload.cafile} if workload.tls and workload.cafile else {}
    status, _ = run_program(argv, from_json_line, emit, env=env)
    return status
