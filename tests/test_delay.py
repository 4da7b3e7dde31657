"""The delay adapter on real namespaces, real kernel TCP, and tshark as the oracle of the wire."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pcapflush
from halfclose.errors import EnvironmentProblem, UsageError
from halfclose.lab.delay import PROG
from halfclose.lab.delayline import LinkProfile
from halfclose.lab.figures import LinkFigures, link_figures
from halfclose.lab.link import LinkMode, configure_link, link, netem_argv, netem_available, start_delay, stop_delay
from halfclose.lab.topology import Topology, build, plan_addresses
from halfclose.netns import Claim
from halfclose.proc import run, spawn
from halfclose.sockdiag import netns_entered

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
PORT = 8080
UDP_PORT = 9090


# ---------------------------------------------------------------- without namespaces


def test_netem_argv_splits_jitter_and_states_loss() -> None:
    p = LinkProfile.from_ms(rtt_ms=50, jitter_ms=10, loss_pct=1.5, reorder=True)
    assert netem_argv("p0", 25_000_000, p) == [
        "tc", "qdisc", "replace", "dev", "p0", "root", "netem", "limit", "10000",
        "delay", "25000.000us", "5000.000us", "loss", "1.5000%", "seed", "0",
    ]
    assert netem_argv("s0", 1_500, LinkProfile(rtt_ns=3_000)) == [
        "tc", "qdisc", "replace", "dev", "s0", "root", "netem", "limit", "10000", "delay", "1.500us",
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--rtt-ms", "2000"], "RTT must be between 0 and 1000 ms"),
        (["--rtt-ms", "50", "--jitter-ms", "60"], "jitter must be between 0 and 50 ms"),
        (["--rtt-ms", "50", "--loss", "101"], "loss must be between 0 and 100 %"),
        (["--rtt-ms", "nan"], "RTT must be between"),
        (["--rtt-ms", "fifty"], "invalid float value"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args: list[str], words: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", PROG, "--a", "p0", "--b", "s0", *args],
        capture_output=True, text=True, env=ENV, check=False, timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_configure_link_refuses_a_bridge_that_should_delay() -> None:
    with pytest.raises(UsageError, match="a bridge cannot add rtt=50ms"):
        configure_link("nowhere", profile=LinkProfile.from_ms(rtt_ms=50), mode=LinkMode.BRIDGE)


def test_link_report_line_states_asked_and_measured() -> None:
    from halfclose.report.lab import link_line

    report = LinkFigures(mode="forwarder", rtt_ms_asked=50, jitter_ms=0, loss_pct=0, seed=1, handshakes=3,
                        rtt_ms_median=50.6, rtt_ms_min=50.4, rtt_ms_max=50.8, counters=None)
    assert link_line(report) == ("link (forwarder): RTT asked 50 ms; measured 50.60 ms median over 3 TCP "
                             "handshakes (min 50.40, max 50.80)")
    empty = LinkFigures(mode="bridge", rtt_ms_asked=0, jitter_ms=0, loss_pct=2, seed=4, handshakes=0,
                       rtt_ms_median=None, rtt_ms_min=None, rtt_ms_max=None, counters=None)
    assert link_line(empty) == ("link (bridge): RTT asked 0 ms (jitter 0 ms, loss 2 %, seed 4); "
                            "measured: no TCP handshake in the capture")


# ---------------------------------------------------------------- the three-namespace lab


@dataclass(frozen=True, slots=True, kw_only=True)
class Lab:
    topo: Topology
    phone: str
    link: str
    server: str
    server_v4: str
    server_v6: str
    tmp: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """The lab's own three namespaces (phone | link | server), the link left unjoined."""
    with Claim() as claim:
        claim.add_path(tmp_path)
        topo = build(claim, plan_addresses(claim.run_id))
        addrs = topo.addresses
        yield Lab(topo=topo, phone=topo.phone, link=topo.link, server=topo.server,
                  server_v4=str(addrs.server_v4), server_v6=str(addrs.server_v6), tmp=tmp_path)


SERVER = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(128)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
u.bind(("::", int(sys.argv[2])))
def udp():
    seen = []
    while True:
        data = u.recv(2048)
        if data == b"report":
            sys.stdout.write(" ".join(seen) + "\n"); sys.stdout.flush(); seen = []
        else:
            seen.append(data.split(b" ")[0].decode())
