"""Side-by-side speed and memory: tshark ``-z conv,tcp``, tcptrace and ``halfclose analyze``.

Usage::

    python bench/bench_analyze.py [--packets 2000000] [--capture FILE] [--reps 3] [--scale 4]

Generates a capture with bench/gen_capture.py (unless ``--capture`` names one), warms the page
cache, runs each tool ``--reps`` times under ``/usr/bin/time`` on the same file, and prints the
median wall time and peak RSS of each, with the ratios. ``--scale N`` also generates a capture N
times larger and compares halfclose's peak memory on the two (bounded memory means the ratio
stays well below N). Wall times on a shared machine vary: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float  # user + system: less disturbed than wall time by other work on the machine
    rss_mb: float


def _time(argv: list[str], env: dict[str, str] | None = None) -> Run:
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        subprocess.run(
            ["/usr/bin/time", "-f", "%e %U %S %M", "-o", tf.name, *argv],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True,
        )
        wall, user, system, rss = tf.read().split()[-4:]
    return Run(wall_s=float(wall), cpu_s=float(user) + float(system), rss_mb=int(rss) / 1024)


def _median(runs: list[Run]) -> Run:
    return Run(
        wall_s=statistics.median(r.wall_s for r in runs),
        cpu_s=statistics.median(r.cpu_s for r in runs),
        rss_mb=statistics.median(r.rss_mb for r in runs),
    )


def _generate(path: Path, packets: int) -> None:
    gen = HERE / "gen_capture.py"
    if not gen.exists():
        sys.exit(f"{gen} is missing: give a capture with --capture FILE")
    subprocess.run([sys.executable, str(gen), str(path), "--packets", str(packets)], check=True,
                   stdout=subprocess.DEVNULL)


def _warm(path: Path) -> None:
    with path.open("rb") as fh:
        while fh.read(1 << 24):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--capture", type=Path, help="use this capture instead of generating one")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scale", type=int, default=0, help="also compare memory on an N times larger capture")
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    hc = [sys.executable, "-m", "halfclose", "analyze", "-q"]
    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-"))
    try:
        cap = args.capture
        if cap is None:
            cap = tmp / "bench.pcap"
            print(f"generating {args.packets} packets ...", flush=True)
            _generate(cap, args.packets)
        _warm(cap)
        # one untimed run so that compiled kernels are cached on disk, as in normal use
        subprocess.run([*hc, str(cap)], env=env, check=True, stdout=subprocess.DEVNULL)
        tools: dict[str, list[str]] = {
            "tshark -q -z conv,tcp": ["tshark", "-n", "-r", str(cap), "-q", "-z", "conv,tcp"],
            "tcptrace -n": ["tcptrace", "-n", str(cap)],
            "halfclose analyze": [*hc, str(cap)],
        }
        results: dict[str, Run] = {}
        for name, cmd in tools.items():
            if shutil.which(cmd[0]) is None and cmd[0] != sys.executable:
                print(f"{name}: not installed, skipped")
                continue
            runs = [_time(cmd, env) for _ in range(args.reps)]
            results[name] = _median(runs)
            walls = ", ".join(f"{r.wall_s:.2f}" for r in runs)
            r = results[name]
            print(f"{name:24s} median wall {r.wall_s:6.2f} s  cpu {r.cpu_s:6.2f} s  peak RSS {r.rss_mb:6.0f} MB"
                  f"  (walls {walls})", flush=True)
        ours = results["halfclose analyze"]
        print(f"\ncapture: {cap} ({cap.stat().st_size / 1e6:.0f} MB)")
        for name, r in results.items():
            if name != "halfclose analyze":
                print(f"{name}: {r.wall_s / ours.wall_s:.1f}x the wall time of halfclose analyze, "
                      f"{r.cpu_s / ours.cpu_s:.1f}x its CPU time, {r.rss_mb / ours.rss_mb:.2f}x its peak memory")
        if args.scale > 1:
            big = tmp / "bench_big.pcap"
            n = args.packets * args.scale
            print(f"\ngenerating {n} packets for the memory comparison ...", flush=True)
            _generate(big, n)
            _warm(big)
            rb = _time([*hc, str(big)], env)
            print(f"halfclose analyze on {args.scale}x the packets: {rb.wall_s:.2f} s, peak RSS "
                  f"{rb.rss_mb:.0f} MB = {rb.rss_mb / ours.rss_mb:.2f}x the memory of 1x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
