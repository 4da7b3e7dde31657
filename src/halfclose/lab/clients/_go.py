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
from halfclose.proc import require_program

__all__ = ["CACHE", "NAME", "SOURCE", "binary", "build", "run"]

SOURCE = Path(__file__).with_name("goclient.go")
#: Where built programs (and Go's build cache) live: readable by every uid, not under /root.
CACHE = Path("/var/cache/halfclose/go")
NAME = "halfclose-lab-client"


def binary(source: Path = SOURCE, name: str = NAME) -> Path:
    """Where the program built from *source* is (or will be): ``CACHE/<source hash>/<name>``."""
    return CACHE / hashlib.sha256(source.read_bytes()).hexdigest()[:16] / name


def build(source: Path = SOURCE, name: str = NAME) -> Path:
    """The program built from *source* (one file, standard library only), built first if needed.

    Nothing is downloaded (no proxy, no toolchain switch); the result is readable and runnable by
    every uid.

    Raises:
        EnvironmentProblem: the Go toolchain is missing or failed (its last line says why).
    """
    target = binary(source, name)
    if target.is_file():
        return target
    go = require_program("go")
    target.parent.mkdir(parents=True, exist_ok=True)
    for path in (CACHE.parent, CACHE, target.parent):
        path.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(CACHE), "GOCACHE": str(CACHE / "build-cache"),
        "GOPATH": str(CACHE / "gopath"), "GOPROXY": "off", "GOTOOLCHAIN": "local", "GOENV": "off",
        "GO111MODULE": "off", "CGO_ENABLED": "0", "GOFLAGS": "-trimpath",
    }
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / name
        done = subprocess.run([go, "build", "-o", str(out), str(source)], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise EnvironmentProblem(f"{source.name} does not build with {go}: {last}")
        out.chmod(0o755)
        os.replace(out, target)
    return target


def run(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Run the built Go client (``workload.program``) for the whole workload."""
    argv = [workload.program, "-url", workload.url, "-requests", str(workload.requests), "-gap", str(workload.gap_s)]
    argv += ["-http2"] if workload.http2 else []
    env = {"SSL_CERT_FILE": workload.cafile} if workload.tls and workload.cafile else {}
    status, _ = run_program(argv, from_json_line, emit, env=env)
    return status
