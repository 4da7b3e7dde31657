"""End to end: an app as uid 10400 reuses a keep-alive connection the server closed while idle.

Two namespaces joined by a veth; a Python HTTP server that closes idle keep-alive connections
after 1 s with FIN; the app (``http.client``, reconnecting once on error) idles 1.5 s between
requests. tcpdump records the client side and tshark is the oracle for what went on the wire.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _reap_lab import Ns, capture, veth_pair
from halfclose.netns import Claim
from halfclose.proc import run, spawn
from test_reap_agent import start_reaper, stop_reaper, wait_until

pytestmark = pytest.mark.root

SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = float(sys.argv[2])
    def do_GET(self):
        body = b"hello\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], 80), H).serve_forever()
"""

CLIENT = """
import http.client, json, sys, time
host, n, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conn = http.client.HTTPConnection(host, 80, timeout=5)
def get():
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    return r.status == 200
for i in range(n):
    if i:
        time.sleep(idle)
    err, ok = None, False
    try:
        ok = get()
    except (http.client.HTTPException, OSError) as e:
        err = type(e).__name__
        conn.close()
        conn = http.client.HTTPConnection(host, 80, timeout=5)
        ok = get()
    print(json.dumps({"i": i, "ok": ok, "error": err}), flush=True)
"""


@dataclass(frozen=True)
class Pair:
    client: str
    server: str
    server_ip: str
    scripts: Path


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    with Claim() as claim, tempfile.TemporaryDirectory(prefix="hc-reap-e2e-") as tmp:
        os.chmod(tmp, 0o755)
        scripts = Path(tmp)
        (scripts / "server.py").write_text(SERVER)
        (scripts / "client.py").write_text(CLIENT)
        for f in scripts.iterdir():
            f.chmod(0o644)
        with veth_pair(claim, "cli", "srv") as (cli, srv, server_ip):
            yield Pair(client=cli, server=srv, server_ip=server_ip, scripts=scripts)


@dataclass(frozen=True)
class Pkt:
    t: float
    from_server: bool
    stream: int
    fin: bool
    rst: bool
    length: int
    seq: int


def packets(pcap: Path, server_ip: str) -> list[Pkt]:
    out = run(["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=,",
               "-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.stream", "-e", "tcp.flags.fin",
               "-e", "tcp.flags.reset", "-e", "tcp.len", "-e", "tcp.seq_raw"]).stdout
    rows = []
    for line in out.splitlines():
        t, src, stream, fin, rst, length, seq = line.split(",")
        rows.append(Pkt(float(t), src == server_ip, int(stream), fin in ("1", "True"), rst in ("1", "True"),
                        int(length), int(seq)))
    return rows


def run_client(p: Pair, rounds: int) -> list[dict[str, object]]:
    done = subprocess.run(
        ["ip", "netns", "exec", p.client, "setpriv", "--reuid", "10400", "--regid", "10400",
         "--clear-groups", "/usr/bin/python3", str(p.scripts / "client.py"), p.server_ip, str(rounds), "1.5"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def scenario(with_reaper: bool) -> tuple[list[dict[str, object]], list[Pkt], str]:
    with pair() as p:
        server = spawn(["/usr/bin/python3", str(p.scripts / "server.py"), p.server_ip, "1.0"], netns=p.server)
        try:
            wait_until(lambda: bool(run(["ss", "-Htln", "sport = :80"], netns=p.server).stdout.strip()))
            pcap = p.scripts / "client.pcap"
            reaper = None
            if with_reaper:
                reaper = start_reaper(Ns(p.client, "", ""), "--uid", "10400", "--port", "80", "--log", "json")
            try:
                with capture(p.client, pcap, "tcp", "port", "80", peer=p.server_ip):
                    results = run_client(p, 3)
            finally:
                err = ""
                if reaper is not None:
                    _events, err = stop_reaper(reaper)
            return results, packets(pcap, p.server_ip), err
        finally:
            server.terminate()
            server.communicate(timeout=10)


def server_closes(rows: list[Pkt]) -> list[Pkt]:
    """The server's FINs in a stream the server closed first (not answers to the app's FIN)."""
    client_fin = min((r.t for r in rows if not r.from_server and r.fin), default=float("inf"))
    fins = [r for r in rows if r.from_server and r.fin]
    return fins if fins and fins[0].t < client_fin else []


def per_stream(pkts: list[Pkt]) -> dict[int, list[Pkt]]:
    out: dict[int, list[Pkt]] = {}
    for pkt in pkts:
        out.setdefault(pkt.stream, []).append(pkt)
    return out


def test_with_reaper_server_fin_is_answered_by_rst_and_no_request_follows() -> None:
    results, pkts, err = scenario(with_reaper=True)
    assert [r["ok"] for r in results] == [True, True, True]
    assert all(r["error"] in (None, "ConnectionAbortedError") for r in results), results
    fins = 0
    for stream, rows in per_stream(pkts).items():
        server_fins = server_closes(rows)
        if not server_fins:
            continue
        fins += 1
        fin = server_fins[0]
        assert len(server_fins) == 1, f"stream {stream}: the server sent its FIN again"
        after = [r for r in rows if not r.from_server and r.t >= fin.t]
        assert not [r for r in after if r.length > 0], f"stream {stream}: request written after the FIN"
        rsts = [r for r in after if r.rst]
        assert rsts, f"stream {stream}: no RST to the server"
        # At once: 0.2 s allowed for a reaper that runs late (without one, the app's next request
        # comes 0.5 s after the FIN).
        assert rsts[0].t - fin.t < 0.2, f"stream {stream}: RST {rsts[0].t - fin.t:.4f} s after the FIN"
    assert fins >= 2
    assert "destroyed 2," in err  # one per idle close, nothing else


def test_without_reaper_the_request_goes_into_the_half_closed_socket() -> None:
    results, pkts, _ = scenario(with_reaper=False)
    assert [r["ok"] for r in results] == [True, True, True]
    late = 0
    for rows in per_stream(pkts).values():
        server_fins = server_closes(rows)
        if server_fins:
            late += sum(1 for r in rows if not r.from_server and r.t > server_fins[0].t and r.length > 0)
    assert late >= 1
