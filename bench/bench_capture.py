"""Capture decoding speed and memory, side by side with tshark and tcptrace, in one run.

Usage::

    PYTHONPATH=src python bench/bench_capture.py [--packets 2000000] [--reps 3] [--tshark-reps 1]
        [--workdir bench/out] [--no-tshark]

Generates (once, cached in the work directory) a synthetic capture with bench/gen_capture.py,
then times, each as its own process with a warm page cache:

* ``cat`` (the I/O floor),
* halfclose: ``open_captures`` over the file, every batch decoded (process start, imports and
  loading the compiled kernels included), as pcap and as pcapng,
* ``tshark -T fields`` with seven fields, ``tshark -q -z conv,tcp``, ``tcptrace -n``,

and prints medians and ratios to halfclose. The compile time of the kernels on a cold cache is
measured once with an empty ``NUMBA_CACHE_DIR``. Memory: peak RSS of the halfclose reader on a
file and on one 10 times larger, printed as a ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
READ = (
    "import sys\n"
    "from halfclose.capture import open_captures\n"
    "n = 0\n"
    "with open_captures(sys.argv[1:]) as r:\n"
    "    for b in r:\n"
    "        n += len(b)\n"
    "print(n, r.stats.total.packets)\n"
)


def _gen(path: Path, packets: int, fmt: str) -> None:
    if path.exists():
        return
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, str(HERE / "gen_capture.py"), str(path), "--packets", str(packets), "--format", fmt],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    took = time.perf_counter() - t
    print(f"generated {path.name}: {packets} packets, {path.stat().st_size:,} bytes in {took:.1f} s")


def _run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one process."""
    with tempfile.NamedTemporaryFile("r") as tf:
        t = time.perf_counter()
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", tf.name, *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wall = time.perf_counter() - t
        rss = int(tf.read().strip().splitlines()[-1])
    return wall, rss


def _warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def _measure(name: str, argv: list[str], reps: int, path: Path, env: dict[str, str] | None = None) -> dict:
    walls, rss = [], []
    for _ in range(reps):
        _warm(path)
        w, r = _run(argv, env)
        walls.append(w)
        rss.append(r)
    row = {"name": name, "walls": walls, "median": statistics.median(walls), "rss_mb": max(rss) / 1024}
    print(f"  {name:<34} {', '.join(f'{w:.2f}' for w in walls):<22} median {row['median']:7.2f} s  "
          f"peak RSS {row['rss_mb']:7.0f} MB", flush=True)  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="capture decoding benchmark")
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tshark-reps", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=HERE / "out")
    ap.add_argument("--no-tshark", action="store_true")
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    pcap = a.workdir / f"bench_{a.packets}.pcap"
    pcapng = a.workdir / f"bench_{a.packets}.pcapng"
    small = a.workdir / f"bench_{a.packets // 10}.pcap"
    _gen(pcap, a.packets, "pcap")
    _gen(pcapng, a.packets, "pcapng")
    _gen(small, a.packets // 10, "pcap")
    py = [sys.executable, "-c", READ]

    # Cold compile once (empty cache dir), then warm the real cache.
    with tempfile.TemporaryDirectory() as cache:
        cold_env = dict(env, NUMBA_CACHE_DIR=cache)
        t = time.perf_counter()
        subprocess.run([*py, str(small)], check=True, env=cold_env, stdout=subprocess.DEVNULL)
        cold = time.perf_counter() - t
    subprocess.run([*py, str(small)], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*py, str(pcapng)], check=True, env=env, stdout=subprocess.DEVNULL)

    print(f"\nfile: {pcap} ({pcap.stat().st_size:,} bytes, {a.packets:,} packets); medians of {a.reps}")
    rows = [
        _measure("cat", ["cat", str(pcap)], a.reps, pcap),
        _measure("halfclose open_captures (pcap)", [*py, str(pcap)], a.reps, pcap, env),
        _measure("halfclose open_captures (pcapng)", [*py, str(pcapng)], a.reps, pcapng, env),
    ]
    if shutil.which("tcptrace"):
        rows.append(_measure("tcptrace -n", ["tcptrace", "-n", str(pcap)], a.reps, pcap))
    if shutil.which("tshark") and not a.no_tshark:
        rows.append(_measure("tshark -q -z conv,tcp", ["tshark", "-q", "-r", str(pcap), "-z", "conv,tcp"],
                             a.tshark_reps, pcap))  # fmt: skip
        names = ["frame.time_epoch", "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.len"]
        fields = [x for f in names for x in ("-e", f)]
        tshark_fields = ["tshark", "-r", str(pcap), "-T", "fields", *fields]
        rows.append(_measure("tshark -T fields (7 fields)", tshark_fields, a.tshark_reps, pcap))
    ours = rows[1]["median"]
    print(f"\nratios to halfclose (pcap, {ours:.2f} s; >1 means halfclose is faster):")
    for r in rows:
        print(f"  {r['name']:<34} {r['median'] / ours:8.2f}x")
    print(f"kernel compile on a cold cache (first run ever, {small.name}): {cold:.2f} s")

    _, s_rss = _run([*py, str(small)], env)
    _, b_rss = _run([*py, str(pcap)], env)
    print(
        f"\nmemory: peak RSS {s_rss / 1024:.0f} MB on {small.stat().st_size:,} bytes, "
        f"{b_rss / 1024:.0f} MB on {pcap.stat().st_size:,} bytes "
        f"(file x{pcap.stat().st_size / small.stat().st_size:.1f}, RSS x{b_rss / s_rss:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
