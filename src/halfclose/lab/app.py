"""The app emulator: the phone-side app that makes requests separated by idle gaps.

Runs as ``python -m halfclose.lab.app`` inside the phone namespace under an app uid, and writes
one JSON line per request to stdout (see :class:`RequestRecord`). It imports only the standard
library, the HTTP client it is asked to use and, for the guarded clients, :mod:`halfclose.client`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")

__all__ = ["CLIENTS", "RequestRecord", "main"]


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
        local_port: local port of the connection that carried (or last tried) the request.
        dns_lookups: name resolutions the app did for this request (when it can tell; -1 if not).
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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcome:
    status: int
    body_bytes: int
    reused: bool
    reused_dead: bool
    attempts: int
    error: str
    local_port: int
    dns_lookups: int = -1


class _ReuseClient:
    """The app from the field report: one connection, reused blindly; on failure, resolve again,
    reconnect and retry once."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(addr)
        conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
        conn.sock = sock
        return conn

    def _once(self, conn: http.client.HTTPConnection) -> tuple[int, int]:
        conn.request("GET", "/img.png", headers={"Host": self._host, "User-Agent": "halfclose-lab-app"})
        response = conn.getresponse()
        body = response.read()
        return response.status, len(body)

    def get(self) -> _Outcome:
        lookups = 0
        reused = self._conn is not None
        error = ""
        if self._conn is None:
            self._conn = self._connect()
            lookups += 1
        conn = self._conn
        port = conn.sock.getsockname()[1] if conn.sock else 0
        try:
            status, size = self._once(conn)
            return _Outcome(status=status, body_bytes=size, reused=reused, reused_dead=False,
                            attempts=1, error="", local_port=port, dns_lookups=lookups)
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            conn.close()
            self._conn = None
        self._conn = self._connect()
        lookups += 1
        port = self._conn.sock.getsockname()[1] if self._conn.sock else 0
        status, size = self._once(self._conn)
        return _Outcome(status=status, body_bytes=size, reused=reused, reused_dead=reused,
                        attempts=2, error=error, local_port=port, dns_lookups=lookups)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _port_of(sock: object) -> int:
    getsockname = getattr(sock, "getsockname", None)
    if getsockname is None:
        return 0
    try:
        return int(getsockname()[1])
    except OSError:
        return 0


class _PoolingClient:
    """A library client that pools connections itself: reuse shows as the same local port."""

    def __init__(self) -> None:
        self._last_port = 0

    def _outcome(self, status: int, body: bytes, port: int) -> _Outcome:
        reused = port == self._last_port
        self._last_port = port
        return _Outcome(status=status, body_bytes=len(body), reused=reused, reused_dead=False,
                        attempts=1, error="", local_port=port)


class _Urllib3Client(_PoolingClient):
    def __init__(self, url: str, pool: object | None = None) -> None:
        import urllib3

        super().__init__()
        self._url = url
        self._pool: urllib3.PoolManager = pool if isinstance(pool, urllib3.PoolManager) else urllib3.PoolManager()

    def get(self) -> _Outcome:
        response = self._pool.request("GET", self._url, preload_content=False, retries=False)
        port = _port_of(getattr(response.connection, "sock", None))
        body = response.read()
        response.release_conn()
        return self._outcome(response.status, body, port)

    def close(self) -> None:
        self._pool.clear()


class _RequestsClient(_PoolingClient):
    def __init__(self, url: str, session: object | None = None) -> None:
        import requests

        super().__init__()
        self._url = url
        self._session: requests.Session = session if isinstance(session, requests.Session) else requests.Session()

    def get(self) -> _Outcome:
        with self._session.get(self._url, stream=True, timeout=10) as response:
            port = _port_of(getattr(response.raw.connection, "sock", None))
            body = response.content
        return self._outcome(response.status_code, body, port)

    def close(self) -> None:
        self._session.close()


class _HttpxClient(_PoolingClient):
    def __init__(self, url: str, client: object | None = None) -> None:
        import httpx

        super().__init__()
        self._url = url
        self._client: httpx.Client = client if isinstance(client, httpx.Client) else httpx.Client(timeout=10)

    def get(self) -> _Outcome:
        with self._client.stream("GET", self._url) as response:
            stream = response.extensions.get("network_stream")
            addr = stream.get_extra_info("client_addr") if stream is not None else None
            port = int(addr[1]) if addr else 0
            body = response.read()
        return self._outcome(response.status_code, body, port)

    def close(self) -> None:
        self._client.close()


