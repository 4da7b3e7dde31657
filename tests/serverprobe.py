"""A client for the server tests, run inside the lab's phone namespace (``python serverprobe.py ...``).

It resolves the lab name through the lab DNS, connects (TLS with SNI and only the run's CA
trusted, keys logged for tshark), makes GET requests over HTTP/1.1 or HTTP/2 (ALPN h2, or h2c
with prior knowledge), then waits without sending anything until the server closes the idle
connection. With ``--passive S`` it reads nothing for S seconds first, so that what the server
does at its idle timer is not a reaction to the probe. It prints one JSON object: what was
negotiated, the responses' status and headers, and how the probe saw the end of the connection.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def _h1(sock: socket.socket, host: str, requests: int) -> tuple[list[dict[str, object]], bytes]:
    responses: list[dict[str, object]] = []
    buffer = b""
    for n in range(requests):
        sock.sendall(_h1_request(host, n))
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed before answering")
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed in the middle of a response")
            buffer += chunk
        body, buffer = buffer[:length], buffer[length:]
        responses.append({"status": int(lines[0].split()[1]), "version": lines[0].split()[0], "headers": headers,
                          "body_bytes": len(body)})
    return responses, buffer


def _h1_request(host: str, n: int) -> bytes:
    return f"GET /img.png?n={n} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: serverprobe\r\n\r\n".encode()


def _h2_request(conn: h2.connection.H2Connection, host: str, n: int, scheme: str) -> int:
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, [(":method", "GET"), (":scheme", scheme), (":authority", host),
                                  (":path", f"/img.png?n={n}"), ("user-agent", "serverprobe")], end_stream=True)
    return stream_id


def _h2(
    sock: socket.socket, host: str, requests: int, scheme: str
) -> tuple[list[dict[str, object]], h2.connection.H2Connection]:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    responses: list[dict[str, object]] = []
    for n in range(requests):
        stream_id = _h2_request(conn, host, n, scheme)
        sock.sendall(conn.data_to_send())
        headers: dict[str, str] = {}
        size = 0
        done = False
        while not done:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed before answering")
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    headers = {str(k): str(v) for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    size += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    done = True
            sock.sendall(conn.data_to_send())
        responses.append({"status": int(headers.get(":status", "0")), "version": "HTTP/2", "headers": headers,
                          "body_bytes": size})
    return responses, conn


def _wait_close(sock: socket.socket, timeout: float) -> tuple[str, float]:
    """Read until the server closes: how the probe saw the end ("eof", "close_notify", "reset"), and when.

    ("data, eof" and the like when bytes, such as an HTTP/2 GOAWAY, came first.)
    """
    sock.settimeout(timeout)
    seen = ""
    try:
        while True:
            if not sock.recv(65536):
                return seen + "eof", time.monotonic()
            seen = "data, "
    except ssl.SSLZeroReturnError:
        return seen + "close_notify", time.monotonic()
    except ConnectionResetError:
        return seen + "reset", time.monotonic()
    except TimeoutError:
        return "timeout", time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca")
    parser.add_argument("--keylog")
    parser.add_argument("--http2", action="store_true")
    parser.add_argument("--http1", action="store_true", help="offer HTTP/1.1 only (overrides --http2)")
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--wait", type=float, default=15)
    parser.add_argument("--passive", type=float, default=0, metavar="S",
                        help="after the responses, read nothing for S seconds (the server's close is its own)")
    parser.add_argument("--stale", action="store_true",
                        help="after --passive, write one more request into the connection, as a blind client does")
    args = parser.parse_args()
    args.http2 = args.http2 and not args.http1
    family, _, _, _, addr = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0]
    raw = socket.create_connection(addr[:2], timeout=10)
    sock: socket.socket = raw
    local_port = raw.getsockname()[1]
    version, alpn = "", ""
    if args.ca:
        context = ssl.create_default_context(cafile=args.ca)
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        context.set_alpn_protocols(["h2", "http/1.1"] if args.http2 else ["http/1.1"])
        if args.keylog:
            context.keylog_filename = args.keylog
        tls_sock = context.wrap_socket(raw, server_hostname=args.host)
        version, alpn = tls_sock.version() or "", tls_sock.selected_alpn_protocol() or ""
        sock = tls_sock
    use_h2 = args.http2 and (alpn == "h2" or not args.ca)
    scheme = "https" if args.ca else "http"
    conn = None
    if use_h2:
        responses, conn = _h2(sock, args.host, args.requests, scheme)
    else:
        responses, _ = _h1(sock, args.host, args.requests)
    last = time.monotonic()
    if args.passive:
        time.sleep(args.passive)
    stale = ""
    if args.stale:
        if conn is not None:
            _h2_request(conn, args.host, args.requests, scheme)
        try:
            sock.sendall(conn.data_to_send() if conn is not None else _h1_request(args.host, args.requests))
            stale = "written"
        except OSError as exc:
            stale = f"write failed: {type(exc).__name__}"
        # Nor react at once: what the server does with the request is then its own doing, not a race
        # with the probe's close.
        time.sleep(0.5)
    end, closed = _wait_close(sock, args.wait)
    json.dump({"family": int(family), "tls_version": version, "alpn": alpn, "responses": responses,
               "stale": stale, "end": end, "closed_after_s": closed - last, "local_port": local_port},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
