"""The command line of the lab's Python servers (run inside the server namespace)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _http(args: argparse.Namespace) -> None:
    from halfclose.lab.servers.builtin import HttpServerOptions, TlsFiles, serve_http
    from halfclose.lab.servers.image import lab_image

    options = HttpServerOptions(idle_timeout_s=args.idle_timeout, race=args.race,
                                keepalive_header=args.keepalive_header, http2=args.http2,
                                close_rst=args.close_rst)
    tls = None
    if args.tls_cert:
        tls = TlsFiles(cert=args.tls_cert, key=args.tls_key, version=args.tls_version)
    body = args.image.read_bytes() if args.image else lab_image()
    servers = await serve_http(args.listen, args.port, options, body, tls, fast_open=args.fast_open)
    print("ready", file=sys.stderr, flush=True)
    await _until_signalled()
    for server in servers:
        server.close()


async def _dns(args: argparse.Namespace) -> None:
    from halfclose.lab.servers.dns import DnsAnswers, serve_dns

    answers = DnsAnswers(name=args.name, ttl=args.ttl, a=tuple(args.a), aaaa=tuple(args.aaaa))
    transports = await serve_dns(args.listen, answers)
    print("ready", file=sys.stderr, flush=True)
    await _until_signalled()
    for transport in transports:
        transport.close()


def _tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--tls-version", choices=["1.2", "1.3"], default="1.3")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m halfclose.lab.servers``."""
    parser = argparse.ArgumentParser(prog="python -m halfclose.lab.servers")
    sub = parser.add_subparsers(dest="kind", required=True)
    http = sub.add_parser("http")
    http.add_argument("--listen", action="append", required=True)
    http.add_argument("--port", type=int, default=80)
    http.add_argument("--idle-timeout", type=float, required=True)
    http.add_argument("--image", type=Path)
    http.add_argument("--race", action="store_true")
    http.add_argument("--keepalive-header", action="store_true")
    http.add_argument("--http2", action="store_true")
    http.add_argument("--close-rst", action="store_true")
    http.add_argument("--fast-open", action="store_true")
    _tls_options(http)
    uvi = sub.add_parser("uvicorn")
    uvi.add_argument("--listen", action="append", required=True)
    uvi.add_argument("--port", type=int, default=80)
    uvi.add_argument("--idle-timeout", type=float, required=True)
    uvi.add_argument("--image", type=Path, required=True)
    _tls_options(uvi)
    dnsp = sub.add_parser("dns")
    dnsp.add_argument("--listen", action="append", required=True)
    dnsp.add_argument("--name", required=True)
    dnsp.add_argument("--ttl", type=int, required=True)
    dnsp.add_argument("--a", action="append", default=[])
    dnsp.add_argument("--aaaa", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        if args.kind == "http":
            asyncio.run(_http(args))
        elif args.kind == "uvicorn":
            from halfclose.lab.servers.uvicorn import serve

            tls = (args.tls_cert, args.tls_key, args.tls_version) if args.tls_cert else None
            serve(args.listen, args.port, args.idle_timeout, args.image, tls)
        else:
            asyncio.run(_dns(args))
    except OSError as exc:
        print(f"cannot listen: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 2
    return 0
