"""Run inside a network namespace: guarded GETs and POSTs, each on a new connection, to a server
listening with TCP Fast Open on loopback, under tcpdump; prints the guard's counters as JSON.

    python tests/tfo_probe.py PCAP N [--no-fast-open] [--httpx | --async-httpx [--tls]]

``--tls``: the server speaks TLS (a throwaway self-signed certificate, not verified: what is
looked at is the SYN), so the ClientHello is what a SYN carries.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import halfclose.client as hc
from clientlab import Capture, KeepAliveServer, async_wait_until, make_certificate, server_tls, wait_until


def main(argv: list[str]) -> int:
    pcap, n = Path(argv[1]), int(argv[2])
    fast_open = "--no-fast-open" not in argv
    tls = None
    if "--tls" in argv:
        tls = server_tls(*make_certificate(Path(tempfile.mkdtemp()), "tfo.lab.test"))
    with KeepAliveServer(idle_timeout=0.1, fast_open=True, tls=tls) as server, \
            Capture(pcap, host=server.host, port=server.port):
        if "--async-httpx" in argv:
            statuses, counts = asyncio.run(_async(server, n, fast_open))
            time.sleep(0.1)
            print(json.dumps({"statuses": statuses, "counts": counts.as_dict()}))
            return 0
        s: hc.GuardedSession | hc.GuardedClient
        if "--httpx" in argv:
            s = hc.httpx_client(use_dns_cache=False, fast_open=fast_open)
        else:
            s = hc.session(use_dns_cache=False, fast_open=fast_open)
        statuses = []
        for i in range(n):
            statuses.append(s.get(server.url()).status_code)
            # the server closes at 0.1 s idle: the next request opens a new connection (its close
            # waited for, since the server's thread may run late)
            wait_until(lambda i=i: server.closed_ends()["timer"] == i + 1)
        statuses.append(s.post(server.url(), content=b"x").status_code if isinstance(s, hc.GuardedClient)
                        else s.post(server.url(), data=b"x").status_code)  # not replay-safe: no SYN data
        s.close()
        time.sleep(0.1)
    print(json.dumps({"statuses": statuses, "counts": s.counts().as_dict()}))
    return 0


async def _async(server: KeepAliveServer, n: int, fast_open: bool) -> tuple[list[int], hc.GuardCounts]:
    async with hc.async_httpx_client(use_dns_cache=False, fast_open=fast_open, verify=False) as client:
        statuses = []
        for i in range(n):
            statuses.append((await client.get(server.url())).status_code)
            await async_wait_until(lambda i=i: server.closed_ends()["timer"] == i + 1)
        statuses.append((await client.post(server.url(), content=b"x")).status_code)
    return statuses, client.counts()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
