"""Real servers for the client guard's tests: an HTTP/1.1 keep-alive server, a DNS server, a capture.

* :class:`KeepAliveServer`: asyncio HTTP/1.1 on a loopback address. Its idle timer closes a
  connection with FIN (nothing unread, so no RST). It can announce ``Keep-Alive: timeout=N``. In
  race mode the timer does not fire by itself: a request that arrives on a connection idle longer
  than the timeout is read in full and the connection is then closed without an answer, as if the
  timer had fired while the request was in flight.
* :class:`DnsServer`: a tiny authoritative UDP server (dnspython) for one zone, counting queries.
* :class:`Capture`: tcpdump on ``lo`` for one address, read back with tshark (the wire oracle).

Every server binds a random address in 127.0.0.0/8 so that tests running side by side never meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import select
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

import pcapflush
from halfclose.proc import require_program, run, spawn


def wait_until(check: Callable[[], bool], *, limit: float = 5.0) -> None:
    """Poll *check* until it holds (AssertionError after *limit* seconds)."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


async def async_wait_until(check: Callable[[], bool], *, limit: float = 5.0) -> None:
    """:func:`wait_until` for a coroutine: poll *check* without blocking the event loop."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def random_loopback() -> str:
    """A random address in 127.0.0.0/8 (not 127.0.0.1), free of other tests' servers."""
    rng = random.SystemRandom()
    return f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


@dataclass(kw_only=True)
class ConnRecord:
    """What happened on one server-side connection."""

    cid: int
    requests: int = 0
    methods: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    #: "timer" (server FIN on idle), "race" (request read, closed unanswered), "client" (EOF first)
    end: str | None = None
    #: The server's close is on the wire: its FIN (over TLS: its close_notify); *end* is set a
    #: moment before.
    closed: bool = False


class KeepAliveServer:
    """A keep-alive HTTP/1.1 server with an idle timeout (see the module docstring)."""

    def __init__(
        self,
        *,
        idle_timeout: float,
        keep_alive_header: float | None = None,
        race: bool = False,
        host: str | None = None,
        tls: ssl.SSLContext | None = None,
        fast_open: bool = False,
    ) -> None:
        self.tls = tls
        self.fast_open = fast_open
        self.idle_timeout = idle_timeout
        self.keep_alive_header = keep_alive_header
        self.race = race
        self.host = host or random_loopback()
        self.port = 0
        self.conns: list[ConnRecord] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> KeepAliveServer:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        if self.fast_open:  # listen with TCP Fast Open (the namespace needs net.ipv4.tcp_fastopen & 2)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
            sock.bind((self.host, 0))
            sock.listen(64)
            self._server = await asyncio.start_server(self._handle, sock=sock, ssl=self.tls)
        else:
            self._server = await asyncio.start_server(self._handle, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str = "/", *, host: str | None = None) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def served(self) -> list[tuple[str, str, bytes]]:
        """(method, Host header, body) of every request answered, in order of connections."""
        with self._lock:
            return [x for c in self.conns for x in zip(c.methods, c.hosts, c.bodies, strict=True)]

    def ends(self) -> Counter[str]:
        """How connections ended so far, by kind."""
        with self._lock:
            return Counter(c.end for c in self.conns if c.end is not None)

    def closed_ends(self) -> Counter[str]:
        """How connections ended, by kind, counting only those whose socket the server has closed.

        :meth:`ends` counts a connection as soon as the server decides to close it, a moment before
        its FIN goes out: a test that acts on the server's close (the client must find the FIN) waits
        for this one. Over TLS that is the close_notify: the FIN waits for the client's answer (or
        asyncio's 30 s shutdown timeout).
        """
        with self._lock:
            return Counter(c.end for c in self.conns if c.end is not None and c.closed)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        rec = ConnRecord(cid=next(self._ids))
        with self._lock:
            self.conns.append(rec)
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            while True:
                try:
                    if self.race:
                        head = await reader.readuntil(b"\r\n\r\n")
                    else:
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
                except TimeoutError:
                    rec.end = "timer"
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    rec.end = "client"
                    break
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ", 1)[0]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                payload = await reader.readexactly(length) if length else b""
                if self.race and rec.requests > 0 and loop.time() - last > self.idle_timeout:
                    rec.end = "race"
                    break
                rec.requests += 1
                rec.methods.append(method)
                rec.hosts.append(headers.get("host", ""))
                rec.bodies.append(payload)
                body = json.dumps({"conn": rec.cid, "n": rec.requests, "method": method}).encode()
                extra = ""
                if self.keep_alive_header is not None:
                    extra = f"Keep-Alive: timeout={self.keep_alive_header:g}\r\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n{extra}\r\n".encode()
                    + body
                )
                await writer.drain()
                last = loop.time()
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()  # over TLS this writes the close_notify at once
            try:
                if self.tls is None:
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()  # the socket is closed: the FIN is out
            finally:
                with self._lock:
                    rec.closed = True
            try:
                if self.tls is not None:  # the socket closes once the client answers (or in 30 s)
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            finally:
                self._tasks.discard(task)


