"""Go programs of the lab (one source file each, standard library only), built with Debian's golang-go.

Each program is built once, as root, into a cache outside /root keyed by its source's hash,
readable and runnable by every uid (the app uid runs the Go client); nothing is downloaded (no
module proxy, no toolchain switch). ``./scripts/setup`` builds them, and a run builds one when
the cache has no binary for the current source.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from halfclose.errors import EnvironmentProblem
from halfclose.proc import require_program

__all__ = ["CACHE", "binary", "build"]

#: Where built programs (and Go's build cache) live: readable by every uid, not under /root.
CACHE = Path("/var/cache/halfclose/go")


def binary(source: Path, name: str) -> Path:
    """Where the program built from *source* is (or will be): ``CACHE/<source hash>/<name>``."""
    return CACHE / hashlib.sha256(source.read_bytes()).hexdigest()[:16] / name


def build(source: Path, name: str) -> Path:
    """The program built from *source*, built first unless the cache has it; its path.

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
    }  # fmt: skip
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / name
        done = subprocess.run([go, "build", "-o", str(out), str(source)], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise EnvironmentProblem(f"{source.name} does not build with {go}: {last}")
        out.chmod(0o755)
        os.replace(out, target)
    return target
