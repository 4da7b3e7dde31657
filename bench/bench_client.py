"""What the client guard changes, on real TCP on loopback: errors, connections, wasted writes, cost.

    PYTHONPATH=src python bench/bench_client.py [--requests 16] [--timeout 1.0] [--seed 1]
    PYTHONPATH=src python bench/bench_client.py --warm [--warm-requests 200] [--rounds 40]
        [--warmup-rounds 3] [--order abba|random] [--json FILE] [--control]

``--warm`` measures the guard's extra cost instead: requests per second of each guarded client
(requests, httpx, urllib3, aiohttp) beside the plain one, each on its own warm keep-alive
connection to one local single-threaded HTTP/1.1 server (another process). Per client, rounds of
one plain and one guarded block of GETs (ABBA order by default); each round gives the guarded/plain
ratio of its two neighbouring blocks (they saw the same load), and the median of those ratios is
reported with a distribution-free 95 % confidence interval (order statistics), for requests per
second and for the client process's CPU time per request (its threads included), the second figure
being less disturbed by other load. The target (guarded at most 5 % slower) holds when the whole
interval is at or above 0.95, does not hold when it is below, and is undecided otherwise. Warm-up
rounds are run first and never counted; no block is left out. ``--json`` writes every figure
(each block's wall and CPU time included). ``--control`` puts a second plain client where the guarded
one is: its ratios show the bench's own bias and noise (they should be 1).

A keep-alive server (tests/clientlab.py) closes idle connections after ``--timeout`` seconds,
once with FIN on its idle timer ("idle") and once in race mode ("race": a request arriving on a
connection idle past the timeout is read, then the connection is closed unanswered). Each client
sends the same GET sequence with idle gaps drawn between 0 and twice the timeout. Reported per
client: requests that raised, TCP connections the server accepted, requests the server read and
dropped (wasted writes), and the guard's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import aiohttp
import httpx
import requests

import halfclose.client as hc
from clientlab import KeepAliveServer


def run_client(name: str, make: Callable[[], Any], url: str, gaps: list[float]) -> dict[str, Any]:
    client = make()
    errors = 0
    for gap in gaps:
        try:
            client.get(url).raise_for_status()
        except (requests.RequestException, httpx.HTTPError):
            errors += 1
        time.sleep(gap)
    counts = client.counts().as_dict() if hasattr(client, "counts") else {}
    client.close()
    return {"client": name, "errors": errors, "counts": counts}


_SERVER = """
import asyncio, sys
RESPONSE = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok"
class Responder(asyncio.Protocol):  # GETs only: one response per request head, one segment each
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        buffer = self.buffer + data
        heads = buffer.count(b"\\r\\n\\r\\n")
        if heads:
            self.transport.write(RESPONSE * heads)
            buffer = buffer[buffer.rindex(b"\\r\\n\\r\\n") + 4:]
        self.buffer = buffer
