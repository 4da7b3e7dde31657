"""A set of captures written to a dataset: sequential, ``--jobs 2``, and ``--dask`` on a LocalCluster.

Usage::

    python bench/bench_fleet.py [--files 200] [--mb 10] [--rotations 10] [--reps 1] [--keep DIR]

Generates (bench/gen_capture.py) ``--files`` capture files of about ``--mb`` MB each: most are
single captures of different hosts, ``--rotations`` of them are rotating captures of 5 files
each (``tcpdump -C``). Warms the page cache, then times the command a user types,
``halfclose analyze DIR --dataset OUT -q``, three ways: sequential, ``--jobs 2``, and
``--dask ADDRESS`` on a ``distributed.LocalCluster`` of 2 worker processes (1 thread each)
started here. Prints wall times, speed-ups over the sequential run, the peak memory of every
worker (each set's worker and its peak RSS are in the run manifest) and of the command (as
``/usr/bin/time`` counts it: with ``--jobs`` its largest process, workers included; with
``--dask`` the client alone), and checks that the three datasets hold the same number of rows
per table. Modes are interleaved rep by rep; the machine is shared: read the ratios, and the
load average printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
#: Packets per MB of a generated capture (snap length 128), measured.
PACKETS_PER_MB = 7_500
TABLES = ("connections", "findings", "dns", "servers", "captures")


@dataclass(frozen=True)
class Mode:
    name: str
    wall_s: float
    command_rss_mb: float
    worker_rss_mb: dict[str, float]
    rows: dict[str, int]


def _generate(path: Path, packets: int, seed: int) -> None:
    subprocess.run([sys.executable, str(HERE / "gen_capture.py"), str(path), "--packets", str(packets),
                    "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    path.with_name(path.name + ".truth.json").unlink()


def build(root: Path, files: int, mb: int, rotations: int) -> int:
    """Write the capture files under *root*; return their total size."""
    hosts = root / "hosts"
    hosts.mkdir(parents=True)
    singles = files - 5 * rotations
    base = [hosts / f"host{i:03d}.pcap" for i in range(min(15, singles))]
    for i, p in enumerate(base):
        _generate(p, mb * PACKETS_PER_MB, seed=100 + i)
    for i in range(len(base), singles):
        shutil.copyfile(base[i % len(base)], hosts / f"host{i:03d}.pcap")
    for r in range(rotations):
        whole = root / f"whole{r}.pcap"
        _generate(whole, 5 * mb * PACKETS_PER_MB, seed=500 + r)
        folder = root / "edges" / f"edge{r:02d}"
        folder.mkdir(parents=True)
        subprocess.run(["tcpdump", "-Z", "root", "-r", str(whole), "-w", str(folder / "edge.pcap"), "-C",
                        str(mb)], check=True, capture_output=True)  # fmt: skip
        whole.unlink()
    return sum(p.stat().st_size for p in root.rglob("*.pcap*"))


def _warm(root: Path) -> None:
    for p in root.rglob("*.pcap*"):
        with p.open("rb") as fh:
            while fh.read(1 << 24):
                pass


def _rows(dataset: Path) -> tuple[dict[str, int], dict[str, float]]:
    rows: dict[str, int] = defaultdict(int)
    workers: dict[str, float] = {}
    for manifest in dataset.glob("runs/*/_run.json"):
        m = json.loads(manifest.read_text())
        for f in m["files"]:
            rows[f["table"]] += f["rows"]
        for s in m["sets"]:
            workers[s["worker"]] = max(workers.get(s["worker"], 0.0), s["peak_rss_kb"] / 1024)
    return dict(rows), workers


def run_mode(name: str, inputs: Path, out: Path, extra: list[str]) -> Mode:
    dataset = out / name
    env = dict(os.environ, PYTHONPATH=str(SRC))
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        start = time.perf_counter()
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", tf.name, sys.executable, "-m", "halfclose", "analyze", str(inputs),
             "--dataset", str(dataset), "-q", *extra],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wall = time.perf_counter() - start
        rss = int(tf.read().split()[-1]) / 1024
    rows, workers = _rows(dataset)
    shutil.rmtree(dataset)
    return Mode(name=name, wall_s=wall, command_rss_mb=rss, worker_rss_mb=workers, rows=rows)


def _median(modes: list[Mode]) -> Mode:
    mid = sorted(modes, key=lambda m: m.wall_s)[len(modes) // 2]
    return Mode(name=mid.name, wall_s=statistics.median(m.wall_s for m in modes), command_rss_mb=mid.command_rss_mb,
                worker_rss_mb=mid.worker_rss_mb, rows=mid.rows)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--rotations", type=int, default=10)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="build the captures here (reused when it exists)")
    args = ap.parse_args(argv)
    from distributed import LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="halfclose-bench-fleet-"))
    inputs = args.keep or (tmp / "inputs")
    try:
        if not inputs.exists():
            t = time.perf_counter()
            size = build(inputs, args.files, args.mb, args.rotations)
            print(f"generated {args.files} files, {size / 1e9:.2f} GB, in {time.perf_counter() - t:.0f} s")
        else:
            size = sum(p.stat().st_size for p in inputs.rglob("*.pcap*"))
        n_files = sum(1 for _ in inputs.rglob("*.pcap*"))
        os.sync()  # the generated files' write-back would otherwise compete with the first run
        _warm(inputs)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, memory_limit=0) as cluster:  # fmt: skip
            plans = [("sequential", []), ("--jobs 2", ["--jobs", "2"]),
                     ("--dask (LocalCluster, 2 workers)", ["--dask", cluster.scheduler_address])]  # fmt: skip
            load = os.getloadavg()[0]
            runs: dict[str, list[Mode]] = defaultdict(list)
            for _ in range(args.reps):  # modes interleaved, so that others' load falls on each alike
                for name, extra in plans:
                    runs[name].append(run_mode(name, inputs, tmp, extra))
            results = [_median(runs[name]) for name, _ in plans]
            print(f"load average (1 min) before: {load:.1f}, after: {os.getloadavg()[0]:.1f}")
        base = results[0]
        print(f"\n{n_files} capture files, {size / 1e9:.2f} GB, {base.rows.get('captures', 0)} capture sets, "
              f"{base.rows.get('connections', 0)} connections; median of {args.reps}")  # fmt: skip
        print(f"{'mode':36} {'wall':>8} {'speed-up':>9} {'command RSS':>12}  peak RSS per worker")
        for m in results:
            per = ", ".join(f"{v:.0f} MB" for _, v in sorted(m.worker_rss_mb.items()))
            print(f"{m.name:36} {m.wall_s:7.1f}s {base.wall_s / m.wall_s:8.2f}x {m.command_rss_mb:9.0f} MB  "
                  f"{len(m.worker_rss_mb)} worker(s): {per}")  # fmt: skip
        same = all(m.rows == base.rows for m in results)
        print(f"rows per table equal in the three datasets: {same} ({base.rows})")
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
