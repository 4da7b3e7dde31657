"""The built-in HTTP server: HTTP/1.1 and HTTP/2, over TCP or TLS, closing idle connections on a timer.

It closes a keep-alive connection the way nginx does when its idle timer fires: over HTTP/2 a
GOAWAY first, over TLS a close_notify alert next, then an orderly close (FIN), no RST, all at
once. In *race* mode it does not close on a timer; instead a request arriving on a connection
idle for longer than the timeout is read and the connection is closed unanswered, which is what
a client sees when the server's idle timer fires while its request is in flight.

TLS runs over memory buffers (:class:`ssl.SSLObject`), not asyncio's TLS transport, so that the
close is nginx's: asyncio's transport would send close_notify and then wait up to 30 s for the
client's before its FIN. HTTP/2 (the ``h2`` library) is negotiated with ALPN over TLS, or
recognised by its preface over plain TCP (h2c with prior knowledge); HTTP/1.1 stays available.

As in nginx, the idle timer runs only once a connection's TLS handshake is done: a handshake has
its own limit (nginx's ``ssl_handshake_timeout``, 60 s), so a client that is slow to verify the
certificate (a browser's first verification on a loaded machine can take seconds) is not closed
on the idle timer before it could send its first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from halfclose.lab.servers.image import IMAGE_HEADERS
from halfclose.lab.servers.plan import Process, Site

if TYPE_CHECKING:
    import h2.connection

__all__ = ["TLS_VERSIONS", "HttpServerOptions", "TlsFiles", "processes", "serve_http", "tls_context"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: How long a TLS handshake may take before the connection is closed (nginx's ssl_handshake_timeout).
HANDSHAKE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    cert: Path
    key: Path
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpServerOptions:
    idle_timeout_s: float
    race: bool = False
    keepalive_header: bool = False
    http2: bool = False
    #: Close an idle connection with RST (SO_LINGER 0) instead of FIN, after its GOAWAY and close_notify.
    close_rst: bool = False


#: The lab's TLS versions ("1.2", "1.3") as the ssl module names them.
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def tls_context(files: TlsFiles, *, alpn: Sequence[str]) -> ssl.SSLContext:
    """A server context accepting only *files.version* ("1.2" or "1.3"), offering *alpn*."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = TLS_VERSIONS[files.version]
    context.load_cert_chain(files.cert, files.key)
    context.set_alpn_protocols(list(alpn))
    return context


