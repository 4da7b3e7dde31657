"""A client for the server tests, run inside the lab's phone namespace (``python serverprobe.py ...``).

It resolves the lab name through the lab DNS, connects (TLS with SNI and only the run's CA
trusted, keys logged for tshark), makes GET requests over HTTP/1.1 or HTTP/2 (ALPN h2, or h2c
with prior knowledge), then waits without sending anything until the server closes the idle
connection. It prints one JSON object: what was negotiated, the responses' status and headers,
and how long the server took to close after the last response byte (the probe's clock).
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
        sock.sendall(f"GET /img.png?n={n} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: serverprobe\r\n\r\n".encode())
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


def _h2(sock: socket.socket, host: str, requests: int, scheme: str) -> tuple[list[dict[str, object]], list[str]]:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    responses: list[dict[str, object]] = []
    for n in range(requests):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "GET"), (":scheme", scheme), (":authority", host),
                                      (":path", f"/img.png?n={n}"), ("user-agent", "serverprobe")], end_stream=True)
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
    return responses, []


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
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--wait", type=float, default=15)
    args = parser.parse_args()
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
    if use_h2:
        responses, _ = _h2(sock, args.host, args.requests, "https" if args.ca else "http")
    else:
        responses, _ = _h1(sock, args.host, args.requests)
    last = time.monotonic()
    end, closed = _wait_close(sock, args.wait)
    json.dump({"family": int(family), "tls_version": version, "alpn": alpn, "responses": responses,
               "end": end, "closed_after_s": closed - last, "local_port": local_port},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
