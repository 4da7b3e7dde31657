"""A Go ``net/http`` client (``goclient.go``, standard library only), built once with Debian's golang-go.

:func:`build` runs at the lab's set-up (as root, :mod:`halfclose.lab.gobuild`) and leaves the
binary in a cache outside /root, keyed by the source's hash, where the app uid can run it;
:func:`run` runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from halfclose.lab import gobuild
from halfclose.lab.app import RequestRecord, Workload
from halfclose.lab.clients._external import from_json_line, run_program

__all__ = ["NAME", "SOURCE", "binary", "build", "run"]

SOURCE = Path(__file__).with_name("goclient.go")
NAME = "halfclose-lab-client"


def binary() -> Path:
    """Where the client built from the current source is (or will be)."""
    return gobuild.binary(SOURCE, NAME)


def build() -> Path:
    """The client, built first unless the cache has it (:func:`halfclose.lab.gobuild.build`).

    Raises:
        EnvironmentProblem: the Go toolchain is missing or failed (its last line says why).
    """
    return gobuild.build(SOURCE, NAME)


def run(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Run the built Go client (``workload.program``) for the whole workload."""
    argv = [workload.program, "-url", workload.url, "-requests", str(workload.requests), "-gap", str(workload.gap_s)]
    argv += ["-http2"] if workload.http2 else []
    env = {"SSL_CERT_FILE": workload.cafile} if workload.tls and workload.cafile else {}
    status, _ = run_program(argv, from_json_line, emit, env=env)
    return status
