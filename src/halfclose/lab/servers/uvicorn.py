"""uvicorn: a small ASGI app serving the image, ``timeout_keep_alive`` the lab's idle timeout.

Started as ``python -m halfclose.lab.servers uvicorn ...``: uvicorn's own ``Config`` and
``Server`` (its h11 protocol), on sockets bound to each lab address; with TLS, uvicorn's SSL
context with its minimum and maximum version set to the one asked for.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from halfclose.lab.servers.builtin import TLS_VERSIONS
from halfclose.lab.servers.image import IMAGE_HEADERS
from halfclose.lab.servers.plan import Process, Site

__all__ = ["ImageApp", "processes", "serve"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ImageApp:
    """The ASGI app: the image at every path, whatever the method and query string."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._headers = [(k.lower().encode(), v.encode()) for k, v in IMAGE_HEADERS]
        self._headers.append((b"content-length", str(len(body)).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body})


def processes(site: Site) -> list[Process]:
    argv = [site.python, "-m", "halfclose.lab.servers", "uvicorn", "--port", str(site.port),
            "--idle-timeout", str(site.idle_timeout_s), "--image", str(site.image)]
    argv += [a for addr in site.listen for a in ("--listen", addr)]
    if site.tls is not None:
        argv += ["--tls-cert", str(site.tls.cert), "--tls-key", str(site.tls.key), "--tls-version", site.tls.version]
    return [Process(what="uvicorn", argv=tuple(argv), port=site.port, ready="ready")]


def serve(listen: Sequence[str], port: int, idle_timeout_s: float, image: Path,
          tls: tuple[Path, Path, str] | None) -> None:
    """Run uvicorn until SIGTERM/SIGINT (uvicorn handles them)."""
    import uvicorn

    sockets = []
    for addr in listen:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((addr, port))
        sockets.append(sock)
    config = uvicorn.Config(
        ImageApp(image.read_bytes()), http="h11", lifespan="off", access_log=False, log_level="warning",
        # uvicorn takes any number of seconds here (it is handed to loop.call_later).
        timeout_keep_alive=idle_timeout_s,  # type: ignore[arg-type]
        ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None,
    )
    config.load()
    if tls is not None and config.ssl is not None:
        config.ssl.minimum_version = config.ssl.maximum_version = TLS_VERSIONS[tls[2]]
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=sockets))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            print("ready", file=sys.stderr, flush=True)
        await task

    asyncio.run(run())
