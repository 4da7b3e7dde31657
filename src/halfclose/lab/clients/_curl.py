"""curl: one process makes all the requests (its connection cache and DNS cache live across them).

The requests are one globbed URL (``?n=[1-N]``); ``--rate`` spaces them. curl's rate runs from
start to start, so the idle gap it leaves is the lab's gap less the request's own time (a few ms on
the lab's link). After each transfer ``--write-out`` reports on stderr: ``%{json}`` (status, size,
time, local port, HTTP version, connects, error) and the ``Keep-Alive`` header. ``--verbose``
says, before that, whether curl reused a connection and whether a reused one died under the
request so that curl sent it again on a fresh one (``Connection died, retrying a fresh connect``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from halfclose.lab.app import RequestRecord, Workload
from halfclose.lab.clients._common import Outcome, record, version_text
from halfclose.lab.clients._external import run_program

__all__ = ["argv", "rate", "run"]

_MARK = "@halfclose "
_WRITE_OUT = "%{stderr}" + _MARK + "%{json}\t%header{keep-alive}\n"


def rate(gap_s: float) -> str:
    """curl's ``--rate`` value ("N/unit") whose spacing comes closest to *gap_s* seconds.

    >>> rate(3), rate(2.5), rate(0.5), rate(7200)
    ('20/m', '24/m', '2/s', '12/d')
    """
    best = ""
    error = float("inf")
    for unit, seconds in (("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        count = max(1, round(seconds / gap_s))
        off = abs(seconds / count - gap_s)
        if off < error - 1e-9:
            best, error = f"{count}/{unit}", off
    return best


def argv(workload: Workload) -> list[str]:
    """The curl command line for *workload*."""
    args = ["curl", "--silent", "--verbose", "--output", "/dev/null", "--write-out", _WRITE_OUT, "--max-time", "10"]
    if workload.gap_s > 0 and workload.requests > 1:
        args += ["--rate", rate(workload.gap_s)]
    if not workload.http2:
        args.append("--http1.1")
    else:
        args.append("--http2" if workload.tls else "--http2-prior-knowledge")
    if workload.tls and workload.cafile:
        args += ["--cacert", workload.cafile]
    args.append(f"{workload.url}?n=[1-{workload.requests}]")
    return args


class _Parser:
    """Turns curl's stderr into records: its verbose lines set the next record's reuse flags."""

    def __init__(self) -> None:
        self._index = 0
        self._reused = False
        self._died = False

    def __call__(self, line: str) -> RequestRecord | None:
        if not line.startswith(_MARK):
            if line.startswith("* Re-using existing connection"):
                self._reused = True
            elif line.startswith("* Connection died, retrying a fresh connect"):
                self._died = True
            return None
        end_ns = time.time_ns()
        text, _, keep_alive = line[len(_MARK):].partition("\t")
        data = json.loads(text)
        latency_ns = round(float(data["time_total"]) * 1e9)
        status = int(data.get("http_code") or 0)
        outcome = Outcome(
            status=status, body_bytes=int(data.get("size_download") or 0),
            reused=self._reused, reused_dead=self._reused and self._died, attempts=2 if self._died else 1,
            error=data.get("errormsg") or "", local_port=int(data.get("local_port") or 0),
            http_version=version_text(data["http_version"]) if status else "", keep_alive=keep_alive.strip(),
        )
        index = self._index
        self._index += 1
        self._reused = self._died = False
        return record(index, end_ns - latency_ns, latency_ns, outcome)


def _echo(line: str) -> bool:
    """curl's own error lines pass through; its verbose chatter does not."""
    return line.startswith("curl:")


def run(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Run curl for the whole workload."""
    status, count = run_program(argv(workload), _Parser(), emit, channel="stderr", echo=_echo)
    # curl's exit status is that of its last failed transfer: failures are in the records already.
    return 0 if count == workload.requests else (status or 1)
