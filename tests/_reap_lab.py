"""Test support for the sock_diag and reaper tests: a namespace with addresses, and sockets in it.

Everything is created inside a namespace this module made (removed with its processes on exit);
addresses come from 198.18.0.0/15 and a random ULA /64.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pcapflush
from halfclose.netns import Claim
from halfclose.proc import run, spawn
from halfclose.sockdiag import netns_entered


@dataclass(frozen=True)
class Ns:
    name: str
    v4: str
    v6: str


def random_v4_prefix() -> str:
    third = random.randrange(0, 512)
    return f"198.{18 + third // 256}.{third % 256}"


def random_v6_prefix() -> str:
    words = [random.randrange(65536) for _ in range(3)]
    return f"fd{random.randrange(256):02x}:{words[0]:04x}:{words[1]:04x}:{words[2]:04x}"


@contextlib.contextmanager
def lo_netns(role: str = "reap") -> Iterator[Ns]:
    """A fresh namespace with loopback up, one IPv4 and one IPv6 address on it."""
    with Claim() as claim:
        name = claim.add_netns(role)
        v4 = random_v4_prefix() + ".1"
        v6 = str(ipaddress.ip_address(random_v6_prefix() + "::1"))
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        run(["ip", "-n", name, "addr", "add", f"{v4}/24", "dev", "lo"])
        run(["ip", "-n", name, "addr", "add", f"{v6}/64", "dev", "lo", "nodad"])
        yield Ns(name=name, v4=v4, v6=v6)


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def listener(ns: Ns, addr: str, port: int) -> socket.socket:
    with netns_entered(ns.name):
        s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(512)
    return s


def socket_as(ns: Ns, family: int, uid: int) -> socket.socket:
    """A TCP socket in *ns* owned by *uid* (created with that effective uid)."""
    with netns_entered(ns.name):
        if uid == 0:
            return socket.socket(family, socket.SOCK_STREAM)
        os.setegid(uid)
        os.seteuid(uid)
        try:
            return socket.socket(family, socket.SOCK_STREAM)
        finally:
            os.seteuid(0)
            os.setegid(0)


def connect_pair(ns: Ns, lst: socket.socket, uid: int) -> tuple[socket.socket, socket.socket]:
    """A client socket of *uid* connected to *lst*, and the accepted server side."""
    addr, port = lst.getsockname()[:2]
    c = socket_as(ns, lst.family, uid)
    c.connect((addr, port))
    a, _ = lst.accept()
    return c, a


def linger_close(s: socket.socket) -> None:
    """Close with RST so that the kernel frees the socket at once (no FIN states)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


TCP_CLOSE = 7  # tcpi_state of a socket the reaper destroyed (SOCK_DESTROY: tcp_abort)


def wait_destroyed(socks: list[socket.socket], *, limit: float = 20.0) -> None:
    """Wait until every socket of *socks* is destroyed (TCP_INFO says TCP_CLOSE), however late the
    reaper runs; AssertionError with the count after *limit* seconds. Reads nothing, sends nothing."""
    deadline = time.monotonic() + limit
    while True:
        left = [s for s in socks if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != TCP_CLOSE]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(left)} of {len(socks)} sockets not destroyed within {limit:g} s")
        time.sleep(0.02)


@contextlib.contextmanager
def veth_pair(claim: Claim, client_role: str, server_role: str) -> Iterator[tuple[str, str, str]]:
    """Two namespaces of *claim* joined by a veth pair (``vc`` on the client side, ``vs`` on the
    server side), addresses ``.2`` and ``.1`` of a random 198.18.0.0/15 /24: (client namespace,
    server namespace, server address)."""
    cli, srv = claim.add_netns(client_role), claim.add_netns(server_role)
    run(["ip", "-n", cli, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", srv])
    prefix = random_v4_prefix()
    for ns, dev, ip in ((cli, "vc", f"{prefix}.2"), (srv, "vs", f"{prefix}.1")):
        run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    yield cli, srv, f"{prefix}.1"


@contextlib.contextmanager
def capture(ns: str, path: Path, *bpf: str, peer: str) -> Iterator[None]:
    """tcpdump on ``vc`` in *ns* into *path* (filter words *bpf*) while the block runs; every packet
    up to the block's end is in the file (:mod:`pcapflush`, its marker goes to *peer* over ``vc``)."""
    port = pcapflush.marker_port()
    argv = ["tcpdump", "-i", "vc", "-n", "-U", "--immediate-mode", *pcapflush.BUFFER, "-w", str(path),
            pcapflush.with_marker(" ".join(bpf), host=peer, port=port)]
    proc = spawn(argv, netns=ns)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert b"listening on" in line, line

    def udp_in_ns() -> socket.socket:
        with netns_entered(ns):
            return socket.socket(family_of(peer), socket.SOCK_DGRAM)

    try:
        yield
    finally:
        try:
            pcapflush.stop(proc, path, pcapflush.udp_sender(peer, port, make=udp_in_ns), sig=signal.SIGTERM,
                           grace=0.3)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
