"""A real capture of TCP inside L2TPv2 (an encapsulation halfclose does not decode).

Two namespaces joined by a veth pair; in each, a TUN device whose IP packets a small forwarder
sends to the other side as L2TPv2 data messages over UDP port 1701 (PPP inside, as an LAC and an
LNS exchange them). Real TCP connections of the kernel run over the TUN devices; tcpdump on the
veth sees only the tunnel.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from halfclose.netns import Claim
from halfclose.proc import run, spawn
from realcap import start_tcpdump, stop_all, stop_tcpdump

FORWARDER = r"""
import fcntl, os, select, socket, struct, sys
local, remote = sys.argv[1], sys.argv[2]
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"tun0", 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN | IFF_NO_PI
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((local, 1701))
head = struct.pack(">HHH", 0x0002, 1, 1) + b"\xff\x03\x00\x21"  # L2TPv2 data, tunnel 1, session 1; PPP, IPv4
print("ready", flush=True)
while True:
    ready, _, _ = select.select([fd, sock], [], [])
    if fd in ready:
        sock.sendto(head + os.read(fd, 65535), (remote, 1701))
    if sock in ready:
        data = sock.recv(65535)
        if data[:2] == head[:2] and data[6:10] == head[6:10]:
            os.write(fd, data[10:])
"""

CLIENT = r"""
import socket, sys
for i in range(int(sys.argv[2])):
    with socket.create_connection((sys.argv[1], 8080), timeout=5) as s:
        s.sendall(b"ping %d\n" % i)
        assert s.recv(100).startswith(b"pong")
print("done")
"""

SERVER = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], 8080))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.recv(100)
        conn.sendall(b"pong\n")
"""


def _wait_ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if b"ready" not in line:
        raise RuntimeError(f"a helper of the L2TP capture did not start: {line!r}")


def l2tp_capture(claim: Claim, workdir: Path, *, connections: int = 3) -> Path:
    """Run *connections* TCP exchanges through the L2TP tunnel; the underlay's pcap."""
    ns = [claim.add_netns("lac"), claim.add_netns("lns")]
    outer = ["198.18.201.1", "198.18.201.2"]
    inner = ["198.19.201.1", "198.19.201.2"]
    run(["ip", "-n", ns[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns[1]])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in (0, 1):
            run(["ip", "netns", "exec", ns[i], "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
            run(["ip", "-n", ns[i], "link", "set", "lo", "up"])
            run(["ip", "-n", ns[i], "addr", "add", f"{outer[i]}/24", "dev", "eth0"])
            run(["ip", "-n", ns[i], "link", "set", "eth0", "up"])
            fwd = spawn([sys.executable, "-c", FORWARDER, outer[i], outer[1 - i]], netns=ns[i],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
            procs.append(fwd)
            _wait_ready(fwd)
            run(["ip", "-n", ns[i], "addr", "add", f"{inner[i]}/32", "peer", f"{inner[1 - i]}/32", "dev", "tun0"])
            run(["ip", "-n", ns[i], "link", "set", "tun0", "mtu", "1400", "up"])
        server = spawn([sys.executable, "-c", SERVER, inner[1]], netns=ns[1], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)  # fmt: skip
        procs.append(server)
        _wait_ready(server)
        pcap = workdir / "l2tp.pcap"
        dump = start_tcpdump(ns[0], pcap, "eth0")
        procs.append(dump)
        done = run([sys.executable, "-c", CLIENT, inner[1], str(connections)], netns=ns[0], timeout=60)
        assert "done" in done.stdout, done.stdout + done.stderr
        time.sleep(0.2)
        stop_tcpdump(dump)
    finally:
        stop_all(procs)
        for p in procs:
            if p.stdout is not None:
                p.stdout.close()
    return pcap
