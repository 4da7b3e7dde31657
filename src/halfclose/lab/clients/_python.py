"""The Python clients: the field report's app (``reuse``), urllib3, requests, httpx and the guarded ones.

Each makes its requests in this process with :func:`~halfclose.lab.clients._common.paced`.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from typing import Any

from halfclose.lab.app import RequestRecord, Workload
from halfclose.lab.clients._common import (
    Outcome,
    PortTracker,
    SyncClient,
    error_text,
    paced,
    port_of,
    ssl_context,
    version_text,
)

__all__ = ["run"]

_HEADERS = {"User-Agent": "halfclose-lab-app"}


class _ReuseClient:
    """The app from the field report: one connection, reused blindly; on failure, resolve again,
    reconnect and retry once. Over TLS the socket is wrapped with the run's CA and SNI."""

    def __init__(self, workload: Workload) -> None:
        self._host = workload.host
        self._port = workload.port
        self._tls = ssl_context(workload) if workload.tls else None
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(addr)
        conn: http.client.HTTPConnection
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=10, context=self._tls)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
        conn.sock = sock
        return conn

    def _once(self, conn: http.client.HTTPConnection) -> tuple[int, int, str, str]:
        conn.request("GET", "/img.png", headers={"Host": self._host, **_HEADERS})
        response = conn.getresponse()
        body = response.read()
        return response.status, len(body), version_text(response.version), response.getheader("Keep-Alive") or ""

    def get(self) -> Outcome:
        lookups = 0
        reused = self._conn is not None
        if self._conn is None:
            self._conn = self._connect()
            lookups += 1
        conn = self._conn
        try:
            status, size, version, keep_alive = self._once(conn)
            return Outcome(status=status, body_bytes=size, reused=reused, local_port=port_of(conn.sock),
                           dns_lookups=lookups, http_version=version, keep_alive=keep_alive)
        except (OSError, http.client.HTTPException) as exc:
            error = error_text(exc)
            conn.close()
            self._conn = None
        self._conn = self._connect()
        lookups += 1
        port = port_of(self._conn.sock)
        status, size, version, keep_alive = self._once(self._conn)
        return Outcome(status=status, body_bytes=size, reused=reused, reused_dead=reused, attempts=2, error=error,
                       local_port=port, dns_lookups=lookups, http_version=version, keep_alive=keep_alive)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class _Urllib3Client:
    def __init__(self, workload: Workload) -> None:
        import urllib3

        self._url = workload.url
        context = ssl_context(workload) if workload.tls else None
        self._pool = urllib3.PoolManager(ssl_context=context, headers=_HEADERS)
        self._ports = PortTracker()

    def get(self) -> Outcome:
        response = self._pool.request("GET", self._url, preload_content=False, retries=False)
        port = port_of(getattr(response.connection, "sock", None))
        body = response.read()
        keep_alive = response.headers.get("Keep-Alive", "")
        response.release_conn()
        return Outcome(status=response.status, body_bytes=len(body), reused=self._ports.reused(port),
                       local_port=port, http_version=version_text(response.version), keep_alive=keep_alive)

    def close(self) -> None:
        self._pool.clear()


class _RequestsClient:
    def __init__(self, workload: Workload, session: Any = None) -> None:
        import requests

        self._url = workload.url
        self._session: requests.Session = session if session is not None else requests.Session()
        self._session.headers.update(_HEADERS)
        if workload.tls:
            self._session.verify = workload.cafile
        self._ports = PortTracker()

    def get(self) -> Outcome:
        with self._session.get(self._url, stream=True, timeout=10) as response:
            port = port_of(getattr(response.raw.connection, "sock", None))
            body = response.content
        return Outcome(status=response.status_code, body_bytes=len(body), reused=self._ports.reused(port),
                       local_port=port, http_version=version_text(response.raw.version),
                       keep_alive=response.headers.get("Keep-Alive", ""))

    def close(self) -> None:
        self._session.close()


def _httpx_options(workload: Workload) -> dict[str, Any]:
    verify: ssl.SSLContext | bool = ssl_context(workload) if workload.tls else True
    # Without TLS, HTTP/2 is h2c with prior knowledge: HTTP/1.1 off.
    http1 = workload.tls or not workload.http2
    return {"timeout": 10, "verify": verify, "http2": workload.http2, "http1": http1, "headers": _HEADERS}


class _HttpxClient:
    """httpx; its trace extension tells whether a request was first sent on a pooled connection and
    then again on a new one (httpcore resends by itself when an HTTP/2 connection it wrote to turns
    out to be closed)."""

    def __init__(self, workload: Workload, client: Any = None) -> None:
        import httpx

        self._url = workload.url
        self._client: httpx.Client = client if client is not None else httpx.Client(**_httpx_options(workload))

    def get(self) -> Outcome:
        events: list[str] = []
        with self._client.stream("GET", self._url, extensions={"trace": lambda name, info: events.append(name)}
                                 ) as response:
            stream = response.extensions.get("network_stream")
            addr = stream.get_extra_info("client_addr") if stream is not None else None
            port = int(addr[1]) if addr else 0
            body = response.read()
        sends = [i for i, name in enumerate(events) if name.endswith(".send_request_headers.started")]
        connects = [i for i, name in enumerate(events) if name.endswith("connect_tcp.started")]
        reused = bool(sends) and (not connects or sends[0] < connects[0])
        dead = reused and bool(connects)
        return Outcome(status=response.status_code, body_bytes=len(body), reused=reused, reused_dead=dead,
                       attempts=2 if dead else 1, local_port=port, http_version=version_text(response.http_version),
                       keep_alive=response.headers.get("Keep-Alive", ""))

    def close(self) -> None:
        self._client.close()


def _guard_requests(workload: Workload) -> SyncClient:
    from halfclose.client import session

    return _RequestsClient(workload, session(network="lab"))


def _guard_httpx(workload: Workload) -> SyncClient:
    from halfclose.client import httpx_client

    options = {k: v for k, v in _httpx_options(workload).items() if k not in ("http1", "http2")}
    return _HttpxClient(workload, httpx_client(network="lab", **options))


_FACTORIES: dict[str, Callable[[Workload], SyncClient]] = {
    "reuse": _ReuseClient,
    "urllib3": _Urllib3Client,
    "requests": _RequestsClient,
    "httpx": _HttpxClient,
    "guard-requests": _guard_requests,
    "guard-httpx": _guard_httpx,
}


def run(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Make the workload's requests with the Python client it names."""
    return paced(workload, _FACTORIES[workload.client](workload), emit)
