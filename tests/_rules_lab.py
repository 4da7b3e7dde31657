"""Test bench for the netfilter rules: client and server namespaces, nginx, app clients, tcpdump, tshark.

Everything lives in a :class:`~halfclose.netns.Claim`, so it is removed even when a test fails.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pcapflush
from halfclose.netns import Claim
from halfclose.proc import run, spawn
from halfclose.sockdiag import netns_entered

APP_UID = 10400
OTHER_UID = 10401
IDLE_TIMEOUT = 1  # nginx keepalive_timeout, seconds
CLIENT_IDLE = 2.0  # how long the client sleeps between requests (past the server's idle timeout)
BIG = 3000  # bytes in the "Connection: close" response

CLIENT = r'''
import http.client, json, socket, sys, time
host, mode, idle = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = {"mode": mode, "ports": [], "error": None, "phase": None, "bodies": []}
def connect():
    c = http.client.HTTPConnection(host, 80, timeout=5)
    c.connect()
    out["ports"].append(c.sock.getsockname()[1])
    return c
c = connect()
if mode == "late":
    # "Connection: close": the server sends the response and its FIN at once; the app reads late.
    c.request("GET", "/bye")
    time.sleep(idle / 3)
    try:
        out["bodies"].append(f"{len(c.getresponse().read())} bytes")
    except Exception as exc:
        out["error"] = type(exc).__name__
    c.close()
    time.sleep(idle / 2)
    print(json.dumps(out)); sys.exit(0)
c.request("GET", "/one")
out["bodies"].append(c.getresponse().read().decode())
if mode == "close":
    # The client ends the connection itself, after the server's idle close is well under way
    # only if it waits; here it closes first, then lingers so the server's FIN and our ACK pass.
    c.close()
    time.sleep(idle)
    print(json.dumps(out)); sys.exit(0)
time.sleep(idle)
try:
    out["phase"] = "request"
    c.request("GET", "/two")
    out["phase"] = "response"
    out["bodies"].append(c.getresponse().read().decode())
    out["phase"] = None
except Exception as exc:
    out["error"] = type(exc).__name__
    c.close()
    c = connect()
    c.request("GET", "/retry")
    out["bodies"].append(c.getresponse().read().decode())
c.close()
time.sleep(0.3)
print(json.dumps(out))
'''

NGINX = """daemon off;
master_process off;
pid {pid};
error_log stderr;
events {{}}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_timeout {idle}s;
  lingering_close off;
  server {{
    listen {v4}:80;
    listen [{v6}]:80;
    location / {{ return 200 "hello"; }}
    location /bye {{ keepalive_timeout 0; return 200 "{big}"; }}
  }}
}}
"""


@dataclass(kw_only=True)
class Bench:
    """Two namespaces joined by a veth: ``client`` (the app's side) and ``server`` (nginx)."""

    claim: Claim
    client: str
    server: str
    client_if: str
    v4: tuple[str, str]  # client, server
    v6: tuple[str, str]
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def server_addr(self, family: str) -> str:
        return self.v4[1] if family == "ipv4" else self.v6[1]

    def url_host(self, family: str) -> str:
        return self.v4[1] if family == "ipv4" else f"[{self.v6[1]}]"


def _ready(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited: {path.read_text(errors='replace')}")
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args} not ready: {path.read_text(errors='replace')}")


@contextmanager
def bench() -> Iterator[Bench]:
    """A fresh client/server pair with nginx listening on port 80 (IPv4 and IPv6)."""
    with Claim() as claim:
        client = claim.add_netns("cli")
        server = claim.add_netns("srv")
        workdir = claim.add_path(tempfile.mkdtemp(prefix="hc-rules-"))
        workdir.chmod(0o755)
        a, b = random.randrange(18, 20), random.randrange(256)
        v4 = (f"198.{a}.{b}.2", f"198.{a}.{b}.1")
        pfx = f"fd{random.randrange(256):02x}:{random.randrange(65536):x}:{random.randrange(65536):x}:1"
        v6 = (f"{pfx}::2", f"{pfx}::1")
        cif, sif = f"{claim.run_id}c", f"{claim.run_id}s"
        run(["ip", "link", "add", cif, "netns", client, "type", "veth", "peer", "name", sif, "netns", server])
        for ns, dev, i in ((client, cif, 0), (server, sif, 1)):
            run(["ip", "link", "set", "lo", "up"], netns=ns)
            run(["ip", "addr", "add", f"{v4[i]}/24", "dev", dev], netns=ns)
            run(["ip", "addr", "add", f"{v6[i]}/64", "dev", dev, "nodad"], netns=ns)
            run(["ip", "link", "set", dev, "up"], netns=ns)
        tmp = workdir / "nginx"
        tmp.mkdir()
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX.format(pid=tmp / "pid", tmp=tmp, idle=IDLE_TIMEOUT, v4=v4[1], v6=v6[1],
                                   big="x" * BIG))
        (workdir / "client.py").write_text(CLIENT)
        (workdir / "client.py").chmod(0o644)
        b_ = Bench(claim=claim, client=client, server=server, client_if=cif, v4=v4, v6=v6, workdir=workdir)
        with (workdir / "nginx.log").open("wb") as log:
            argv = ["nginx", "-c", str(conf), "-p", str(tmp), "-e", "stderr"]
            nginx = spawn(argv, netns=server, stderr=log)
        b_.procs.append(nginx)
        _wait_listen(server, nginx)
        try:
            yield b_
        finally:
            for proc in b_.procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()