async def main():
    server = await asyncio.get_running_loop().create_server(Responder, sys.argv[1], 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

#: The target: a guarded client at most 5 % slower than the plain one (requests per second).
TARGET = 0.95


def median_ci(values: list[float], *, level: float = 0.95) -> tuple[float, float, float]:
    """The median of *values* and a distribution-free confidence interval for it.

    The interval is the pair of order statistics ``x(k), x(n+1-k)`` with the largest *k* such that
    P(Binomial(n, 1/2) < k) <= (1 - level) / 2: it holds the true median with probability at least
    *level* whatever the distribution of the values, provided they are independent draws.

    Example:
        >>> median_ci([float(i) for i in range(1, 41)])
        (20.5, 14.0, 27.0)
    """
    import math
    import statistics

    xs = sorted(values)
    n = len(xs)
    tail, k, cumulative = (1 - level) / 2, 0, 0.0
    while k < n // 2:  # cumulative = P(B <= k - 1) for B ~ Binomial(n, 1/2)
        nxt = cumulative + math.comb(n, k) / 2**n
        if nxt > tail:
            break
        cumulative, k = nxt, k + 1
    if k == 0:  # too few values for an interval at this level
        return statistics.median(xs), -math.inf, math.inf
    return statistics.median(xs), xs[k - 1], xs[n - k]


def verdict(low: float, high: float, *, target: float = TARGET) -> str:
    """The target by the interval of guarded/plain requests per second: held, missed, or not decided."""
    if low >= target:
        return "holds"
    if high < target:
        return "does not hold"
    return "undecided"


def warm(
    per_block: int, rounds: int, *, warmup: int, order: str, seed: int, json_path: str | None,
    control: bool = False,
) -> None:
    """Plain and guarded clients alternate in short blocks on their warm connections; each round
    gives one guarded/plain ratio of neighbouring blocks, and the median of those is reported.

    Wall time gives requests per second (the server's share included, as a user sees it); the
    client process's CPU time (its threads included: the guard's FIN watcher too) per request is
    the second figure, less disturbed by other load. Nothing is picked after the fact: every
    measured round counts, the warm-up rounds (declared here) never do.
    """
    import json
    import platform
    import subprocess
    import tempfile

    host = "127.0.0.1"
    # One single-threaded server for both clients: both connections are served by the same thread
    # (a server thread per connection gives each client a scheduler history of its own).
    server = subprocess.Popen([sys.executable, "-c", _SERVER, host], stdout=subprocess.PIPE, text=True)
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    try:
        assert server.stdout is not None
        url = f"http://{host}:{server.stdout.readline().strip()}/"
        pairs: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
            ("requests", requests.Session, lambda: hc.session(use_dns_cache=False)),
            ("httpx", httpx.Client, lambda: hc.httpx_client(use_dns_cache=False)),
            ("urllib3", lambda: __import__("urllib3").PoolManager(),
             lambda: hc.pool_manager(use_dns_cache=False)),
            ("aiohttp", aiohttp.ClientSession, lambda: hc.aiohttp_session(use_dns_cache=False)),
        ]
        if control:  # the bench's own bias and noise: the "guarded" side is a second plain client
            pairs = [(name, plain, plain) for name, plain, _ in pairs]
            print("control: plain against plain (the ratios should be 1)")
        load_before = os.getloadavg()
        print(f"warm connection to a local HTTP/1.1 server (one thread, another process): per client, "
              f"{rounds} rounds of {per_block} GETs plain and {per_block} guarded ({order} order), after "
              f"{warmup} warm-up rounds not counted")
        print("each round: guarded/plain of its two blocks; median over the rounds [95 % interval]")
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*load_before))
        print(f"{'library':9} {'plain req/s':>11} {'guarded':>8} {'rate ratio [95 %]':>22}   "
              f"{'cpu us/req plain':>16} {'guarded':>8} {'cpu ratio [95 %]':>21}   target: rate / cpu")
        for name, plain, guarded in pairs:
            r = _measure(name, plain, guarded, url, per_block=per_block, rounds=rounds, warmup=warmup,
                         order=order, rng=rng)
            results.append(r)
            rate, cpu = r["rate_ratio"], r["cpu_ratio"]
            print(f"{name:9} {r['plain']['rate']:>11.0f} {r['guarded']['rate']:>8.0f} "
                  f"{rate['median']:>7.3f} [{rate['low']:.3f}, {rate['high']:.3f}]   "
                  f"{r['plain']['cpu_us']:>16.1f} {r['guarded']['cpu_us']:>8.1f} "
                  f"{cpu['median']:>6.3f} [{cpu['low']:.3f}, {cpu['high']:.3f}]   "
                  f"{r['verdict']} / {r['cpu_verdict']}")
        load_after = os.getloadavg()
        print("load average after:  {:.2f} {:.2f} {:.2f}".format(*load_after))
        print(f"(target: guarded at most 5 % slower; rate: the interval of guarded/plain requests per "
              f"second at or above {TARGET}; cpu: the interval of guarded/plain client CPU per request "
              f"at or below {1 / TARGET:.3f}; undecided: the interval spans the limit, the machine's "
              f"noise is larger than what is measured)")
    finally:
        server.terminate()
        server.wait()
    if json_path is not None:
        doc = {
            "bench": "bench_client.py --warm",
            "target_rate_ratio": TARGET,
            "control": control, "per_block": per_block, "rounds": rounds, "warmup_rounds": warmup,
            "order": order, "seed": seed,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "versions": {m.__name__: getattr(m, "__version__", "?") for m in (requests, httpx, aiohttp)},
            "load_average_before": list(load_before), "load_average_after": list(load_after),
            "clients": results,
        }
        target = Path(json_path)
        with tempfile.NamedTemporaryFile("w", dir=target.parent or ".", prefix=f".{target.name}.",
                                         delete=False) as out:
            json.dump(doc, out, indent=1)
            out.write("\n")
        os.replace(out.name, target)
        print(f"all figures: {target}")


