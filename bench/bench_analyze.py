"""Side-by-side speed and memory of ``halfclose analyze`` against tcptrace and tshark ``-z conv,tcp``.

Usage::

    python bench/bench_analyze.py [--packets 2000000] [--capture FILE] [--reps 5] [--scale 10]
        [--big-dir /var/tmp] [--cold] [--baseline REV] [--json FILE]

One run measures every figure of the targets, on the command a user types
(``halfclose analyze CAPTURE --json OUT``, the terminal summary going to a file):

* on the generated capture (bench/gen_capture.py, 2,000,000 packets by default): wall time
  (median of ``--reps``), CPU time and peak memory of halfclose, ``tcptrace -n`` and
  ``tshark -n -q -z conv,tcp``, with the ratios (targets: tcptrace at least 2x halfclose's wall
  time, tshark at least 20x, halfclose's peak memory at most tcptrace's);
* on a capture ``--scale`` times larger with the same connections (longer ones), generated
  under ``--big-dir`` and deleted afterwards: halfclose's peak memory over the first one's
  (target: at most 1.2);
* on a capture of about 1 KB: halfclose's whole process (target: under 0.35 s and 100 MB),
  tshark's beside it;
* with ``--baseline REV``: ``halfclose analyze`` of git revision REV (its ``src/`` taken with
  ``git archive``) on the same capture, in runs alternating with this tree's, and the ratios
  (target: this tree at most 5 % slower than the revision it changes);
* with ``--cold``: the first run after a fresh clone and its ``./scripts/setup`` (an empty
  ``NUMBA_CACHE_DIR``: the kernels setup compiled ahead of time are all it has; without them,
  numba's JIT compiles them in this run).

Peak memory is the maximum resident set size of the process as ``/usr/bin/time`` reports it
(halfclose runs in one process: its reading thread included). Wall times on a shared machine vary
with its load (printed before and after): read the ratios, measured side by side, and the CPU times.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))

from gen_capture import GeneratorConfig, connections_for  # noqa: E402


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
        )  # fmt: skip
        wall, user, system, rss = tf.read().split()[-4:]
    return Run(wall_s=float(wall), cpu_s=float(user) + float(system), rss_mb=int(rss) / 1024)


def _median(runs: list[Run]) -> Run:
    return Run(
        wall_s=statistics.median(r.wall_s for r in runs),
        cpu_s=statistics.median(r.cpu_s for r in runs),
        rss_mb=statistics.median(r.rss_mb for r in runs),
    )


def _generate(path: Path, packets: int, connections: int = 0) -> dict[str, object]:
    argv = [sys.executable, str(HERE / "gen_capture.py"), str(path), "--packets", str(packets)]
    if connections:
        argv += ["--connections", str(connections)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return dict(json.loads(Path(str(path) + ".truth.json").read_text()))


def _tiny(path: Path) -> None:
    """A capture of about 1 KB: one short connection and its DNS lookup."""
    subprocess.run([sys.executable, str(HERE / "gen_capture.py"), str(path), "--packets", "8"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def _warm(path: Path) -> None:
    with path.open("rb") as fh:
        while fh.read(1 << 24):
            pass


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _row(name: str, runs: list[Run]) -> Run:
    r = _median(runs)
    walls = ", ".join(f"{x.wall_s:.2f}" for x in runs)
    print(f"  {name:26s} wall {r.wall_s:6.2f} s  cpu {r.cpu_s:6.2f} s  peak RSS {r.rss_mb:6.0f} MB  (walls {walls})",
          flush=True)  # fmt: skip
    return r


def _verdict(ok: bool) -> str:
    return "holds" if ok else "DOES NOT HOLD"


def _baseline(
    rev: str, cap: Path, *, tmp: Path, hc: Callable[[Path], list[str]], env: dict[str, str], reps: int
) -> dict[str, object]:
    """This tree against revision *rev* on *cap*, runs alternating: medians and ratios."""
    base = tmp / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "src"], check=True,
                             stdout=subprocess.PIPE).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    # the kernels this tree's setup compiled ahead of time, as a checkout of REV has after its
    # setup: they load only where REV's kernel sources are the same (their digest), else REV's
    # run compiles its own with the JIT (cached by the untimed run below)
    for built in (SRC / "halfclose" / "capture").glob("_aot*"):
        shutil.copy2(built, base / "src" / "halfclose" / "capture" / built.name)
    base_env = dict(env, PYTHONPATH=str(base / "src"))
    subprocess.run(hc(cap), env=base_env, check=True, stdout=subprocess.DEVNULL)  # its kernels cached
    now: list[Run] = []
    then: list[Run] = []
    for i in range(reps):
        pair = [(now, env), (then, base_env)]
        for runs, e in pair if i % 2 == 0 else pair[::-1]:
            runs.append(_time(hc(cap), e))
    print(f"\nthis tree against {rev}, {reps} alternating runs each; load average {_load()}")
    b = _row(f"halfclose at {rev}", then)
    n = _row("halfclose, this tree", now)
    wall, cpu = n.wall_s / b.wall_s, n.cpu_s / b.cpu_s
    print(f"  this tree / {rev}: wall {wall:.3f}x, cpu {cpu:.3f}x, peak RSS {n.rss_mb / b.rss_mb:.3f}x"
          f"  (at most 1.05: {_verdict(cpu <= 1.05)}, on CPU time)")  # fmt: skip
    return {"rev": rev, "then": asdict(b), "now": asdict(n), "wall_ratio": wall, "cpu_ratio": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--capture", type=Path, help="use this capture instead of generating one (no --scale then)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scale", type=int, default=10, help="also measure memory on an N times larger capture (0: no)")
    ap.add_argument("--big-dir", type=Path, default=Path("/var/tmp"), help="where the large capture is written")
    ap.add_argument("--cold", action="store_true", help="also time a first run without cached compiled kernels")
    ap.add_argument("--baseline", metavar="REV", help="also time halfclose of git revision REV, alternating")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    # As a user's Python does: bytecode cached beside the sources (an environment that forbids
    # it makes every run compile halfclose's modules from source again, about 0.1 s of CPU).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-"))
    out_json = tmp / "out.json"

    def hc(capture: Path) -> list[str]:
        return [sys.executable, "-m", "halfclose", "analyze", str(capture), "--json", str(out_json)]

    figures: dict[str, object] = {"load_before": _load(), "reps": args.reps}
    big: Path | None = None
    try:
        cap = args.capture
        if cap is None:
            cap = tmp / "bench.pcap"
            print(f"generating {args.packets} packets ...", flush=True)
            figures["capture_truth"] = _generate(cap, args.packets)
        _warm(cap)
        # one untimed run so that compiled kernels are cached on disk, as in normal use
        subprocess.run(hc(cap), env=env, check=True, stdout=subprocess.DEVNULL)
        size_mb = cap.stat().st_size / 1e6
        conns = json.loads(out_json.read_text())["summary"]["tcp_connections"]
        print(f"\n{cap.name}: {size_mb:.0f} MB, {conns} TCP connections; load average {_load()}")
        tools: dict[str, list[str]] = {
            "tshark -q -z conv,tcp": ["tshark", "-n", "-r", str(cap), "-q", "-z", "conv,tcp"],
            "tcptrace -n": ["tcptrace", "-n", str(cap)],
            "halfclose analyze --json": hc(cap),
        }
        res: dict[str, Run] = {}
        for name, cmd in tools.items():
            if cmd[0] != sys.executable and shutil.which(cmd[0]) is None:
                print(f"  {name}: not installed, skipped")
                continue
            res[name] = _row(name, [_time(cmd, env) for _ in range(args.reps)])
        ours = res["halfclose analyze --json"]
        figures["base"] = {"capture_mb": size_mb, "connections": conns, **{k: asdict(v) for k, v in res.items()}}
        print("\n  target                                         measured   verdict")
        if (tt := res.get("tcptrace -n")) is not None:
            speed = tt.wall_s / ours.wall_s
            mem = ours.rss_mb / tt.rss_mb
            print(f"  tcptrace wall / halfclose wall >= 2             {speed:8.2f}x  {_verdict(speed >= 2)}"
                  f"  (CPU: {tt.cpu_s / ours.cpu_s:.2f}x)")  # fmt: skip
            print(f"  halfclose peak RSS / tcptrace's <= 1            {mem:8.2f}   {_verdict(mem <= 1)}")
            figures["tcptrace_speedup"], figures["rss_vs_tcptrace"] = speed, mem
        if (ts := res.get("tshark -q -z conv,tcp")) is not None:
            speed = ts.wall_s / ours.wall_s
            print(f"  tshark wall / halfclose wall >= 20              {speed:8.2f}x  {_verdict(speed >= 20)}"
                  f"  (CPU: {ts.cpu_s / ours.cpu_s:.2f}x)")  # fmt: skip
            figures["tshark_speedup"] = speed

        if args.baseline:
            figures["baseline"] = _baseline(args.baseline, cap, tmp=tmp, hc=hc, env=env, reps=args.reps)

        if args.scale > 1 and args.capture is None:
            n = args.packets * args.scale
            need = cap.stat().st_size * args.scale * 1.1 + 2e9
            free = shutil.disk_usage(args.big_dir).free
            if free < need:
                print(f"\n{args.big_dir}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed: the {n}-packet capture "
                      "is skipped")  # fmt: skip
            else:
                big = Path(tempfile.mkdtemp(prefix="hc-bench-big-", dir=args.big_dir)) / "big.pcap"
                same = connections_for(GeneratorConfig(packets=args.packets))
                print(f"\ngenerating {n} packets with the same {same} connections started ...", flush=True)
                figures["big_truth"] = _generate(big, n, connections=same)
                _warm(big)
                big_mb = big.stat().st_size / 1e6
                rb = _time(hc(big), env)
                big_conns = json.loads(out_json.read_text())["summary"]["tcp_connections"]
                ratio = rb.rss_mb / ours.rss_mb
                print(f"{big.name}: {big_mb:.0f} MB, {big_conns} TCP connections; load average {_load()}")
                _row(f"halfclose, {args.scale}x the packets", [rb])
                print(f"  peak RSS {args.scale}x / 1x <= 1.2 {'':20s}{ratio:8.2f}   {_verdict(ratio <= 1.2)}")
                figures["big"] = {"capture_mb": big_mb, "connections": big_conns, "halfclose": asdict(rb),
                                  "rss_ratio": ratio}  # fmt: skip
                shutil.rmtree(big.parent, ignore_errors=True)
                big = None

        tiny = tmp / "tiny.pcap"
        _tiny(tiny)
        print(f"\n{tiny.name}: {tiny.stat().st_size} bytes; load average {_load()}")
        small = {"halfclose analyze --json": hc(tiny),
                 "tshark -q -z conv,tcp": ["tshark", "-n", "-r", str(tiny), "-q", "-z", "conv,tcp"]}  # fmt: skip
        tiny_res = {name: _row(name, [_time(cmd, env) for _ in range(args.reps)]) for name, cmd in small.items()
                    if cmd[0] == sys.executable or shutil.which(cmd[0])}  # fmt: skip
        t = tiny_res["halfclose analyze --json"]
        print(f"  halfclose wall < 0.35 s                         {t.wall_s:8.2f} s {_verdict(t.wall_s < 0.35)}")
        print(f"  halfclose peak RSS < 100 MB                     {t.rss_mb:8.0f}MB {_verdict(t.rss_mb < 100)}")
        figures["tiny"] = {k: asdict(v) for k, v in tiny_res.items()}

        if args.cold:
            check = [sys.executable, "-m", "halfclose.kernelbuild", "--check"]
            aot_built = subprocess.run(check, env=env, check=False).returncode == 0
            cache = tmp / "numba-cache"
            cache.mkdir()
            rc = _time(hc(cap), dict(env, NUMBA_CACHE_DIR=str(cache)))
            print(f"\nfirst run without cached JIT kernels (a fresh clone after ./scripts/setup) on {cap.name}: "
                  f"wall {rc.wall_s:.1f} s, cpu {rc.cpu_s:.1f} s, peak RSS {rc.rss_mb:.0f} MB (kernels: "
                  f"{'built ahead of time' if aot_built else 'compiled by the JIT in this run'})")
            figures["cold"] = asdict(rc)
        figures["load_after"] = _load()
        print(f"\nload average before {figures['load_before']}, after {figures['load_after']} (2 cores)")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if big is not None:
            shutil.rmtree(big.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