threading.Thread(target=udp, daemon=True).start()
def serve(c):
    with c:
        f = c.makefile("rb")
        n = int(f.readline() or b"0")
        c.sendall(bytes(i % 251 for i in range(n)))
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import hashlib, json, socket, sys
port = int(sys.argv[1])
out = []
for item in sys.argv[2:]:
    host, n = item.rsplit("/", 1)
    with socket.create_connection((host, port), timeout=20) as c:
        c.sendall(f"{n}\n".encode())
        got = bytearray()
        while chunk := c.recv(65536):
            got += chunk
    out.append([host, len(got), hashlib.sha256(got).hexdigest()])
print(json.dumps(out))
"""

UDP_SENDER = r"""
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"-1 warm", (host, port)); time.sleep(0.3)
for i in range(count):
    s.sendto(b"%d %s" % (i, b"x" * 64), (host, port))
    if i % 8 == 7:
        time.sleep(0.0005)
time.sleep(0.5)
s.sendto(b"report", (host, port))
"""


@contextlib.contextmanager
def _server(lab: Lab) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn([sys.executable, "-c", SERVER, str(PORT), str(UDP_PORT)], netns=lab.server,
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def _capture(lab: Lab, name: str) -> Iterator[Path]:
    """tcpdump on the phone's interface; every packet up to the block's end is in the file (pcapflush)."""
    pcap = lab.tmp / name
    marker = pcapflush.marker_port()
    proc = spawn(["tcpdump", "-i", "eth0", "-n", "-U", "--immediate-mode", *pcapflush.BUFFER, "-w", str(pcap),
                  "--time-stamp-precision=nano", pcapflush.with_marker("tcp", host=lab.server_v4, port=marker)],
                 netns=lab.phone)

    def udp_in_phone() -> socket.socket:
        with netns_entered(lab.phone):
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert b"listening on" in line, line
        yield pcap
        pcapflush.stop(proc, pcap, pcapflush.udp_sender(lab.server_v4, marker, make=udp_in_phone), sig=signal.SIGTERM,
                       grace=0.0)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)


def _fetch(lab: Lab, items: list[str]) -> list[list[object]]:
    done = run([sys.executable, "-c", CLIENT, str(PORT), *items], netns=lab.phone, timeout=60)
    return list(json.loads(done.stdout))


def _handshake_rtts_ms(pcap: Path) -> dict[str, list[float]]:
    """SYN -> SYN/ACK time of each TCP stream, seen on the phone's side, by IP version."""
    out = run(["tshark", "-r", str(pcap), "-Y", "tcp.flags.syn == 1", "-T", "fields",
               "-e", "tcp.stream", "-e", "tcp.flags.ack", "-e", "frame.time_epoch", "-e", "ipv6.src"]).stdout
    syn: dict[str, float] = {}
    rtts: dict[str, list[float]] = {"4": [], "6": []}
    for row in out.splitlines():
        stream, ack, when, v6 = row.split("\t")
        if ack in {"0", "False"}:
            syn[stream] = float(when)
        elif stream in syn:
            rtts["6" if v6 else "4"].append((float(when) - syn.pop(stream)) * 1000)
    return rtts


def _udp_order(lab: Lab, server: subprocess.Popen[bytes], count: int) -> list[int]:
    run([sys.executable, "-c", UDP_SENDER, lab.server_v4, str(UDP_PORT), str(count)], netns=lab.phone,
        timeout=60)
    assert server.stdout is not None
    return [int(x) for x in server.stdout.readline().split() if int(x) >= 0]