def _measure(
    name: str,
    plain: Callable[[], Any],
    guarded: Callable[[], Any],
    url: str,
    *,
    per_block: int,
    rounds: int,
    warmup: int,
    order: str,
    rng: random.Random,
) -> dict[str, Any]:
    """Rounds of one plain and one guarded block each; the per-block figures and their summary."""
    import gc
    import statistics

    loop = asyncio.new_event_loop() if name == "aiohttp" else None
    run = _runner(loop, url)
    clients = {"plain": run.make(plain), "guarded": run.make(guarded)}
    blocks: list[dict[str, Any]] = []
    try:
        for i in range(-warmup, rounds):
            if i == 0:
                gc.collect()  # what the warm-up left behind is not collected in a measured block
            if order == "random":
                kinds = rng.sample(["plain", "guarded"], 2)
            else:  # ABBA: each kind goes first in every other round, and runs twice in a row at a switch
                kinds = ["plain", "guarded"] if (i + warmup) % 2 == 0 else ["guarded", "plain"]
            for position, kind in enumerate(kinds):
                t0, c0, h0 = time.perf_counter(), time.process_time(), time.thread_time()
                run.block(clients[kind], per_block)
                t1, c1, h1 = time.perf_counter(), time.process_time(), time.thread_time()
                if i >= 0:
                    blocks.append({"round": i, "position": position, "kind": kind, "wall_s": t1 - t0,
                                   "cpu_s": c1 - c0, "thread_cpu_s": h1 - h0})
    finally:
        for client in clients.values():
            run.close(client)
        if loop is not None:
            loop.close()
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for b in blocks:
        by_round.setdefault(b["round"], {})[b["kind"]] = b
    # guarded/plain per round: requests per second, and CPU per request
    rate_ratios = [r["plain"]["wall_s"] / r["guarded"]["wall_s"] for r in by_round.values()]
    cpu_ratios = [r["guarded"]["cpu_s"] / r["plain"]["cpu_s"] for r in by_round.values()]
    rate = dict(zip(("median", "low", "high"), median_ci(rate_ratios), strict=True))
    cpu = dict(zip(("median", "low", "high"), median_ci(cpu_ratios), strict=True))

    def side(kind: str) -> dict[str, float]:
        mine = [b for b in blocks if b["kind"] == kind]
        return {"rate": statistics.median(per_block / b["wall_s"] for b in mine),
                "cpu_us": statistics.median(b["cpu_s"] / per_block * 1e6 for b in mine),
                "thread_cpu_us": statistics.median(b["thread_cpu_s"] / per_block * 1e6 for b in mine)}

    return {"client": name, "plain": side("plain"), "guarded": side("guarded"),
            "rate_ratio": rate, "cpu_ratio": cpu, "verdict": verdict(rate["low"], rate["high"]),
            "cpu_verdict": verdict(1 / cpu["high"], 1 / cpu["low"]),
            "rate_ratios": rate_ratios, "cpu_ratios": cpu_ratios, "blocks": blocks}


class _runner:
    """Blocks of GETs through a blocking client, or through an aiohttp session on *loop*."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None, url: str) -> None:
        self.loop, self.url = loop, url

    def make(self, factory: Callable[[], Any]) -> Any:
        if self.loop is None:
            return factory()

        async def inside() -> Any:  # aiohttp sessions are made inside their loop
            return factory()

        return self.loop.run_until_complete(inside())

    def block(self, client: Any, n: int) -> None:
        if self.loop is None:
            for _ in range(n):
                _get(client, self.url)
            return

        async def gets() -> None:
            for _ in range(n):
                async with client.get(self.url) as r:
                    await r.read()

        self.loop.run_until_complete(gets())

    def close(self, client: Any) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(client.close())
        else:
            (client.clear if hasattr(client, "clear") else client.close)()


def _get(client: Any, url: str) -> bytes:
    if hasattr(client, "request") and not hasattr(client, "get"):
        return bytes(client.request("GET", url).data)
    return bytes(client.get(url).content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warm", action="store_true", help="measure the guard's cost on a warm connection")
    parser.add_argument("--warm-requests", type=int, default=200, help="GETs per block (--warm)")
    parser.add_argument("--rounds", type=int, default=40, help="measured rounds per client (--warm)")
    parser.add_argument("--warmup-rounds", type=int, default=3, help="rounds run first and not counted (--warm)")
    parser.add_argument("--order", choices=("abba", "random"), default="abba",
                        help="which block of a round goes first (--warm; random: drawn with --seed)")
    parser.add_argument("--json", metavar="FILE", help="write every figure of --warm to FILE")
    parser.add_argument("--control", action="store_true",
                        help="--warm with a second plain client in place of the guarded one (the bench's own bias)")
    args = parser.parse_args()
    if args.warm:
        if args.rounds < 6 or args.warm_requests < 1 or args.warmup_rounds < 0:
            parser.error("--warm needs --rounds of 6 or more (for a 95 % interval), --warm-requests of 1 "
                         "or more, and --warmup-rounds of 0 or more")
        warm(args.warm_requests, args.rounds, warmup=args.warmup_rounds, order=args.order, seed=args.seed,
             json_path=args.json, control=args.control)
        return
    rng = random.Random(args.seed)
    gaps = [rng.uniform(0, 2 * args.timeout) for _ in range(args.requests)]
    clients: list[tuple[str, Callable[[], Any]]] = [
        ("requests", requests.Session),
        ("guard-requests", lambda: hc.session(use_dns_cache=False)),
        ("httpx", httpx.Client),
        ("guard-httpx", lambda: hc.httpx_client(use_dns_cache=False)),
    ]
    print(f"{args.requests} GETs, idle gaps uniform in [0, {2 * args.timeout:g}] s, "
          f"server idle timeout {args.timeout:g} s")
    print(f"{'mode':5} {'client':15} {'errors':>6} {'conns':>5} {'dropped':>7}  guard counters")
    for mode in ("idle", "race"):
        for name, make in clients:
            with KeepAliveServer(idle_timeout=args.timeout, race=mode == "race") as server:
                result = run_client(name, make, server.url(), gaps)
                time.sleep(0.1)
                conns = len(server.conns)
                dropped = server.ends()["race"]
            c = result["counts"]
            shown = {k: v for k, v in c.items() if v and not k.startswith("dns")}
            print(f"{mode:5} {name:15} {result['errors']:>6} {conns:>5} {dropped:>7}  {shown}")


if __name__ == "__main__":
    main()
