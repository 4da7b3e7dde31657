"""The lab's servers: a built-in HTTP/1.1 server and DNS server, and configs for nginx and dnsmasq.

The built-in HTTP server closes a keep-alive connection the way nginx does when its idle timer
fires: an orderly close (FIN), no RST. In *race* mode it does not close on a timer; instead a
request arriving on a connection idle for longer than the timeout is read and the connection is
closed unanswered, which is what a client sees when the server's idle timer fires while its
request is in flight.

Run as ``python -m halfclose.lab.servers http|dns ...`` inside the server namespace; each prints
``ready`` on stderr once it listens, and an error line (and exits 2) when it cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

__all__ = [
    "DnsAnswers",
    "HttpServerOptions",
    "dnsmasq_argv",
    "lab_image",
    "main",
    "nginx_config",
]


def lab_image(width: int = 96, height: int = 72, seed: int = 7) -> bytes:
    """A real PNG of noise, about 20 KB (noise does not compress), the same bytes every time."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpServerOptions:
    idle_timeout_s: float
    race: bool = False
    keepalive_header: bool = False


class _HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection: parse requests, answer with the image, close when idle."""

    def __init__(self, options: HttpServerOptions, body: bytes) -> None:
        self._options = options
        self._body = body
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._idle_since = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._arm()

    def _arm(self) -> None:
        self._idle_since = time.monotonic()
        if self._options.race:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._options.idle_timeout_s, self._close_idle)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_idle(self) -> None:
        # An orderly close: the kernel sends FIN (nothing unread is left in the receive queue).
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._disarm()
        self._buffer += data
        while self._transport is not None:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = self._buffer[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            total = head_end + 4 + length
            if len(self._buffer) < total:
                break
            self._buffer = self._buffer[total:]
            idle = time.monotonic() - self._idle_since
            if self._options.race and idle > self._options.idle_timeout_s:
                self._transport.close()
                return
            self._respond(close=headers.get("connection", "").lower() == "close")
        if self._transport is not None:
            self._arm()

    def _respond(self, *, close: bool) -> None:
        assert self._transport is not None
        timeout = self._options.idle_timeout_s
        head = [
            "HTTP/1.1 200 OK",
            "Server: halfclose-lab",
            "Content-Type: image/png",
            f"Content-Length: {len(self._body)}",
            "Connection: close" if close else "Connection: keep-alive",
        ]
        if self._options.keepalive_header and not close:
            head.append(f"Keep-Alive: timeout={max(1, int(timeout))}")
        self._transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self._body)
        if close:
            self._transport.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsAnswers:
    """What the lab DNS server answers: *name* -> these addresses, with this TTL."""

    name: str
    ttl: int
    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()

    def respond(self, wire: bytes) -> bytes | None:
        """The response to one query in wire format (None for a message that is not a query)."""
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.rrset

        try:
            query = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many types for malformed input
            return None
        if query.flags & dns.flags.QR or not query.question:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        qname = question.name.to_text(omit_final_dot=True).lower()
        if qname != self.name.lower():
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        addresses = {dns.rdatatype.A: self.a, dns.rdatatype.AAAA: self.aaaa}.get(question.rdtype, ())
        if addresses:
            response.answer.append(
                dns.rrset.from_text_list(question.name, self.ttl, dns.rdataclass.IN, question.rdtype, list(addresses))
            )
        return response.to_wire()


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, answers: DnsAnswers) -> None:
        self._answers = answers
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = self._answers.respond(data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


def nginx_config(
    *, root: Path, run_dir: Path, listen: Sequence[str], port: int, idle_timeout_s: float, fast_open: bool = False
) -> str:
    """An nginx configuration for the lab: the image at every path, the given keep-alive timeout."""
    tfo = " fastopen=16" if fast_open else ""
    listens = "\n".join(
        f"        listen [{addr}]:{port}{tfo};" if ":" in addr else f"        listen {addr}:{port}{tfo};"
        for addr in listen
    )
    ms = max(1, round(idle_timeout_s * 1000))
    return f"""\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {run_dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {run_dir}/client_body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    keepalive_timeout {ms}ms;
    keepalive_requests 10000;
    default_type image/png;
    server {{
{listens}
        root {root};
        location / {{ try_files /img.png =404; }}
    }}
}}
"""


def dnsmasq_argv(*, listen: Sequence[str], answers: DnsAnswers, pid_file: Path) -> list[str]:
    """dnsmasq's command line for the lab: authoritative for one name, nothing else, in the foreground."""
    record = ",".join([answers.name, *answers.a, *answers.aaaa])
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--user=root",
        "--group=root",
        f"--pid-file={pid_file}",
        "--log-facility=-",
        f"--local-ttl={answers.ttl}",
        f"--host-record={record}",
        "--port=53",
    ]
    argv += [f"--listen-address={addr}" for addr in listen]
    # Other names: refused by --no-resolv with no servers; answer them NXDOMAIN locally instead.
    argv.append("--local=/#/")
    return argv


async def _serve_http(
    listen: Sequence[str], port: int, options: HttpServerOptions, body: bytes, *, fast_open: bool = False
) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: _HttpConnection(options, body), host=addr, port=port, reuse_address=True)
        for addr in listen
    ]
    if fast_open:  # TCP Fast Open: accept data in the SYN (a queue of 16 pending ones)
        for sock in (s for server in servers for s in server.sockets):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    print("ready", file=sys.stderr, flush=True)
    await _until_signalled()
    for server in servers:
        server.close()


async def _serve_dns(listen: Sequence[str], answers: DnsAnswers) -> None:

    loop = asyncio.get_running_loop()
    transports = []
    for addr in listen:
        transport, _ = await loop.create_datagram_endpoint(lambda: _DnsProtocol(answers), local_addr=(addr, 53))
        transports.append(transport)
    print("ready", file=sys.stderr, flush=True)
    await _until_signalled()
    for transport in transports:
        transport.close()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m halfclose.lab.servers``."""
    parser = argparse.ArgumentParser(prog="python -m halfclose.lab.servers")
    sub = parser.add_subparsers(dest="kind", required=True)
    http = sub.add_parser("http")
    http.add_argument("--listen", action="append", required=True)
    http.add_argument("--port", type=int, default=80)
    http.add_argument("--idle-timeout", type=float, required=True)
    http.add_argument("--race", action="store_true")
    http.add_argument("--keepalive-header", action="store_true")
    http.add_argument("--fast-open", action="store_true")
    dnsp = sub.add_parser("dns")
    dnsp.add_argument("--listen", action="append", required=True)
    dnsp.add_argument("--name", required=True)
    dnsp.add_argument("--ttl", type=int, required=True)
    dnsp.add_argument("--a", action="append", default=[])
    dnsp.add_argument("--aaaa", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        if args.kind == "http":
            options = HttpServerOptions(
                idle_timeout_s=args.idle_timeout, race=args.race, keepalive_header=args.keepalive_header
            )
            asyncio.run(_serve_http(args.listen, args.port, options, lab_image(), fast_open=args.fast_open))
        else:
            answers = DnsAnswers(name=args.name, ttl=args.ttl, a=tuple(args.a), aaaa=tuple(args.aaaa))
            asyncio.run(_serve_dns(args.listen, answers))
    except OSError as exc:
        print(f"cannot listen: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 2
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
