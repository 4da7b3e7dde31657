"""Headless Chromium: a real browser's connection pool and resolver, driven over the DevTools protocol.

Chromium (Debian's ``/usr/bin/chromium``, through Playwright's pipe to it) opens a lab page served
from the lab's origin (answered by the DevTools protocol itself, so it costs no request), whose
script fetches the image with a cache-busting query. This process waits the gaps in real time
between those fetches (no virtual time), and reads what the browser's network stack did from
its ``Network`` events: the protocol, whether the connection was reused, the ``Keep-Alive``
header, the net error of a failed load. A page cannot see its connection's local port: right after
each fetch the kernel is asked (sock_diag, as ``ss`` does) which of the app uid's connections to
the server received data last. A fresh profile is made for each run in the app's work folder and
removed afterwards; over TLS the run's CA goes into that home's NSS database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from halfclose.lab.app import RequestRecord, Workload
from halfclose.lab.clients._common import Outcome, error_text, record
from halfclose.sockdiag import SockDiag, TcpState, state_mask

__all__ = ["FLAGS", "PAGE", "run", "serving_port"]

#: Chromium's flags: no sandbox (namespaces), nothing that reaches for the closed network by itself.
FLAGS = ("--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-quic")

#: The lab page: its script fetches a URL and says what came back.
PAGE = """<!doctype html><html><head><title>halfclose lab</title><link rel="icon" href="data:,"></head><body>
<script>
window.labFetch = async (url) => {
  try {
    const response = await fetch(url, {cache: "no-store"});
    const body = await response.arrayBuffer();
    return {status: response.status, bytes: body.byteLength, error: ""};
  } catch (error) {
    return {status: 0, bytes: 0, error: String(error)};
  }
};
</script></body></html>"""

_PROTOCOLS = {"http/1.1": "1.1", "http/1.0": "1.0", "h2": "2", "h3": "3"}


def _trust(home: Path, cafile: str) -> None:
    """Put the run's CA into the NSS database of *home* (where Chromium on Linux reads user roots)."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    for argv in (["certutil", "-d", f"sql:{db}", "-N", "--empty-password"],
                 ["certutil", "-d", f"sql:{db}", "-A", "-n", "halfclose lab CA", "-t", "C,,", "-i", cafile]):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)


class _Network:
    """What Chromium's network stack reported, by request URL."""

    def __init__(self) -> None:
        self.responses: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}
        self._urls: dict[str, str] = {}

    def sent(self, params: dict[str, Any]) -> None:
        self._urls[params["requestId"]] = params["request"]["url"]

    def received(self, params: dict[str, Any]) -> None:
        response = params["response"]
        self.responses[response["url"]] = response

    def failed(self, params: dict[str, Any]) -> None:
        url = self._urls.get(params["requestId"])
        if url is not None:
            self.failures[url] = params.get("errorText", "")


def serving_port(diag: SockDiag, port: int, uid: int) -> int:
    """Local port of *uid*'s connection to *port* that received data last (0 when it has none)."""
    best: tuple[int, int] | None = None
    for msg in diag.dump(states=state_mask(TcpState.ESTABLISHED, TcpState.CLOSE_WAIT), info=True):
        last = msg.info.tcpi_last_data_recv if msg.info is not None else None
        if msg.id.dport == port and msg.idiag_uid == uid and last is not None and (best is None or last < best[0]):
            best = (last, msg.id.sport)
    return best[1] if best else 0


def _outcome(result: dict[str, Any], response: dict[str, Any] | None, failure: str, used: set[object]) -> Outcome:
    """The outcome of one fetch; *used* holds the connections earlier responses came on.

    Chromium calls a preconnected socket "reused" on its first request; here a connection is
    reused only when an earlier request of the run was answered on it.
    """
    headers = {k.lower(): v for k, v in (response or {}).get("headers", {}).items()}
    error = str(result.get("error") or "")
    if failure:
        error = f"{error} ({failure})" if error else failure
    connection = (response or {}).get("connectionId")
    reused = bool(response and response.get("connectionReused")) and connection in used
    if connection is not None:
        used.add(connection)
    return Outcome(
        status=int(result.get("status") or 0), body_bytes=int(result.get("bytes") or 0),
        reused=reused, error=error,
        http_version=_PROTOCOLS.get(str((response or {}).get("protocol", "")), ""),
        keep_alive=str(headers.get("keep-alive", "")),
    )


def run(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Run the workload in a fresh headless Chromium."""
    from playwright.sync_api import sync_playwright

    assert workload.work_dir is not None, "the Chromium client needs a work folder"
    profile = workload.work_dir / "chromium-profile"
    profile.mkdir(parents=True)
    try:
        if workload.tls:
            _trust(workload.work_dir, workload.cafile)
        flags = [*FLAGS] + ([] if workload.http2 else ["--disable-http2"])
        if os.environ.get("SSLKEYLOGFILE"):
            flags.append(f"--ssl-key-log-file={os.environ['SSLKEYLOGFILE']}")
        origin = workload.url.rsplit("/", 1)[0]
        with sync_playwright() as playwright, SockDiag() as diag:
            context = playwright.chromium.launch_persistent_context(
                str(profile), executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True,
                args=flags)
            try:
                page = context.pages[0] if context.pages else context.new_page()
                network = _Network()
                cdp = context.new_cdp_session(page)
                cdp.on("Network.requestWillBeSent", network.sent)
                cdp.on("Network.responseReceived", network.received)
                cdp.on("Network.loadingFailed", network.failed)
                cdp.send("Network.enable")
                page.route(f"{origin}/halfclose-lab.html",
                           lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE))
                page.goto(f"{origin}/halfclose-lab.html")
                page.unroute_all()
                used: set[object] = set()
                for index in range(workload.requests):
                    if index:
                        page.wait_for_timeout(workload.gap_s * 1000)
                    url = f"{workload.url}?n={index}"
                    start_ns = time.time_ns()
                    t0 = time.perf_counter_ns()
                    try:
                        result = page.evaluate("(url) => window.labFetch(url)", url)
                        latency = time.perf_counter_ns() - t0
                        page.wait_for_timeout(1)  # let the request's last events arrive
                        outcome = _outcome(result, network.responses.get(url), network.failures.get(url, ""), used)
                        outcome = replace(outcome, local_port=serving_port(diag, workload.port, os.getuid()))
                    except Exception as exc:  # the app reports every failure it sees, whatever its type
                        latency = time.perf_counter_ns() - t0
                        outcome = Outcome(reused=index > 0, error=error_text(exc))
                    emit(record(index, start_ns, latency, outcome))
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return 0
