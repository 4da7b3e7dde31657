"""What the client guard changes, on real TCP on loopback: errors, connections, wasted writes, cost.

    PYTHONPATH=src python bench/bench_client.py [--requests 16] [--timeout 1.0] [--seed 1]
    PYTHONPATH=src python bench/bench_client.py --warm [--warm-requests 200] [--rounds 25]

``--warm`` measures the guard's extra cost instead: requests per second of each guarded client
(requests, httpx, urllib3, aiohttp) beside the plain one on one warm keep-alive connection to a
local HTTP/1.1 server (a separate process), in alternating blocks (ABBA order): the median block
of each and their ratio, the median of each round's guarded/plain ratio ("paired": neighbouring
blocks saw the same load), the client's CPU time per request, and the machine's load average
before and after (target: at most 5 % slower; the figures mean little on a busy machine).

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
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")  # one segment
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer((sys.argv[1], 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def warm(requests_per_round: int, rounds: int) -> None:
    """Plain and guarded clients alternate in blocks; the median block of each is compared.

    Wall time gives requests per second (server included, as a user sees it); the client
    process's CPU time per request (its threads included) is less disturbed by other load.
    """
    import statistics
    import subprocess

    host = "127.0.0.1"
    server = subprocess.Popen([sys.executable, "-c", _SERVER, host], stdout=subprocess.PIPE, text=True)
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
        print(f"warm connection, {rounds} blocks of {requests_per_round} GETs each, plain and guarded "
              "alternating; medians")
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        print(f"{'library':9} {'plain req/s':>12} {'guarded req/s':>14} {'ratio':>6} {'paired':>7}   "
              f"{'plain cpu us/req':>16} {'guarded cpu us/req':>18} {'ratio':>6}")
        for name, plain, guarded in pairs:
            rate: dict[str, list[float]] = {"plain": [], "guarded": []}
            cpu: dict[str, list[float]] = {"plain": [], "guarded": []}
            loop = asyncio.new_event_loop() if name == "aiohttp" else None
            run = _runner(loop, url)
            clients = {"plain": run.make(plain), "guarded": run.make(guarded)}
            for client in clients.values():
                run.block(client, 50)  # open the connection, warm the caches
            for i in range(rounds):
                order = list(clients.items()) if i % 2 == 0 else list(clients.items())[::-1]
                for kind, client in order:  # ABBAAB...: neither goes first every time
                    t0, c0 = time.perf_counter(), time.process_time()
                    run.block(client, requests_per_round)
                    t1, c1 = time.perf_counter(), time.process_time()
                    rate[kind].append(requests_per_round / (t1 - t0))
                    cpu[kind].append((c1 - c0) / requests_per_round * 1e6)
            for client in clients.values():
                run.close(client)
            if loop is not None:
                loop.close()
            r = {k: statistics.median(v) for k, v in rate.items()}
            c = {k: statistics.median(v) for k, v in cpu.items()}
            # Each round's guarded block against its neighbouring plain block: both saw the same load.
            paired = statistics.median(g / p for g, p in zip(rate["guarded"], rate["plain"], strict=True))
            print(f"{name:9} {r['plain']:>12.0f} {r['guarded']:>14.0f} {r['guarded'] / r['plain']:>6.3f} "
                  f"{paired:>7.3f}   {c['plain']:>16.1f} {c['guarded']:>18.1f} {c['guarded'] / c['plain']:>6.3f}")
        print("load average after:  {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    finally:
        server.terminate()
        server.wait()


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
    parser.add_argument("--warm-requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    if args.warm:
        warm(args.warm_requests, args.rounds)
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
