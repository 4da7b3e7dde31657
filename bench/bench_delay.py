"""How exactly the built-in delay forwarder holds frames, under a steady load.

Builds phone | link | server namespaces (as the lab does), sends UDP datagrams at a steady rate
from the phone to the server, which echoes each one, and prints how far the delays seen on the
receiving sides are from the configured ones: one way (phone -> server, against RTT/2) and the
round trip (against the RTT), as median, p90, p99 and max, in microseconds; and, from a capture
in the link namespace with kernel timestamps, how long each datagram was held there against the
configured one-way delay (the forwarder's own error, free of the endpoints' scheduling). The same
measurement over a plain bridge shows what the namespaces and the Python endpoints cost by
themselves. Needs root.

    PYTHONPATH=src python bench/bench_delay.py [--rtt-ms 50] [--pps 1000] [--seconds 5] [--spin-us 0]
        [--rt-priority 10]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

from halfclose.lab.delayline import Direction, LinkProfile
from halfclose.lab.link import Link, LinkMode, configure_link, start_delay
from halfclose.lab.runner import CAPTURE_BUFFER_KIB
from halfclose.lab.topology import build, plan_addresses, wait_up
from halfclose.netns import Claim
from halfclose.proc import run, spawn

ECHO = r"""
import socket, struct, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
u.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = u.recvfrom(2048)
    u.sendto(data[:16] + struct.pack("!q", time.monotonic_ns()), peer)
"""

LOAD = r"""
import json, socket, struct, sys, threading, time
host, port, pps, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
u.connect((host, port))
count = int(pps * seconds)
rows = []
def receive():
    u.settimeout(3.0)
    try:
        while len(rows) < count:
            data = u.recv(2048)
            now = time.monotonic_ns()
            seq, sent, there = struct.unpack("!qqq", data[:24])
            if seq >= 0:
                rows.append((seq, sent, there, now))
    except TimeoutError:
        pass
u.send(struct.pack("!qq", -1, 0)); time.sleep(0.5)   # resolve neighbours first
t = threading.Thread(target=receive); t.start()
start = time.monotonic_ns(); step = 1_000_000_000 // pps
for seq in range(count):
    due = start + seq * step
    while (left := due - time.monotonic_ns()) > 0:
        time.sleep(left / 1e9)
    u.send(struct.pack("!qq", seq, time.monotonic_ns()) + b"x" * 64)
t.join()
print(json.dumps({"sent": count, "rows": rows}))
"""


BULK_SERVER = r"""
import socket, sys
s = socket.create_server(("0.0.0.0", 9998))
print("ready", flush=True)
c, _ = s.accept()
c.sendall(b"x" * int(sys.argv[1]))
c.close()
"""

BULK_CLIENT = r"""
import socket, sys, time
t0 = time.monotonic()
c = socket.create_connection((sys.argv[1], 9998), timeout=60)
n = 0
while chunk := c.recv(1 << 20):
    n += len(chunk)