def make_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for *name* (subjectAltName), made with openssl: (cert, key)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)], timeout=60)
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


class DnsServer:
    """An authoritative UDP DNS server for names under *zone*: A records, NODATA for the rest."""

    def __init__(
        self,
        *,
        records: dict[str, str],
        ttl: int,
        zone: str = "lab.test",
        host: str | None = None,
        port: int = 0,
    ) -> None:
        self.records = {dns.name.from_text(k): v for k, v in records.items()}
        self.ttl = ttl
        self.zone = dns.name.from_text(zone)
        self.host = host or random_loopback()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.host, port))
        self.port = self.sock.getsockname()[1]
        self.queries: Counter[tuple[str, str]] = Counter()
        #: When true the server answers SERVFAIL (an outage of the authority).
        self.failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def total(self) -> int:
        with self._lock:
            return sum(self.queries.values())

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            wire, peer = self.sock.recvfrom(4096)
            query = dns.message.from_wire(wire)
            q = query.question[0]
            with self._lock:
                self.queries[(q.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(q.rdtype))] += 1
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            if self.failing:
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif q.name in self.records and q.rdtype == dns.rdatatype.A:
                reply.answer.append(
                    dns.rrset.from_text(q.name, self.ttl, "IN", "A", self.records[q.name])
                )
            else:
                if q.name not in self.records:
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                reply.authority.append(
                    dns.rrset.from_text(
                        self.zone, self.ttl, "IN", "SOA",
                        f"ns.{self.zone} host.{self.zone} 1 3600 600 86400 {self.ttl}",
                    )
                )
            self.sock.sendto(reply.to_wire(), peer)


@dataclass(frozen=True, kw_only=True)
class Segment:
    stream: int
    time: float
    from_client: bool
    fin: bool
    rst: bool
    payload: int


