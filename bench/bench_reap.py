"""Benchmarks of the reaper and the watch view, on real kernel TCP in namespaces made here.

    PYTHONPATH=src python bench/bench_reap.py [--connections 200] [--rate 1000] [--seconds 3]
                                              [--baseline main] [--rounds 3]

1. FIN-to-RST latency as seen in a capture on the client side (median, p99), for the nflog and
   the poll (50 ms) triggers: the server closes idle connections one at a time, the reaper
   destroys the client sockets, tshark reads the pcap.
2. CPU (user+sys of the reaper process, to the nanosecond from ``schedstat``) while the server
   closes 1,000 connections a second.
3. Cost of one ``halfclose watch`` snapshot with 10,000 sockets.

With ``--baseline REV`` (default ``main``) the nflog latency and the CPU figures are measured for
the reaper of that git revision too (its ``src/`` taken with ``git archive``), in alternating
rounds in the same run (which of the two goes first alternates as well), and the ratios
printed; the load average of the machine is printed with them (the figures move with what else
runs; CPU seconds per FIN much less than the latency).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from halfclose.lab.runner import CAPTURE_BUFFER_KIB
from halfclose.netns import Claim
from halfclose.proc import run, spawn
from halfclose.sockdiag import netns_entered

SRC = str(Path(__file__).resolve().parents[1] / "src")
APP_UID = 10400


@contextlib.contextmanager
def pair() -> Iterator[tuple[str, str, str, str]]:
    with Claim() as claim:
        cli, srv = claim.add_netns("bcli"), claim.add_netns("bsrv")
        run(["ip", "-n", cli, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", srv])
        third = int.from_bytes(os.urandom(2), "big") % 512
        prefix = f"198.{18 + third // 256}.{third % 256}"
        for ns, dev, ip in ((cli, "vc", f"{prefix}.2"), (srv, "vs", f"{prefix}.1")):
            run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield cli, srv, f"{prefix}.2", f"{prefix}.1"


#: The environment of the reaper is padded to this many bytes more than ``PYTHONPATH`` needs
#: (see :func:`reaper_env`).
ENV_ROOM = 4096


def reaper_env(src: str, pad: int) -> dict[str, str]:
    """The reaper's environment: ``PYTHONPATH=src`` and a filler variable, so that the environment
    has the same size whatever the length of *src*, plus *pad* bytes. The size of the environment
    moves the initial stack (and so, most likely, where hot data falls in the caches): the same
    code with a 1 KB longer environment used about 15 % less CPU here (3 rounds each), and a
    ``git archive`` copy in /tmp differed from the work tree by as much. Side by side, both
    reapers get the same size, and the size changes from round to round."""
    return dict(os.environ, PYTHONPATH=src, HALFCLOSE_BENCH_FILL="." * (ENV_ROOM - len(src) + pad))


def start_reaper(ns: str, *args: str, src: str = SRC, pad: int = 0) -> subprocess.Popen[bytes]:
    env = reaper_env(src, pad)
    proc = spawn([sys.executable, "-m", "halfclose", "reap", *args], netns=ns, env=env)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if b"ready" not in line:
        proc.kill()
        raise SystemExit(f"reaper did not start: {line!r} {proc.communicate()[1]!r}")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return err.decode().strip().splitlines()[-1] if err else ""


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """CPU seconds of process *pid* so far: user and system (in clock ticks, split by the tick's
    samples) and their total to the nanosecond (``/proc/PID/task/*/schedstat``, all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
                for t in os.listdir(f"/proc/{pid}/task"))
    return int(fields[11]) / tick, int(fields[12]) / tick, total / 1e9


def connections(cli: str, srv: str, server_ip: str, n: int, port: int = 80) -> tuple[list[socket.socket], list[socket.socket], socket.socket]:  # noqa: E501
    with netns_entered(srv):
        lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((server_ip, port))
    lst.listen(4096)
    clients, servers = [], []
    for _ in range(n):
        with netns_entered(cli):
            os.setegid(APP_UID)
            os.seteuid(APP_UID)
            try:
                c = socket.socket()
            finally:
                os.seteuid(0)
                os.setegid(0)
        c.connect((server_ip, port))
        a, _ = lst.accept()
        clients.append(c)
        servers.append(a)
    return clients, servers, lst


def fin_to_rst(pcap: Path, server_ip: str) -> list[float]:
    out = run(["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=,", "-e", "frame.time_epoch",
               "-e", "ip.src", "-e", "tcp.stream", "-e", "tcp.flags.fin", "-e", "tcp.flags.reset"],
              timeout=120).stdout
    fin: dict[str, float] = {}
    rst: dict[str, float] = {}
    for line in out.splitlines():
        t, src, stream, f, r = line.split(",")
        if src == server_ip and f in ("1", "True"):
            fin.setdefault(stream, float(t))
        elif src != server_ip and r in ("1", "True"):
            rst.setdefault(stream, float(t))
    return [rst[s] - fin[s] for s in fin if s in rst and rst[s] >= fin[s]]


def bench_latency(trigger: str, n: int, src: str = SRC, label: str = "", pad: int = 0) -> list[float]:
    with pair() as (cli, srv, _cip, sip), tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "b.pcap"
        reaper = start_reaper(cli, "--uid", str(APP_UID), "--port", "80", "--trigger", trigger,
                              "--interval", "0.05", src=src, pad=pad)
        dump = spawn(["tcpdump", "-i", "vc", "-n", "-B", str(CAPTURE_BUFFER_KIB), "-U", "--immediate-mode",
                      "-w", str(pcap), "tcp", "port", "80"], netns=cli)
        assert dump.stderr is not None
        dump.stderr.readline()
        try:
            clients, servers, lst = connections(cli, srv, sip, n)
            time.sleep(0.2)
            for a in servers:
                a.close()
                time.sleep(0.01 if trigger == "nflog" else 0.013)
            time.sleep(0.3)
        finally:
            dump.send_signal(signal.SIGTERM)
            dump.communicate(timeout=10)
            summary = stop(reaper)
        lat = sorted(fin_to_rst(pcap, sip))
        for c in clients:
            c.close()
        lst.close()
    if not lat:
        print(f"{trigger}{label}: no FIN/RST pairs found ({summary})")
        return []
    print(f"FIN->RST latency, trigger {trigger}{label}: {len(lat)}/{n} connections, "
          f"median {statistics.median(lat) * 1e3:.3f} ms, p99 {p99(lat) * 1e3:.3f} ms, max {lat[-1] * 1e3:.3f} ms")
    print(f"  reaper: {summary}")
    return lat


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def bench_cpu(rate: int, seconds: float, src: str = SRC, label: str = "", pad: int = 0) -> float:
    """Percent of one core the reaper used; printed with its details."""
    n = int(rate * seconds)
    with pair() as (cli, srv, _cip, sip):
        reaper = start_reaper(cli, "--uid", str(APP_UID), "--port", "80", src=src, pad=pad)
        clients, servers, lst = connections(cli, srv, sip, n)  # tagged: the rules are in
        try:
            time.sleep(0.3)
            before = cpu_seconds(reaper.pid)
            start = time.monotonic()
            for i, a in enumerate(servers):
                a.close()
                ahead = start + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            elapsed = time.monotonic() - start
            time.sleep(0.5)
            after = cpu_seconds(reaper.pid)
            user, system, used = (a - b for a, b in zip(after, before, strict=True))
        finally:
            summary = stop(reaper)
        aborted = 0
        for c in clients:
            try:
                c.send(b"x")
            except ConnectionAbortedError:
                aborted += 1
            c.close()
        lst.close()
    share = 100 * used / (elapsed + 0.5)
    print(f"reaper{label} CPU at {n / elapsed:.0f} FINs/s for {elapsed:.1f} s: {used:.3f} s "
          f"({used / n * 1e6:.0f} us per FIN; ticks: user {user:.2f}, sys {system:.2f}) = {share:.2f} % of one core; "
          f"{aborted}/{n} app sockets aborted; load average {os.getloadavg()[0]:.2f}")
    print(f"  reaper: {summary}")
    return share


@contextlib.contextmanager
def baseline_src(rev: str) -> Iterator[str]:
    """The ``src/`` of git revision *rev*, unpacked in a temporary folder."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="hc-bench-base-") as tmp:
        archive = subprocess.run(["git", "-C", str(root), "archive", rev, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        os.chmod(tmp, 0o755)
        yield str(Path(tmp) / "src")


def compare_with(rev: str, args: argparse.Namespace) -> None:
    """The nflog latency and the CPU of the reaper at *rev* and now, alternating, in one run."""
    with baseline_src(rev) as base:
        lat: dict[str, list[float]] = {"base": [], "now": []}
        cpu: dict[str, list[float]] = {"base": [], "now": []}
        for round_ in range(args.rounds):
            # Which one goes first alternates too: the second of a pair runs while the kernel
            # still tears down the first one's namespaces and sockets.
            pair_ = (("base", base), ("now", SRC))
            pad = round_ * 1040 % ENV_ROOM  # the same environment size for both, another each round
            for key, src in pair_ if round_ % 2 == 0 else pair_[::-1]:
                label = f" [{rev}]" if key == "base" else " [this tree]"
                if args.only in (None, "latency"):
                    lat[key] += bench_latency("nflog", args.connections, src=src, label=label, pad=pad)
                if args.only in (None, "cpu"):
                    cpu[key].append(bench_cpu(args.rate, args.seconds, src=src, label=label, pad=pad))
    print(f"-- {rev} vs this tree, {args.rounds} alternating rounds; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} --")
    if lat["base"] and lat["now"]:
        b, n = p99(lat["base"]), p99(lat["now"])
        print(f"FIN->RST p99: {b * 1e3:.3f} ms -> {n * 1e3:.3f} ms ({b / n:.2f}x); median "
              f"{statistics.median(lat['base']) * 1e3:.3f} -> {statistics.median(lat['now']) * 1e3:.3f} ms")
    if cpu["base"] and cpu["now"]:
        b, n = statistics.median(cpu["base"]), statistics.median(cpu["now"])
        print(f"reaper CPU at {args.rate} FINs/s (median of rounds): {b:.2f} % -> {n:.2f} % of one core "
              f"({b / n:.2f}x less); rounds {[round(x, 2) for x in cpu['base']]} -> "
              f"{[round(x, 2) for x in cpu['now']]}")


def bench_watch(sockets: int) -> None:
    from halfclose.reap.watch import AgeTracker, ProcIndex, build_snapshot
    from halfclose.sockdiag import TCPF_ALL, SockDiag, TcpState, state_mask

    with Claim() as claim:
        ns = claim.add_netns("bwatch")
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        pairs = sockets // 2
        with netns_entered(ns):
            lst = socket.socket()
        lst.bind(("127.0.0.1", 80))
        lst.listen(4096)
        held = []
        for i in range(pairs):
            with netns_entered(ns):
                c = socket.socket()
            c.connect(("127.0.0.1", 80))
            a, _ = lst.accept()
            held += [c, a]
            if i % 4 == 0:
                a.close()  # a quarter of the clients in CLOSE_WAIT
        tracker, index = AgeTracker(), ProcIndex()
        every = TCPF_ALL & ~state_mask(TcpState.TIME_WAIT, TcpState.NEW_SYN_RECV)
        times = []
        with SockDiag(netns=ns) as sd:
            for _ in range(5):
                t0 = time.perf_counter()
                socks = list(sd.dump(states=every))
                cw = list(sd.dump(states=state_mask(TcpState.CLOSE_WAIT), info=True))
                snap = build_snapshot(sockets=socks, ages=tracker.update(cw, time.time()),
                                      owners=index.owners(m.idiag_inode for m in socks), reapers=[],
                                      ts=time.time(), netns=ns)
                times.append(time.perf_counter() - t0)
        for s in held:
            s.close()
        lst.close()
    rest = statistics.median(times[1:]) * 1e3
    print(f"watch snapshot with {snap.sockets} sockets ({snap.close_wait} in CLOSE_WAIT): first "
          f"{times[0] * 1e3:.0f} ms (with /proc scan), then median {rest:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--watch-sockets", type=int, default=10000)
    parser.add_argument("--only", choices=("latency", "cpu", "watch"))
    parser.add_argument("--baseline", default="main",
                        help="git revision to measure side by side (nflog latency, CPU); 'none' to skip")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline (default 3)")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    compared = args.baseline != "none" and args.only in (None, "latency", "cpu")
    if compared:
        compare_with(args.baseline, args)
    if args.only in (None, "latency"):
        if not compared:
            bench_latency("nflog", args.connections)
        bench_latency("poll", args.connections)
    if args.only in (None, "cpu") and not compared:
        bench_cpu(args.rate, args.seconds)
    if args.only in (None, "watch"):
        bench_watch(args.watch_sockets)


if __name__ == "__main__":
    main()
