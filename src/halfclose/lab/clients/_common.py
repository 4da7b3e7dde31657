"""What the clients share: the paced request loop, TLS trust, turning what a client saw into a record."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from halfclose.lab.app import RequestRecord, Workload

__all__ = ["Outcome", "PortTracker", "SyncClient", "error_text", "paced", "port_of", "record", "ssl_context",
           "version_text"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one request gave, before its timing is added (see :func:`record`)."""

    status: int = 0
    body_bytes: int = 0
    reused: bool = False
    reused_dead: bool = False
    attempts: int = 1
    error: str = ""
    local_port: int = 0
    dns_lookups: int = -1
    http_version: str = ""
    keep_alive: str = ""


def record(index: int, start_ns: int, latency_ns: int, outcome: Outcome) -> RequestRecord:
    """The record of request *index* from its timing and *outcome*."""
    return RequestRecord(
        index=index, start_ns=start_ns, latency_ns=latency_ns,
        ok=outcome.status == 200 and outcome.body_bytes > 0, status=outcome.status,
        body_bytes=outcome.body_bytes, reused=outcome.reused, reused_dead=outcome.reused_dead,
        attempts=outcome.attempts, error=outcome.error, local_port=outcome.local_port,
        dns_lookups=outcome.dns_lookups, http_version=outcome.http_version, keep_alive=outcome.keep_alive,
    )


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, as the app reports it."""
    return f"{type(exc).__name__}: {exc}"


def version_text(version: object) -> str:
    """An HTTP version as "1.0", "1.1" or "2", from what a library reports (11, "HTTP/1.1", "HTTP/2", ...)."""
    text = str(version).upper().removeprefix("HTTP/")
    return {"10": "1.0", "11": "1.1", "20": "2", "2.0": "2"}.get(text, text)


def ssl_context(workload: Workload) -> ssl.SSLContext:
    """A client context that trusts the run's CA only (certificates and host names verified)."""
    context = ssl.create_default_context(cafile=workload.cafile or None)
    if workload.http2:
        context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def port_of(sock: object) -> int:
    """Local port of a socket-like object, 0 when it has none (closed, or not a socket)."""
    getsockname = getattr(sock, "getsockname", None)
    if getsockname is None:
        return 0
    try:
        return int(getsockname()[1])
    except (OSError, IndexError, TypeError):
        return 0


class PortTracker:
    """Reuse as a pooling client shows it: the request went out from the previous request's port."""

    def __init__(self) -> None:
        self._last = 0

    def reused(self, port: int) -> bool:
        was = port != 0 and port == self._last
        self._last = port or self._last
        return was


class SyncClient(Protocol):
    def get(self) -> Outcome: ...

    def close(self) -> None: ...


def paced(workload: Workload, client: SyncClient, emit: Callable[[RequestRecord], None]) -> int:
    """Make the workload's requests with *client*, *gap_s* idle seconds apart, emitting each record."""
    try:
        for index in range(workload.requests):
            if index:
                time.sleep(workload.gap_s)
            start_ns = time.time_ns()
            t0 = time.perf_counter_ns()
            try:
                outcome = client.get()
            except Exception as exc:  # the app reports every failure it sees, whatever its type
                outcome = Outcome(reused=index > 0, error=error_text(exc))
            emit(record(index, start_ns, time.perf_counter_ns() - t0, outcome))
    finally:
        client.close()
    return 0