class _AiohttpClient(_PoolingClient):
    """aiohttp on an event loop of its own, running all the time in a thread (as in an asyncio app)."""

    def __init__(self, url: str, make_session: Callable[[], object] | None = None) -> None:
        import asyncio
        import threading

        import aiohttp

        super().__init__()
        self._url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> aiohttp.ClientSession:
            made = make_session() if make_session is not None else None
            if isinstance(made, aiohttp.ClientSession):
                return made
            return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

        self._session = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get(self) -> _Outcome:
        async def once() -> tuple[int, bytes, int]:
            async with self._session.get(self._url) as response:
                transport = response.connection.transport if response.connection is not None else None
                sockname = transport.get_extra_info("sockname") if transport is not None else None
                body = await response.read()
                return response.status, body, int(sockname[1]) if sockname else 0

        status, body, port = self._run(once())
        return self._outcome(status, body, port)

    def close(self) -> None:
        self._run(self._session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


class _Client(Protocol):
    def get(self) -> _Outcome: ...

    def close(self) -> None: ...


def _guard_requests(url: str) -> AbstractContextManager[_Client]:
    from halfclose.client import session

    return _closing(_RequestsClient(url, session(network="lab")))


def _guard_httpx(url: str) -> AbstractContextManager[_Client]:
    from halfclose.client import httpx_client

    return _closing(_HttpxClient(url, httpx_client(network="lab")))


def _guard_aiohttp(url: str) -> AbstractContextManager[_Client]:
    from halfclose.client import aiohttp_session

    return _closing(_AiohttpClient(url, lambda: aiohttp_session(network="lab")))


@contextmanager
def _closing(client: _Client) -> Iterator[_Client]:
    try:
        yield client
    finally:
        client.close()


def _url(host: str, port: int) -> str:
    return f"http://{host}/img.png" if port == 80 else f"http://{host}:{port}/img.png"


#: Client name -> factory(host, port) of a context manager yielding the client.
CLIENTS: dict[str, Callable[[str, int], AbstractContextManager[_Client]]] = {
    "reuse": lambda host, port: _closing(_ReuseClient(host, port)),
    "urllib3": lambda host, port: _closing(_Urllib3Client(_url(host, port))),
    "requests": lambda host, port: _closing(_RequestsClient(_url(host, port))),
    "httpx": lambda host, port: _closing(_HttpxClient(_url(host, port))),
    "guard-requests": lambda host, port: _guard_requests(_url(host, port)),
    "guard-httpx": lambda host, port: _guard_httpx(_url(host, port)),
    "aiohttp": lambda host, port: _closing(_AiohttpClient(_url(host, port))),
    "guard-aiohttp": lambda host, port: _guard_aiohttp(_url(host, port)),
}


def _emit(record: RequestRecord) -> None:
    sys.stdout.write(json.dumps(asdict(record)) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m halfclose.lab.app``."""
    parser = argparse.ArgumentParser(prog="python -m halfclose.lab.app")
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--gap", type=float, required=True)
    args = parser.parse_args(argv)
    with CLIENTS[args.client](args.host, args.port) as client:
        for index in range(args.requests):
            if index:
                time.sleep(args.gap)
            start_ns = time.time_ns()
            t0 = time.perf_counter_ns()
            try:
                outcome = client.get()
            except Exception as exc:  # the app reports every failure it sees, whatever its type
                outcome = _Outcome(status=0, body_bytes=0, reused=index > 0, reused_dead=False, attempts=1,
                                   error=f"{type(exc).__name__}: {exc}", local_port=0)
            latency = time.perf_counter_ns() - t0
            _emit(RequestRecord(
                index=index, start_ns=start_ns, latency_ns=latency,
                ok=outcome.status == 200 and outcome.body_bytes > 0, status=outcome.status,
                body_bytes=outcome.body_bytes, reused=outcome.reused, reused_dead=outcome.reused_dead,
                attempts=outcome.attempts, error=outcome.error, local_port=outcome.local_port,
                dns_lookups=outcome.dns_lookups,
            ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