print(n, time.monotonic() - t0)
"""


def _bulk(phone: str, server: str, host: str, size: int) -> tuple[int, float]:
    """Bytes received and seconds taken by one TCP transfer of *size* bytes, server to phone."""
    srv = spawn([sys.executable, "-c", BULK_SERVER, str(size)], netns=server, stdout=subprocess.PIPE)
    try:
        assert srv.stdout is not None
        assert srv.stdout.readline().strip() == b"ready"
        got, seconds = run([sys.executable, "-c", BULK_CLIENT, host], netns=phone, timeout=300).stdout.split()
    finally:
        srv.kill()
        srv.wait()
        if srv.stdout is not None:
            srv.stdout.close()
    return int(got), float(seconds)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _measure(phone: str, server: str, host: str, *, pps: int, seconds: float) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    echo = spawn([sys.executable, "-c", ECHO, "9999"], netns=server, stdout=subprocess.PIPE, env=env)
    try:
        assert echo.stdout is not None
        assert echo.stdout.readline().strip() == b"ready"
        out = run([sys.executable, "-c", LOAD, host, "9999", str(pps), str(seconds)], netns=phone,
                  timeout=seconds + 60).stdout
    finally:
        echo.kill()
        echo.wait()
        if echo.stdout is not None:
            echo.stdout.close()
    body = json.loads(out)
    rows = np.array(body["rows"], dtype=np.int64).reshape(-1, 4)
    return {"sent": body["sent"], "rows": rows}


def _hold_times(pcap: Path) -> dict[str, np.ndarray]:
    """Per direction, how long each datagram stayed in the link namespace (kernel timestamps).

    The capture runs in the link namespace on all interfaces: each datagram shows once coming in
    (on one veth) and once going out (on the other), so the difference is the forwarder's hold
    time, free of the endpoints' scheduling.
    """
    out = run(["tshark", "-n", "-r", str(pcap), "-T", "fields", "-e", "frame.time_epoch", "-e", "sll.pkttype",
               "-e", "udp.dstport", "-e", "udp.payload"], timeout=300).stdout
    seen: dict[tuple[str, str, bool], int] = {}
    for row in out.splitlines():
        when, pkttype, dport, payload = [*row.split("\t"), "", "", "", ""][:4]
        if not payload:
            continue
        direction = "a_to_b" if dport == "9999" else "b_to_a"
        seen[(direction, payload.replace(":", "")[:16], pkttype == "4")] = int(Decimal(when) * 10**9)
    holds: dict[str, list[int]] = {"a_to_b": [], "b_to_a": []}
    for (direction, seq, outgoing), at in seen.items():
        if not outgoing and (direction, seq, True) in seen:
            holds[direction].append(seen[(direction, seq, True)] - at)
    return {k: np.array(v, dtype=np.int64) for k, v in holds.items()}


def _stats(name: str, values_ns: np.ndarray) -> str:
    us = values_ns / 1000
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return (f"  {name:<22} median {p50:8.1f} us   p90 {p90:8.1f} us   p99 {p99:8.1f} us   "
            f"max {us.max():8.1f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--pps", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--spin-us", type=float, default=0.0)
    parser.add_argument("--rt-priority", type=int, default=10, help="0: normal scheduling")
    parser.add_argument("--bulk-mb", type=float, default=20.0,
                        help="also time one TCP transfer of this many MB (0: skip)")
    args = parser.parse_args()
    profile = LinkProfile.from_ms(rtt_ms=args.rtt_ms)
    half = profile.one_way_ns(Direction.A_TO_B)
    print(f"delay forwarder bench: {args.pps} datagrams/s each way for {args.seconds:g} s, "
          f"rtt {args.rtt_ms:g} ms, spin {args.spin_us:g} us, rt priority {args.rt_priority}, "
          f"run {secrets.token_hex(2)}")
    for mode in (LinkMode.BRIDGE, LinkMode.FORWARDER):
        with Claim() as claim:
            topo = build(claim, plan_addresses(claim.run_id))
            phone, link_ns, server, host = topo.phone, topo.link, topo.server, str(topo.addresses.server_v4)
            if mode is LinkMode.BRIDGE:
                link = configure_link(link_ns, profile=None)
            else:
                # Started by hand rather than by configure_link, to pass the spin option.
                wait_up(link_ns, ["p0", "s0"])
                proc = start_delay(link_ns, a="p0", b="s0", profile=profile, spin_us=args.spin_us,
                                   rt_priority=args.rt_priority)
                link = Link(netns=link_ns, a="p0", b="s0", mode=mode, profile=profile, process=proc)
            pcap = claim.add_path(Path(f"/run/halfclose/{claim.run_id}-link.pcap"))
            dump = spawn(["tcpdump", "-i", "any", "-n", "-B", str(CAPTURE_BUFFER_KIB), "-U", "--immediate-mode",
                          "-w", str(pcap), "--time-stamp-precision=nano", "udp port 9999"], netns=link_ns)
            assert dump.stderr is not None
            dump.stderr.readline()
            ticks0 = _cpu_ticks(link.process.pid) if link.process else 0
            t0 = time.monotonic()
            got = _measure(phone, server, host, pps=args.pps, seconds=args.seconds)
            wall = time.monotonic() - t0
            cpu = (_cpu_ticks(link.process.pid) - ticks0) / os.sysconf("SC_CLK_TCK") if link.process else 0.0
            bulk = _bulk(phone, server, host, int(args.bulk_mb * 1e6)) if args.bulk_mb else None
            counters = link.close()
            dump.send_signal(signal.SIGINT)
            dump.communicate(timeout=30)
            holds = _hold_times(pcap)
        rows = got["rows"]
        assert isinstance(rows, np.ndarray)
        _seq, sent, there, back = rows.T
        want_one, want_rtt = (half, profile.rtt_ns) if mode is LinkMode.FORWARDER else (0, 0)
        print(f"{mode.value}: {len(rows)} of {got['sent']} echoed")
        print(_stats("one way - configured", (there - sent) - want_one))
        print(_stats("round trip - configured", (back - sent) - want_rtt))
        for direction, values in holds.items():
            want = profile.one_way_ns(Direction[direction.upper()]) if mode is LinkMode.FORWARDER else 0
            if len(values):
                print(_stats(f"hold {direction} - conf.", values - want) + f"   ({len(values)} in capture)")
        if bulk is not None:
            got_bytes, seconds = bulk
            print(f"  one TCP transfer: {got_bytes / 1e6:g} MB in {seconds:.2f} s = "
                  f"{got_bytes * 8 / seconds / 1e6:.0f} Mbit/s")
        if mode is LinkMode.FORWARDER:
            print(f"  forwarder CPU {cpu:.2f} s over {wall:.1f} s ({100 * cpu / wall:.0f} %); counters "
                  f"{json.dumps(counters.to_dict() if counters else None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
