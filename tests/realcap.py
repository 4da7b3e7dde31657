"""Real captures for the analysis tests: nginx (keepalive_timeout 2s) and dnsmasq in one namespace,
Python http.client clients in another, tcpdump on the client's interface; tshark as the oracle."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pcapflush
from halfclose.netns import Claim
from halfclose.proc import run, spawn

CLIENT_CODE = r"""
import http.client, socket, sys, time
import dns.message, dns.query, dns.rdatatype

server, family, name = sys.argv[1], sys.argv[2], "img.lab.test"
qtype = "AAAA" if family == "6" else "A"

def resolve():
    r = dns.query.udp(dns.message.make_query(name, qtype), server, timeout=2)
    return [rd.to_text() for rrset in r.answer for rd in rrset][0]

def get(conn):
    conn.request("GET", "/", headers={"Host": name})
    return conn.getresponse().read()

# 1. reuse across a 3 s gap: the request goes into the half-closed connection, then a retry
addr = resolve()
c = http.client.HTTPConnection(addr, 80, timeout=5)
get(c)
time.sleep(3)
try:
    get(c)
    print("no-error")
except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
    c.close()
    addr = resolve()
    c = http.client.HTTPConnection(addr, 80, timeout=5)
    get(c)
c.close()
# 2. no reuse: a request, then the client notices nothing, closes after the server did
c = http.client.HTTPConnection(addr, 80, timeout=5)
get(c)
time.sleep(2.5)
c.close()
# 3. client closes first
c = http.client.HTTPConnection(addr, 80, timeout=5)
get(c)
c.close()
print("done")
"""


@dataclass(frozen=True)
class RealCapture:
    pcap: Path
    server: str
    client: str


def _wait_port(ns: str, port: int, proto: str = "tcp") -> None:
    flag = "-ltn" if proto == "tcp" else "-lun"
    for _ in range(200):
        out = run(["ss", "-H", flag], netns=ns).stdout
        if f":{port} " in out:
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {proto} port {port} in {ns}")


def two_hosts(claim: Claim, *, ipv6: bool) -> tuple[str, str, str, str]:
    """A server and a client namespace joined by a veth pair: (server ns, client ns, server
    address, client address), in 198.18.0.0/15 or a random ULA /64."""
    n = random.randrange(256)
    if ipv6:
        pre = f"fd{random.randrange(256):02x}:{random.randrange(65536):x}:{random.randrange(65536):x}::"
        srv, cli, plen = pre + "1", pre + "2", 64
    else:
        base = random.choice(["198.18", "198.19"])
        srv, cli, plen = f"{base}.{n}.1", f"{base}.{n}.2", 24
    ns_s = claim.add_netns("srv")
    ns_c = claim.add_netns("cli")
    run(["ip", "-n", ns_c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns_s])
    for ns, addr in ((ns_s, srv), (ns_c, cli)):
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        extra = ["nodad"] if ipv6 else []
        run(["ip", "-n", ns, "addr", "add", f"{addr}/{plen}", "dev", "eth0", *extra])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    return ns_s, ns_c, srv, cli


def start_dnsmasq(ns: str, srv: str, workdir: Path, names: list[str]) -> subprocess.Popen[bytes]:
    """dnsmasq on *srv* port 53 answering every name in *names* with *srv* (TTL 30 s)."""
    proc = spawn(
        [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--listen-address={srv}", "--bind-interfaces", "--port=53", "--local-ttl=30",
            *(f"--address=/{name}/{srv}" for name in names), f"--pid-file={workdir}/dnsmasq.pid", "--user=root",
        ],
        netns=ns,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(ns, 53, "udp")
    return proc


def start_tcpdump(ns: str, pcap: Path, iface: str) -> subprocess.Popen[bytes]:
    """tcpdump writing every packet of *iface* to *pcap* (whole packets, flushed per packet)."""
    dump = spawn(
        ["tcpdump", "-i", iface, "-s", "0", "-U", "--immediate-mode", *pcapflush.BUFFER, "-w", str(pcap), "-n"],
        netns=ns,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        if pcap.exists() and pcap.stat().st_size > 0:
            break
        time.sleep(0.02)
    time.sleep(0.3)
    return dump


def stop_tcpdump(dump: subprocess.Popen[bytes]) -> None:
    time.sleep(1.0)  # let tcpdump write the last packets (-U flushes per packet)
    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=10)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def make_capture(claim: Claim, workdir: Path, *, ipv6: bool) -> RealCapture:
    """Run the three clients against nginx and return the client-side pcap."""
    ns_s, ns_c, srv, cli = two_hosts(claim, ipv6=ipv6)
    listen = f"[{srv}]:80" if ipv6 else f"{srv}:80"
    conf = workdir / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            daemon off; pid {workdir}/nginx.pid; error_log stderr;
            events {{}}
            http {{ access_log off; keepalive_timeout 2s;
              client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
              uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
              server {{ listen {listen}; location / {{ return 200 "x"; }} }} }}
            """
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        nginx = ["nginx", "-c", str(conf), "-p", str(workdir)]
        procs.append(spawn(nginx, netns=ns_s, stderr=subprocess.DEVNULL))
        procs.append(start_dnsmasq(ns_s, srv, workdir, ["img.lab.test"]))
        _wait_port(ns_s, 80)
        pcap = workdir / "client.pcap"
        # IPv6 runs capture on "any" (Linux cooked v2 link type), IPv4 on eth0 (Ethernet)
        dump = start_tcpdump(ns_c, pcap, "any" if ipv6 else "eth0")
        procs.append(dump)
        env = dict(os.environ)
        done = run([sys.executable, "-c", CLIENT_CODE, srv, "6" if ipv6 else "4"], netns=ns_c, timeout=60)
        assert "done" in done.stdout, done.stdout + done.stderr
        assert "no-error" not in done.stdout
        del env
        stop_tcpdump(dump)
    finally:
        stop_all(procs)
    return RealCapture(pcap=pcap, server=srv, client=cli)