class Capture:
    """tcpdump on ``lo`` for traffic to and from one server address and port."""

    def __init__(self, path: Path, *, host: str, port: int) -> None:
        self.path = path
        self.host = host
        self.port = port
        self._marker = pcapflush.marker_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Capture:
        require_program("tshark")
        bpf = pcapflush.with_marker(f"host {self.host} and tcp port {self.port}", host=self.host, port=self._marker)
        self._proc = spawn(["tcpdump", "-i", "lo", "-U", "--immediate-mode", *pcapflush.BUFFER, "-n", "-w",
                            str(self.path), bpf])
        assert self._proc.stderr is not None
        deadline = time.monotonic() + 10
        seen = b""
        while time.monotonic() < deadline and b"listening on" not in seen:
            ready, _, _ = select.select([self._proc.stderr], [], [], 0.1)
            if ready:
                chunk = self._proc.stderr.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    break
                seen += chunk
        if b"listening on" not in seen:
            self.stop()
            raise RuntimeError(f"tcpdump did not start: {seen.decode(errors='replace')}")
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:  # still capturing: up to now, nothing lost
            pcapflush.stop(self._proc, self.path, pcapflush.udp_sender(self.host, self._marker))
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def segments(self) -> list[Segment]:
        out = run(
            ["tshark", "-r", str(self.path), "-Y", f"tcp.port=={self.port}", "-T", "fields", "-E", "separator=,",
             "-e", "tcp.stream", "-e", "frame.time_relative", "-e", "tcp.srcport",
             "-e", "tcp.flags.fin", "-e", "tcp.flags.reset", "-e", "tcp.len"],
            timeout=60,
        ).stdout
        segs = []
        for line in out.splitlines():
            stream, t, sport, fin, rst, length = line.split(",")
            segs.append(Segment(
                stream=int(stream), time=float(t), from_client=int(sport) != self.port,
                fin=fin in ("1", "True"), rst=rst in ("1", "True"), payload=int(length or 0),
            ))
        return segs

    def payload_after_server_fin(self) -> int:
        """Client segments carrying payload sent after the server's FIN on the same connection."""
        first_fin: dict[int, float] = {}
        for s in self.segments():
            if s.fin and not s.from_client:
                first_fin.setdefault(s.stream, s.time)
        return sum(
            1 for s in self.segments()
            if s.from_client and s.payload > 0 and s.stream in first_fin and s.time > first_fin[s.stream]
        )

    def close_wait_times(self) -> list[float]:
        """Per connection the server closed first: seconds from its FIN to the client's FIN or RST."""
        server_fin: dict[int, float] = {}
        client_end: dict[int, float] = {}
        for s in self.segments():
            if s.fin and not s.from_client:
                server_fin.setdefault(s.stream, s.time)
            elif s.from_client and (s.fin or s.rst):
                client_end.setdefault(s.stream, s.time)
        return [client_end[k] - t for k, t in server_fin.items()
                if k in client_end and client_end[k] >= t]

    def server_closed_first(self) -> int:
        """Connections on which the server sent its FIN before the client sent one."""
        first: dict[int, bool] = {}
        for s in self.segments():
            if s.fin:
                first.setdefault(s.stream, not s.from_client)
        return sum(1 for v in first.values() if v)


@dataclass(frozen=True, kw_only=True)
class LabCa:
    """A test certificate authority and what it signed: a server certificate and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_ca(folder: Path, *names: str) -> LabCa:
    """A CA, a server certificate for *names* and a client certificate, made with openssl."""

    def openssl(*args: str) -> None:
        run(["openssl", *args], timeout=60)

    ca_key, ca = folder / "ca.key", folder / "ca.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=halfclose test CA",
            "-keyout", str(ca_key), "-out", str(ca))
    out = {}
    san = ",".join(f"DNS:{n}" for n in names)
    for role, subject, ext in (("server", names[0], f"subjectAltName={san}"),
                               ("client", "client", "extendedKeyUsage=clientAuth")):
        key, csr, cert, extfile = (folder / f"{role}.{x}" for x in ("key", "csr", "crt", "ext"))
        extfile.write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={subject}",
                "-keyout", str(key), "-out", str(csr))
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                "-days", "2", "-extfile", str(extfile), "-out", str(cert))
        out[role] = (cert, key)
    return LabCa(ca=ca, server_cert=out["server"][0], server_key=out["server"][1],
                  client_cert=out["client"][0], client_key=out["client"][1])


class Nginx:
    """nginx on a loopback address with TLS and HTTP/2 (and, if asked, client certificates)."""

    def __init__(self, folder: Path, ca: LabCa, *, keepalive_timeout: float = 60.0,
                 verify_client: bool = False) -> None:
        self.folder = folder
        self.host = random_loopback()
        probe = socket.create_server((self.host, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        verify = (f"ssl_verify_client on; ssl_client_certificate {ca.ca};" if verify_client else "")
        (folder / "logs").mkdir(exist_ok=True)
        self.conf = folder / "nginx.conf"
        self.conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    keepalive_timeout {round(keepalive_timeout * 1000)}ms;
    server {{
        listen {self.host}:{self.port} ssl http2;
        ssl_certificate {ca.server_cert};
        ssl_certificate_key {ca.server_key};
        {verify}
        location / {{ return 200 "ok $server_protocol $ssl_client_verify\\n"; }}
    }}
}}
""")
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "/", *, host: str) -> str:
        return f"https://{host}:{self.port}{path}"

    def __enter__(self) -> Nginx:
        self._proc = spawn(["nginx", "-p", str(self.folder), "-c", str(self.conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        err = b""
        if self._proc.poll() is not None and self._proc.stderr is not None:
            err = self._proc.stderr.read()
        self.__exit__()
        raise RuntimeError(f"nginx did not start: {err.decode(errors='replace')}")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None
