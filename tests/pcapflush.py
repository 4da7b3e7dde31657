"""Stopping a tcpdump capture without losing its last packets.

tcpdump (even with ``-U --immediate-mode``) writes a packet only when it gets to run: on a loaded
machine the last packets of a test may still sit in the kernel's ring when it is told to stop, and
a stop drops them. So the capture's filter also takes a marker: a UDP datagram with a random token
to a port of its own. :func:`stop` sends it after everything the test did (so everything before it
is already in the ring), waits until tcpdump has written it, stops tcpdump, and takes the markers
out of the file again: it holds what the caller's filter took, none of it lost.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

#: tcpdump's ring buffer for the tests' captures (``-B``, KiB). With ``--immediate-mode`` and the
#: default 2 MiB a burst of a few dozen packets that comes while tcpdump waits for a CPU is dropped
#: by the kernel (16 of 100 datagrams were kept while it was stopped); 32 MiB keeps them all.
BUFFER = ("-B", "32768")

_TOKEN = b"halfclose-capture-marker-"
#: pcap magic numbers (microsecond and nanosecond timestamps), both byte orders.
_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}


def marker_port() -> int:
    """A port for a capture's marker (random, high: no test's traffic uses it)."""
    return random.randrange(40000, 60000)


def with_marker(bpf: str, *, host: str, port: int) -> str:
    """The capture filter *bpf* (empty: everything) that also takes the marker to *host*:*port*."""
    marker = f"(udp and dst host {host} and dst port {port})"
    return f"({bpf}) or {marker}" if bpf.strip() else ""


def _records(data: bytes) -> tuple[bytes, list[bytes]]:
    """A pcap file's global header and its whole records (a record still being written left out)."""
    order = _MAGIC.get(data[:4])
    if len(data) < 24 or order is None:
        raise AssertionError("not a pcap file (tcpdump -w writes pcap)")
    records, offset = [], 24
    while offset + 16 <= len(data):
        (length,) = struct.unpack_from(f"{order}I", data, offset + 8)
        end = offset + 16 + length
        if end > len(data):
            break
        records.append(data[offset:end])
        offset = end
    return data[:24], records


def _written(path: Path, token: bytes) -> bool:
    data = path.read_bytes() if path.exists() else b""
    return token in data and any(token in r for r in _records(data)[1])


def stop(
    proc: subprocess.Popen[bytes],
    path: Path,
    send: Callable[[bytes], None],
    *,
    sig: int = signal.SIGINT,
    grace: float = 0.2,
    limit: float = 20.0,
) -> None:
    """Stop tcpdump (*proc*, writing *path*) with *sig* once it has written everything sent so far.

    After *grace* seconds (for packets the test's last actions still cause, as before), markers go
    out with *send* until tcpdump has written one; then it is stopped, and the markers are taken out
    of *path*. AssertionError if no marker is written within *limit* seconds.
    """
    time.sleep(grace)
    token = _TOKEN + os.urandom(8).hex().encode()
    deadline = time.monotonic() + limit
    while not _written(path, token):
        if proc.poll() is not None:
            raise AssertionError(f"tcpdump writing {path} ended before it was stopped")
        if time.monotonic() > deadline:
            raise AssertionError(f"tcpdump did not write its marker to {path} within {limit:g} s")
        send(token)
        for _ in range(20):  # a new marker every 0.2 s, should one be dropped
            time.sleep(0.01)
            if _written(path, token):
                break
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    header, records = _records(path.read_bytes())
    kept = path.with_name(path.name + ".part")
    kept.write_bytes(header + b"".join(r for r in records if _TOKEN not in r))
    kept.replace(path)


def udp_sender(host: str, port: int, *, make: Callable[[], socket.socket] | None = None) -> Callable[[bytes], None]:
    """A *send* for :func:`stop`: one UDP datagram to *host*:*port* (from a socket *make* returns,
    e.g. one made inside a network namespace; by default an IPv4 or IPv6 one here)."""

    def send(token: bytes) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with make() if make is not None else socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(token, (host, port))

    return send
