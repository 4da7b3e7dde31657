"""aiohttp: one ClientSession, as it comes or through halfclose's guard.

``aiohttp``: its own connector pools connections and caches DNS for 10 s. ``guard-aiohttp``:
:func:`halfclose.client.aiohttp_session` (the guard's connector, DNS cache, retirement and retry
rule). Either way the local port of each connection handed out is noted as the connector's
``connect`` returns it (by then a response's connection may be back in the pool).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from halfclose.lab.app import RequestRecord, Workload
from halfclose.lab.clients._common import Outcome, PortTracker, error_text, record, ssl_context

__all__ = ["run"]


def _port(connection: Any) -> int:
    transport = connection.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return int(sockname[1]) if sockname else 0


def _connector(workload: Workload, ports: list[int]) -> object:
    """aiohttp's TCPConnector, noting the local port of each connection it hands out."""
    import aiohttp

    class Connector(aiohttp.TCPConnector):
        async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
            connection = await super().connect(req, traces, timeout)
            ports.append(_port(connection))
            return connection

    return Connector(ssl=ssl_context(workload) if workload.tls else True)


async def _get(session: object, url: str, ports: list[int], reuse: PortTracker) -> Outcome:
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    ports.clear()
    async with session.get(url) as response:
        body = await response.read()
        # aiohttp retries an idempotent request once on a new connection when a reused one failed.
        reused = reuse.reused(ports[0]) if ports else False
        port = ports[-1] if ports else 0
        if len(ports) > 1:
            reuse.reused(port)
        version = f"{response.version.major}.{response.version.minor}" if response.version else ""
        return Outcome(status=response.status, body_bytes=len(body), reused=reused,
                       reused_dead=reused and len(ports) > 1, local_port=port, attempts=max(1, len(ports)),
                       http_version=version,
                       keep_alive=response.headers.get("Keep-Alive", ""))


def _session(workload: Workload, ports: list[int]) -> object:
    """The workload's session: plain aiohttp, or the guarded one (``guard-aiohttp``)."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"User-Agent": "halfclose-lab-app"}
    if workload.client == "guard-aiohttp":
        from halfclose.client import aiohttp_session

        session = aiohttp_session(network="lab", ssl=ssl_context(workload) if workload.tls else True,
                                  timeout=timeout, headers=headers)
        guarded_connector = session.connector
        assert guarded_connector is not None
        guarded = guarded_connector.connect

        async def noting(req: Any, traces: Any, timeout: Any) -> Any:  # the guard's connector is its own
            connection = await guarded(req, traces, timeout)
            ports.append(_port(connection))
            return connection

        guarded_connector.connect = noting  # type: ignore[method-assign]
        return session
    plain = _connector(workload, ports)
    assert isinstance(plain, aiohttp.BaseConnector)
    return aiohttp.ClientSession(connector=plain, timeout=timeout, headers=headers)


async def _main(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    import aiohttp

    ports: list[int] = []
    reuse = PortTracker()
    made = _session(workload, ports)
    assert isinstance(made, aiohttp.ClientSession)
    async with made as session:
        for index in range(workload.requests):
            if index:
                await asyncio.sleep(workload.gap_s)
            start_ns = time.time_ns()
            t0 = time.perf_counter_ns()
            try:
                outcome = await _get(session, workload.url, ports, reuse)
            except Exception as exc:  # the app reports every failure it sees, whatever its type
                outcome = Outcome(reused=index > 0, error=error_text(exc))
            emit(record(index, start_ns, time.perf_counter_ns() - t0, outcome))
    return 0


def run(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Make the workload's requests with aiohttp (guarded for ``guard-aiohttp``) on an asyncio loop."""
    return asyncio.run(_main(workload, emit))