@pytest.mark.root
def test_forwarder_gives_the_asked_rtt_carries_data_and_keeps_order(lab: Lab) -> None:
    with link(lab.topo, rtt_ms=50, mode=LinkMode.FORWARDER) as joined, _server(lab) as server:
        with _capture(lab, "rtt.pcap") as pcap:
            items = [f"{lab.server_v4}/0"] * 6 + [f"{lab.server_v6}/0"] * 6
            items += [f"{lab.server_v4}/200000", f"{lab.server_v6}/200000"]
            got = _fetch(lab, items)
        order = _udp_order(lab, server, 1000)
        counters = joined.close()
    want = hashlib.sha256(bytes(i % 251 for i in range(200_000))).hexdigest()
    assert got[-2][1:] == [200_000, want]
    assert got[-1][1:] == [200_000, want]
    rtts = _handshake_rtts_ms(pcap)
    for version in ("4", "6"):
        assert len(rtts[version]) == 7, rtts
        # Never faster than the delay, and the median within 2 ms of it.
        assert min(rtts[version]) >= 49.9, rtts
        assert abs(statistics.median(rtts[version]) - 50.0) <= 2.0, rtts
    # With no jitter nothing is reordered: every datagram arrives, in the order sent.
    assert order == list(range(1000))
    assert counters is not None
    for side in (counters.a_to_b, counters.b_to_a):
        assert side.received > 100
        assert side.lost == side.overflow == side.send_errors == 0
    # The run's report: the counters of the stopped forwarder next to the measured round trips.
    report = link_figures(mode=joined.mode.value, counters=joined.close(),
                          rtts_ns=[52_000_000, 50_000_000, 51_000_000, 50_500_000], rtt_ms=50)
    assert (report.mode, report.handshakes) == ("forwarder", 4)
    assert (report.rtt_ms_median, report.rtt_ms_min, report.rtt_ms_max) == (50.75, 50.0, 52.0)
    assert report.counters == counters.to_dict()
    assert link_figures(mode="bridge", counters=None, rtts_ns=None).note == "the capture could not be analysed"


@pytest.mark.root
def test_jitter_keeps_order_unless_reordering_is_asked(lab: Lab) -> None:
    orders = {}
    with _server(lab) as server:
        for reorder in (False, True):
            profile = LinkProfile.from_ms(rtt_ms=20, jitter_ms=20, seed=7, reorder=reorder)
            proc = start_delay(lab.link, a="p0", b="s0", profile=profile)
            try:
                orders[reorder] = _udp_order(lab, server, 400)
            finally:
                stop_delay(proc)
    assert orders[False] == list(range(400))
    assert sorted(orders[True]) == list(range(400))
    assert orders[True] != list(range(400))


@pytest.mark.root
def test_auto_mode_bridges_a_transparent_link_and_delays_otherwise(lab: Lab) -> None:
    with configure_link(lab.link, profile=LinkProfile(rtt_ns=0)) as link:
        assert link.mode is LinkMode.BRIDGE
        with _server(lab):
            assert _fetch(lab, [f"{lab.server_v4}/1000"])[0][1] == 1000
    # Undo the bridge, then ask for a delay: netem where the kernel has it, else the forwarder.
    run(["ip", "-n", lab.link, "link", "del", "br0"])
    has_netem = netem_available(lab.link, "p0")
    with configure_link(lab.link, profile=LinkProfile.from_ms(rtt_ms=10, loss_pct=0)) as link:
        assert link.mode is (LinkMode.NETEM if has_netem else LinkMode.FORWARDER)
        with _server(lab):
            assert _fetch(lab, [f"{lab.server_v6}/1000"])[0][1] == 1000


@pytest.mark.root
def test_missing_interface_is_a_clear_error_and_leaves_nothing(lab: Lab) -> None:
    with pytest.raises(EnvironmentProblem, match="no network interface named 'nope'"):
        start_delay(lab.link, a="nope", b="s0", profile=LinkProfile.from_ms(rtt_ms=5))
    assert run(["ip", "netns", "pids", lab.link]).stdout.strip() == ""


@pytest.mark.root
def test_unfinished_checksums_are_reported_once(lab: Lab) -> None:
    # Offloads back on at the phone: its frames reach the forwarder with checksums left to the NIC.
    run(["ethtool", "-K", "eth0", "tx", "on"], netns=lab.phone)
    proc = start_delay(lab.link, a="p0", b="s0", profile=LinkProfile.from_ms(rtt_ms=2))
    try:
        with _server(lab):
            for _ in range(3):
                run([sys.executable, "-c", "import socket, sys\ntry: socket.create_connection("
                     "(sys.argv[1], int(sys.argv[2])), timeout=0.5)\nexcept OSError: pass",
                     lab.server_v4, str(PORT)], netns=lab.phone)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    lines = err.decode().splitlines()
    warnings = [line for line in lines if "unfinished checksums" in line]
    assert len(warnings) == 1, lines
    assert "frames on p0" in warnings[0] and "ethtool -K" in warnings[0]
    assert lines[-1].startswith(f"{PROG}: stopped ")