def _wait_listen(server: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = run(["ss", "-Hltn", "sport", "= :80"], netns=server).stdout
        if out.count("LISTEN") >= 2:
            return
        if proc.poll() is not None:
            raise RuntimeError("nginx exited")
        time.sleep(0.02)
    raise RuntimeError("nginx did not listen")


@contextmanager
def capture(b: Bench, name: str, iface: str | None = None) -> Iterator[Path]:
    """tcpdump on the client's interface (or *iface*, e.g. ``nflog:42``) into a pcap; yields its path."""
    pcap = b.workdir / f"{name}.pcap"
    log = b.workdir / f"{name}.tcpdump.log"
    peer, port = b.v4[1], pcapflush.marker_port()  # the interface's capture: with a marker (pcapflush)
    with log.open("wb") as err:
        argv = ["tcpdump", "-i", iface or b.client_if, "-U", "--immediate-mode", *pcapflush.BUFFER, "-n", "-w",
                str(pcap)]
        if iface is None:
            argv.append(pcapflush.with_marker("tcp", host=peer, port=port))
        proc = spawn(argv, netns=b.client, stderr=err)
    b.procs.append(proc)
    _ready(log, "listening on", proc)

    def udp_in_client() -> socket.socket:
        with netns_entered(b.client):
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    try:
        yield pcap
    finally:
        if iface is None:  # every packet up to here is in the file
            pcapflush.stop(proc, pcap, pcapflush.udp_sender(peer, port, make=udp_in_client))
        else:  # an NFLOG group: its log messages follow the packets at once (no marker reaches it)
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)


def start_client(
    b: Bench, family: str, *, uid: int = APP_UID, mode: str = "reuse"
) -> subprocess.Popen[bytes]:
    """Start the app client as *uid* in the client namespace (keep-alive reuse or client-side close)."""
    argv = [
        "setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
        "/usr/bin/python3", str(b.workdir / "client.py"), b.server_addr(family), mode, str(CLIENT_IDLE),
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/"}
    proc = spawn(argv, netns=b.client, stdout=subprocess.PIPE, env=env, cwd="/")
    b.procs.append(proc)
    return proc


def finish(proc: subprocess.Popen[bytes]) -> dict[str, object]:
    out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"client failed ({proc.returncode}): {err.decode(errors='replace')}")
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@dataclass(frozen=True, kw_only=True)
class Segment:
    frame: int
    client_port: int
    from_client: bool
    fin: bool
    rst: bool
    syn: bool
    length: int


def segments(pcap: Path) -> list[Segment]:
    """The capture's TCP segments per tshark (the independent oracle)."""
    done = run([
        "tshark", "-r", str(pcap), "-n", "-T", "fields", "-E", "separator=,",
        "-e", "frame.number", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags.fin",
        "-e", "tcp.flags.reset", "-e", "tcp.flags.syn", "-e", "tcp.len", "-Y", "tcp",
    ])
    out = []
    for line in done.stdout.splitlines():
        f = line.split(",")
        src, dst = int(f[1]), int(f[2])
        out.append(Segment(
            frame=int(f[0]), client_port=dst if src == 80 else src, from_client=dst == 80,
            fin=f[3] in ("1", "True"), rst=f[4] in ("1", "True"), syn=f[5] in ("1", "True"), length=int(f[6]),
        ))
    return out


def conversation(segs: list[Segment], port: int) -> list[Segment]:
    return [s for s in segs if s.client_port == port]


def payload_after_server_fin(conv: list[Segment]) -> bool:
    """Whether the client sent payload after the server's FIN on this connection."""
    seen = False
    for s in conv:
        if not s.from_client and s.fin:
            seen = True
        elif s.from_client and seen and s.length > 0:
            return True
    return False


def env_with_path(extra: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{extra}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


#: A stand-in for netd: sets a connection-mark bit of its own before our rules run, and counts, after
#: them, packets whose packet mark is set or whose connection lost that bit.
WATCH = """table inet watch {
  chain out_first { type filter hook output priority -180; policy accept;
    meta l4proto tcp ct mark set ct mark | 0x01000000; }
  chain out_last { type filter hook output priority 300; policy accept;
    meta l4proto tcp meta mark != 0 counter comment "packet_mark";
    meta l4proto tcp ct mark & 0x01000000 == 0 counter comment "lost_bit"; }
  chain in_last { type filter hook input priority 300; policy accept;
    meta l4proto tcp meta mark != 0 counter comment "packet_mark";
    meta l4proto tcp ct mark & 0x01000000 == 0 counter comment "lost_bit"; }
}
"""


def watch(netns: str) -> None:
    run(["nft", "-f", "-"], netns=netns, input=WATCH)


def watched(netns: str) -> dict[str, int]:
    """Packets the watch table counted, per comment (all zero when our rules behave)."""
    return watched_table(netns, "watch")


def watched_table(netns: str, table: str) -> dict[str, int]:
    """Packets the counters of nft table ``inet TABLE`` counted, per rule comment."""
    listing = json.loads(run(["nft", "-j", "list", "table", "inet", table], netns=netns).stdout)
    out: dict[str, int] = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule and "comment" in rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    out[rule["comment"]] = out.get(rule["comment"], 0) + int(expr["counter"]["packets"])
    return out