@dataclass(frozen=True)
class TsharkCounts:
    connections: int
    server_closed_first: int
    client_data_after_server_fin: int
    fin_retransmits: int
    dns_queries: int


def tshark_counts(pcap: Path) -> TsharkCounts:
    """The summary counts, worked out from tshark's per-packet fields."""
    fields = [
        "frame.number", "tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "tcp.flags", "tcp.len",
        "tcp.analysis.retransmission", "dns.flags.response",
    ]
    argv = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in fields:
        argv += ["-e", f]
    out = run(argv, timeout=120).stdout
    streams: dict[int, list[tuple[str, int, int, bool]]] = defaultdict(list)
    dns_q = 0
    fin_retx = 0
    for line in out.splitlines():
        _num, stream, src4, src6, sport, flags, tlen, retx, dnsresp = line.split("|")
        if dnsresp != "":
            dns_q += dnsresp in ("0", "False")
        if stream == "":
            continue
        fl = int(flags, 16)
        sender = f"{src4 or src6}:{sport}"
        is_retx = retx != ""
        if fl & 1 and is_retx:
            fin_retx += 1
        streams[int(stream)].append((sender, fl, int(tlen or 0), is_retx))
    server_first = data_after = 0
    for pkts in streams.values():
        client = next((s for s, fl, _, _ in pkts if fl & 0x12 == 0x02), None)
        if client is None:
            continue
        first_close = next(((s, fl) for s, fl, _, _ in pkts if fl & 0x05), None)
        if first_close is not None and first_close[0] != client and first_close[1] & 1:
            server_first += 1
        seen_server_fin = False
        for s, fl, ln, rx in pkts:
            if s != client and fl & 1:
                seen_server_fin = True
            elif s == client and seen_server_fin and ln > 0 and not rx:
                data_after += 1
                break
    return TsharkCounts(
        connections=len(streams),
        server_closed_first=server_first,
        client_data_after_server_fin=data_after,
        fin_retransmits=fin_retx,
        dns_queries=dns_q,
    )


def workdir(claim: Claim) -> Path:
    d = Path(tempfile.mkdtemp(prefix="hc-analyze-"))
    claim.add_path(d)
    return d
