"""Node.js's built-in ``fetch`` (undici) as it comes, running ``fetch.mjs`` next to this module.

The run's CA comes through ``NODE_EXTRA_CA_CERTS``; TLS keys go to ``SSLKEYLOGFILE`` when it is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from halfclose.lab.app import RequestRecord, Workload
from halfclose.lab.clients._external import from_json_line, run_program

__all__ = ["run"]

SCRIPT = Path(__file__).with_name("fetch.mjs")


def run(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Run the Node.js client for the whole workload (the run's CA added with NODE_EXTRA_CA_CERTS)."""
    env = {"NODE_EXTRA_CA_CERTS": workload.cafile} if workload.tls and workload.cafile else {}
    keylog = os.environ.get("SSLKEYLOGFILE")
    argv = ["node", *([f"--tls-keylog={keylog}"] if keylog else []), str(SCRIPT), workload.url,
            str(workload.requests), str(workload.gap_s)]
    status, _ = run_program(argv, from_json_line, emit, env=env)
    return status
