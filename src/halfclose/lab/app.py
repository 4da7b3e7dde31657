"""The app emulator: the phone-side app that makes requests separated by idle gaps.

Runs as ``python -m halfclose.lab.app`` inside the phone namespace under an app uid, and writes
one JSON line per request to stdout (see :class:`RequestRecord`). The clients themselves live in
:mod:`halfclose.lab.clients`, one module each: Python libraries run in this process; curl, Node.js,
Go and Chromium run as child processes of it (so as the same uid, in the same namespace), and what
they saw is turned into the same records here. This module imports only the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["RequestRecord", "Workload", "main"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """What the app saw of one request.

    Fields:
        index: 0-based request number.
        start_ns: wall-clock start, integer ns since the epoch (comparable with capture times).
        latency_ns: from start to the last body byte (or to the error).
        ok: a complete 200 response arrived.
        status: HTTP status, 0 when none arrived.
        body_bytes: body bytes received.
        reused: the request was first sent on a connection used before.
        reused_dead: that reused connection turned out to be closed by the server (the request
            was written into it or failed on it), so the request had to be retried.
        attempts: connections tried (1, or 2 after a retry).
        error: the error the app saw, "" when none (a retried failure included).
        local_port: local port of the connection that carried (or last tried) the request; 0 when
            the client cannot tell.
        dns_lookups: name resolutions the app did for this request (when it can tell; -1 if not).
        http_version: the HTTP version of the response as the client reports it ("1.1", "2"; ""
            when no response arrived).
        keep_alive: the response's ``Keep-Alive`` header, "" when it had none.
    """

    index: int
    start_ns: int
    latency_ns: int
    ok: bool
    status: int
    body_bytes: int
    reused: bool
    reused_dead: bool
    attempts: int
    error: str
    local_port: int
    dns_lookups: int
    http_version: str = ""
    keep_alive: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """What the app is asked to do: the same for every client.

    Fields:
        client: the client's name (a :class:`~halfclose.lab.config.ClientKind` value).
        host, port: the lab name and the server's port.
        tls: HTTPS instead of HTTP; *cafile* is then the CA the client must trust.
        http2: ask for HTTP/2 where the client speaks it.
        requests: how many requests.
        gap_s: idle seconds between the end of one request and the start of the next.
        work_dir: a folder the app uid owns (browser profile, home); removed with the run.
        program: a client program prepared at set-up (the Go client's binary), "" when none.
    """

    client: str
    host: str
    port: int
    tls: bool = False
    cafile: str = ""
    http2: bool = False
    requests: int = 1
    gap_s: float = 0.0
    work_dir: Path | None = None
    program: str = ""

    @property
    def url(self) -> str:
        """The image's URL (the default port left out, as a user would write it)."""
        scheme = "https" if self.tls else "http"
        default = 443 if self.tls else 80
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        return f"{scheme}://{netloc}/img.png"


def emit(record: RequestRecord) -> None:
    """Write one record as a JSON line on stdout (what the runner reads)."""
    sys.stdout.write(json.dumps(asdict(record)) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m halfclose.lab.app``."""
    from halfclose.lab.clients import CLIENTS, run_client

    parser = argparse.ArgumentParser(prog="python -m halfclose.lab.app")
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--cafile", default="")
    parser.add_argument("--http2", action="store_true")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--gap", type=float, required=True)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--program", default="")
    args = parser.parse_args(argv)
    workload = Workload(client=args.client, host=args.host, port=args.port, tls=args.tls, cafile=args.cafile,
                        http2=args.http2, requests=args.requests, gap_s=args.gap, work_dir=args.work,
                        program=args.program)
    return run_client(workload, emit)


if __name__ == "__main__":
    sys.exit(main())
