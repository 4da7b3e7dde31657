"""What the client guard changes, on real TCP on loopback: errors, connections, wasted writes.

    PYTHONPATH=src python bench/bench_client.py [--requests 16] [--timeout 1.0] [--seed 1]

A keep-alive server (tests/clientlab.py) closes idle connections after ``--timeout`` seconds,
once with FIN on its idle timer ("idle") and once in race mode ("race": a request arriving on a
connection idle past the timeout is read, then the connection is closed unanswered). Each client
sends the same GET sequence with idle gaps drawn between 0 and twice the timeout. Reported per
client: requests that raised, TCP connections the server accepted, requests the server read and
dropped (wasted writes), and the guard's counters.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
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