class _Connection(asyncio.Protocol):
    """One connection: TLS (optional), then HTTP/1.1 or HTTP/2, answered with the image."""

    def __init__(self, options: HttpServerOptions, body: bytes, context: ssl.SSLContext | None) -> None:
        self._options = options
        self._body = body
        self._transport: asyncio.Transport | None = None
        self._idle_since = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        if context is not None:
            self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshaking = self._tls is not None
        #: "" until known, then "h1" or "h2".
        self._protocol = ""
        self._buffer = b""
        self._h2: h2.connection.H2Connection | None = None
        self._pending: dict[int, memoryview] = {}
        self._closed = False

    # --- transport events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._tls is None and not self._options.http2:
            self._protocol = "h1"
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._disarm()
        plain = self._decrypt(data) if self._tls is not None else data
        if plain and not self._closed:
            self._received(plain)
        self._flush()
        if self._transport is not None and not self._pending:
            self._arm()

    def eof_received(self) -> bool:
        # The client closed its side: close ours (FIN) at once.
        self._disarm()
        return False

    # --- idle timer ---------------------------------------------------------------------

    def _arm(self) -> None:
        self._idle_since = time.monotonic()
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._handshaking:
            self._timer = loop.call_later(HANDSHAKE_TIMEOUT_S, self._close)
        elif not self._options.race:
            self._timer = loop.call_later(self._options.idle_timeout_s, self._close)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        """Close as nginx does at its timer: GOAWAY (HTTP/2), close_notify (TLS), then FIN."""
        if self._transport is None or self._closed:
            return
        self._closed = True
        if self._h2 is not None:
            self._h2.close_connection()
            self._send(self._h2.data_to_send())
        if self._tls is not None and not self._handshaking:
            # unwrap() writes close_notify, then wants the client's, which is not awaited (nginx's way);
            # a connection whose TLS state is already broken gets its FIN without one.
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
                self._tls.unwrap()
        self._flush()
        if self._options.close_rst:
            # SO_LINGER {on, 0}: close() discards nothing already written to the kernel, but ends the
            # connection with RST instead of FIN (asyncio closes the socket once its buffer is flushed).
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.close()

    # --- TLS ----------------------------------------------------------------------------

    def _decrypt(self, data: bytes) -> bytes:
        assert self._tls is not None
        self._incoming.write(data)
        if self._handshaking:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            except (ssl.SSLError, OSError):
                self._flush()
                self._abort()
                return b""
            self._handshaking = False
            self._protocol = "h2" if self._tls.selected_alpn_protocol() == "h2" else "h1"
        chunks = []
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the client's close_notify
                self._close()
                break
            except (ssl.SSLError, OSError):
                self._abort()
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _send(self, data: bytes) -> None:
        if not data or self._transport is None:
            return
        if self._tls is not None:
            self._tls.write(data)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending and self._transport is not None:
            self._transport.write(pending)

    def _abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    # --- HTTP -----------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if not self._protocol:
            self._buffer += data
            if len(self._buffer) < len(H2_PREFACE) and H2_PREFACE.startswith(self._buffer):
                return
            self._protocol = "h2" if self._buffer.startswith(H2_PREFACE) else "h1"
            data, self._buffer = self._buffer, b""
        if self._protocol == "h2":
            self._h2_received(data)
        else:
            self._h1_received(data)

    def _h1_received(self, data: bytes) -> None:
        self._buffer += data
        while not self._closed:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = self._buffer[:head_end].decode("latin-1")
            headers = {}
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            total = head_end + 4 + length
            if len(self._buffer) < total:
                break
            self._buffer = self._buffer[total:]
            idle = time.monotonic() - self._idle_since
            if self._options.race and idle > self._options.idle_timeout_s:
                self._close()
                return
            close = headers.get("connection", "").lower() == "close"
            self._h1_respond(close=close)
            if close:
                self._close()
                return

    def _h1_respond(self, *, close: bool) -> None:
        head = ["HTTP/1.1 200 OK", "Server: halfclose-lab"]
        head += [f"{name}: {value}" for name, value in IMAGE_HEADERS]
        head += [f"Content-Length: {len(self._body)}", "Connection: close" if close else "Connection: keep-alive"]
        if self._options.keepalive_header and not close:
            head.append(f"Keep-Alive: timeout={max(1, int(self._options.idle_timeout_s))}")
        self._send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self._body)

    def _h2_received(self, data: bytes) -> None:
        import h2.config
        import h2.connection
        import h2.events
        import h2.exceptions

        if self._h2 is None:
            self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            self._h2.initiate_connection()
        conn = self._h2
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._send(conn.data_to_send())
            self._close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                headers = [(":status", "200"), ("server", "halfclose-lab")]
                headers += [(name.lower(), value) for name, value in IMAGE_HEADERS]
                headers.append(("content-length", str(len(self._body))))
                conn.send_headers(event.stream_id, headers)
                self._pending[event.stream_id] = memoryview(self._body)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset) and event.stream_id is not None:
                self._pending.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._send(conn.data_to_send())
                self._close()
                return
        self._h2_pump()

    def _h2_pump(self) -> None:
        """Send what flow control allows of each pending response body."""
        assert self._h2 is not None
        conn = self._h2
        for stream_id, body in list(self._pending.items()):
            rest = body
            while rest:
                size = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(rest))
                if size <= 0:
                    break
                conn.send_data(stream_id, rest[:size].tobytes())
                rest = rest[size:]
            if rest:
                self._pending[stream_id] = rest
            else:
                conn.end_stream(stream_id)
                del self._pending[stream_id]
        self._send(conn.data_to_send())


async def serve_http(
    listen: Sequence[str], port: int, options: HttpServerOptions, body: bytes, tls: TlsFiles | None,
    *, fast_open: bool = False,
) -> list[asyncio.Server]:
    """Listen on each address of *listen* at *port*; return the servers (close them to stop).

    With *fast_open* the listening sockets accept data in the SYN (TCP Fast Open, a queue of 16
    pending ones); the namespace's ``net.ipv4.tcp_fastopen`` must allow it for servers.
    """
    context = None
    if tls is not None:
        context = tls_context(tls, alpn=["h2", "http/1.1"] if options.http2 else ["http/1.1"])
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: _Connection(options, body, context), host=addr, port=port,
                                 reuse_address=True)
        for addr in listen
    ]
    if fast_open:
        for sock in (s for server in servers for s in server.sockets):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    return servers


def processes(site: Site, *, what: str = "the built-in HTTP server") -> list[Process]:
    """The built-in server's command line (``python -m halfclose.lab.servers http ...``)."""
    argv = [site.python, "-m", "halfclose.lab.servers", "http", "--port", str(site.port),
            "--idle-timeout", str(site.idle_timeout_s), "--image", str(site.image)]
    argv += [a for addr in site.listen for a in ("--listen", addr)]
    argv += ["--race"] if site.race else []
    argv += ["--keepalive-header"] if site.keepalive_header else []
    argv += ["--close-rst"] if site.close_rst else []
    argv += ["--http2"] if site.http2 else []
    argv += ["--fast-open"] if site.fast_open else []
    if site.tls is not None:
        argv += ["--tls-cert", str(site.tls.cert), "--tls-key", str(site.tls.key), "--tls-version", site.tls.version]
    return [Process(what=what, argv=tuple(argv), port=site.port, ready="ready")]
