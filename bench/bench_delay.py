"""How exactly the built-in delay forwarder holds frames, under a steady load.

Builds phone | link | server namespaces (as the lab does), sends UDP datagrams at a steady rate
from the phone to the server, which echoes each one, and prints how far the delays seen on the
receiving sides are from the configured ones: one way (phone -> server, against RTT/2) and the
round trip (against the RTT), as median, p90, p99 and max, in microseconds. The same
measurement over a plain bridge shows what the namespaces and the Python endpoints cost by
themselves. Needs root.

    PYTHONPATH=src python bench/bench_delay.py [--rtt-ms 50] [--pps 1000] [--seconds 5] [--spin-us 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from halfclose.lab.delay import Link, LinkMode, configure_link, disable_offloads, start_delay
from halfclose.lab.delayline import Direction, LinkProfile
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


def _build(claim: Claim) -> tuple[str, str, str, str]:
    net = f"198.{random.choice((18, 19))}.{random.randrange(256)}"
    phone, link, server = (claim.add_netns(r) for r in ("phone", "link", "server"))
    run(["ip", "-n", phone, "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns", link])
    run(["ip", "-n", server, "link", "add", "eth0", "type", "veth", "peer", "name", "s0", "netns", link])
    for ns, host in ((server, 1), (phone, 2)):
        run(["ip", "-n", ns, "addr", "add", f"{net}.{host}/24", "dev", "eth0"])
        for dev in ("lo", "eth0"):
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        disable_offloads(ns, "eth0")
    return phone, link, server, f"{net}.1"


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
    args = parser.parse_args()
    profile = LinkProfile.from_ms(rtt_ms=args.rtt_ms)
    half = profile.one_way_ns(Direction.A_TO_B)
    print(f"delay forwarder bench: {args.pps} datagrams/s each way for {args.seconds:g} s, "
          f"rtt {args.rtt_ms:g} ms, spin {args.spin_us:g} us, run {secrets.token_hex(2)}")
    for mode in (LinkMode.BRIDGE, LinkMode.FORWARDER):
        with Claim() as claim:
            phone, link_ns, server, host = _build(claim)
            if mode is LinkMode.BRIDGE:
                link = configure_link(link_ns, profile=None)
            else:
                # Started by hand rather than by configure_link, to pass the spin option.
                for dev in ("p0", "s0"):
                    disable_offloads(link_ns, dev)
                    run(["ip", "-n", link_ns, "link", "set", dev, "up"])
                proc = start_delay(link_ns, a="p0", b="s0", profile=profile, spin_us=args.spin_us)
                link = Link(netns=link_ns, a="p0", b="s0", mode=mode, profile=profile, process=proc)
            ticks0 = _cpu_ticks(link.process.pid) if link.process else 0
            t0 = time.monotonic()
            got = _measure(phone, server, host, pps=args.pps, seconds=args.seconds)
            wall = time.monotonic() - t0
            cpu = (_cpu_ticks(link.process.pid) - ticks0) / os.sysconf("SC_CLK_TCK") if link.process else 0.0
            counters = link.close()
        rows = got["rows"]
        assert isinstance(rows, np.ndarray)
        _seq, sent, there, back = rows.T
        want_one, want_rtt = (half, profile.rtt_ns) if mode is LinkMode.FORWARDER else (0, 0)
        print(f"{mode.value}: {len(rows)} of {got['sent']} echoed")
        print(_stats("one way - configured", (there - sent) - want_one))
        print(_stats("round trip - configured", (back - sent) - want_rtt))
        if mode is LinkMode.FORWARDER:
            print(f"  forwarder CPU {cpu:.2f} s over {wall:.1f} s ({100 * cpu / wall:.0f} %); counters "
                  f"{json.dumps(counters.to_dict() if counters else None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
