"""The aiohttp integration against a real keep-alive server and a real DNS server."""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import time
import typing
from pathlib import Path

import aiohttp
import pytest

import halfclose.client as hc
from clientlab import Capture, DnsServer, KeepAliveServer, async_wait_until, wait_until
from halfclose.proc import run


def test_dns_through_the_guards_cache_and_name_in_host() -> None:
    async def scenario(server: KeepAliveServer, dns: DnsServer) -> hc.GuardCounts:
        async with hc.aiohttp_session(network="lab", nameservers=[dns.host], dns_port=dns.port) as s:
            assert isinstance(s.connector, hc.GuardedConnector)
            for i in range(3):
                async with s.get(server.url(host="img.lab.test")) as r:
                    assert r.status == 200
                # each on a new connection: the server's 0.2 s idle timer has closed this one (its
                # FIN is out) before the next request, however late the server's thread runs
                await async_wait_until(lambda i=i: server.closed_ends()["timer"] == i + 1)
            return s.connector.guard.counts()

    with KeepAliveServer(idle_timeout=0.2) as server, \
            DnsServer(records={"img.lab.test": server.host}, ttl=1) as dns:
        counts = asyncio.run(scenario(server, dns))
        assert {h for _, h, _ in server.served()} == {f"img.lab.test:{server.port}"}
    assert dns.total() == 2  # A and AAAA once: the 60 s floor covers the 1 s TTL
    assert (counts.new_connections, counts.dns_misses, counts.dns_hits) == (3, 2, 4)


def test_keep_alive_header_retires_before_the_server() -> None:
    async def scenario(url: str) -> tuple[list[int], hc.GuardCounts]:
        async with hc.aiohttp_session(use_dns_cache=False) as s:
            conns = []
            for gap in (0.3, 1.6, 0):
                async with s.get(url) as r:
                    conns.append((await r.json())["conn"])
                await asyncio.sleep(gap)
            return conns, s.connector.guard.counts()

    with KeepAliveServer(idle_timeout=2.0, keep_alive_header=2.0) as server:
        conns, counts = asyncio.run(scenario(server.url()))
    assert conns[0] == conns[1] != conns[2]
    assert (counts.reused, counts.retired_early) == (1, 1)


def test_the_retirement_timer_closes_a_pooled_connection_before_the_server_does() -> None:
    async def scenario(server: KeepAliveServer) -> tuple[hc.GuardCounts, typing.Counter[str | None]]:
        async with hc.aiohttp_session(use_dns_cache=False) as s:
            async with s.get(server.url()) as r:
                await r.read()
            for _ in range(300):  # retired at 0.9 s idle (timeout=1.2, margin 0.3 s); no request needed
                if s.connector.guard.counts().retired_early:
                    break
                await asyncio.sleep(0.01)
            for _ in range(300):  # the server's record of how the connection ended
                if server.ends():
                    break
                await asyncio.sleep(0.01)
            ends = server.ends()
            async with s.get(server.url()) as r:
                assert (await r.json())["conn"] == 2
            return s.connector.guard.counts(), ends

    with KeepAliveServer(idle_timeout=1.2, keep_alive_header=1.2) as server:
        counts, ends = asyncio.run(scenario(server))
    assert ends == {"client": 1}  # the client's FIN first: the server's timer never fired
    assert (counts.retired_early, counts.reused, counts.new_connections) == (1, 0, 2)


def test_a_connection_pooled_again_is_retired_at_its_new_deadline() -> None:
    # One timer per connection: set at the first pooling, it fires while the connection sits in the
    # pool again since the second response, and waits for that pooling's deadline.
    async def scenario(server: KeepAliveServer) -> tuple[hc.GuardCounts, float, list[int]]:
        async with hc.aiohttp_session(use_dns_cache=False) as s:
            conns = []
            for gap in (0.5, 0.0):
                async with s.get(server.url()) as r:
                    conns.append((await r.json())["conn"])
                await asyncio.sleep(gap)
            # The second pooling's own time (the guard's clock, time.monotonic), not a reading taken
            # after it: a pause between the two would make the timer look early.
            (record,) = s.connector._hc_conns.values()
            assert record.since is not None
            pooled_again = record.since
            for _ in range(300):
                if s.connector.guard.counts().retired_early:
                    break
                await asyncio.sleep(0.01)
            return s.connector.guard.counts(), time.monotonic() - pooled_again, conns

    with KeepAliveServer(idle_timeout=1.2, keep_alive_header=1.2) as server:
        counts, waited, conns = asyncio.run(scenario(server))
        wait_until(lambda: bool(server.ends()), limit=3.0)  # the server's loop has read the FIN
        assert server.ends() == {"client": 1}
    assert conns == [1, 1]
    assert (counts.retired_early, counts.reused) == (1, 1)
    assert 0.85 <= waited < 1.2  # 0.9 s after the second pooling (timeout 1.2 s less 0.3 s), not 0.4 s


def test_idempotency_key_post_is_sent_again_and_a_plain_post_is_not() -> None:
    policy = hc.KeepAlivePolicy(min_learned_timeout=10)  # learn nothing: only the retry rule acts

    async def scenario(url: str) -> hc.GuardCounts:
        async with hc.aiohttp_session(use_dns_cache=False, policy=policy) as s:
            async with s.post(url, data=b"a") as r:
                await r.read()
            await asyncio.sleep(0.7)
            async with s.post(url, data=b"b", headers={"Idempotency-Key": "k"}) as r:
                assert (await r.json())["method"] == "POST"
            await asyncio.sleep(0.7)
            with pytest.raises(aiohttp.ServerDisconnectedError):
                async with s.post(url, data=b"c") as r:
                    await r.read()
            return s.connector.guard.counts()

    with KeepAliveServer(idle_timeout=0.4, race=True) as server:
        counts = asyncio.run(scenario(server.url()))
        assert [b for _, _, b in server.served()] == [b"a", b"b"]
    assert (counts.retried_idempotency_key, counts.not_retried) == (1, 1)


def test_the_private_release_seam_is_the_one_the_connector_overrides() -> None:
    # GuardedConnector._release notes when a connection goes back to the pool (pinned aiohttp range).
    params = inspect.signature(aiohttp.BaseConnector._release).parameters
    assert list(params) == ["self", "key", "protocol", "should_close"]
    assert params["should_close"].kind is inspect.Parameter.KEYWORD_ONLY

    async def scenario(url: str) -> tuple[float | None, float | None]:
        async with hc.aiohttp_session(use_dns_cache=False) as s:
            assert isinstance(s.connector, hc.GuardedConnector)
            async with s.get(url) as r:
                await r.read()
            records = list(s.connector._hc_conns.values())
            assert len(records) == 1
            first = records[0].since
            async with s.get(url) as r:
                await r.read()
            return first, records[0].since

    with KeepAliveServer(idle_timeout=2.0) as server:
        first, second = asyncio.run(scenario(server.url()))
    assert first is not None and second is not None and second > first  # noted at each return to the pool


def test_reuses_are_counted_and_learned_at_the_return_to_the_pool_and_kept_after_close() -> None:
    async def scenario(url: str) -> tuple[list[float | None], hc.GuardCounts, hc.GuardCounts]:
        async with hc.aiohttp_session(use_dns_cache=False) as s:
            assert isinstance(s.connector, hc.GuardedConnector)
            guard = s.connector.guard
            key = next(iter(guard.learner._bounds), None)
            lowers: list[float | None] = []
            # the last reuse is decided inline (nothing learned since the one before), and teaches
            for gap in (0, 0.3, 0.05, 0.5):
                await asyncio.sleep(gap)
                async with s.get(url) as r:
                    await r.read()
                key = next(iter(guard.learner._bounds), key)
                lowers.append(guard.learner.bounds(key).lower if key is not None else None)
            inside = guard.counts()
        return lowers, inside, guard.counts()

    with KeepAliveServer(idle_timeout=2.0) as server:
        lowers, inside, after = asyncio.run(scenario(server.url()))
    assert lowers[0] is None  # a new connection teaches nothing
    assert lowers[1] is not None and lowers[1] >= 0.3 and lowers[2] == lowers[1]
    assert lowers[3] is not None and lowers[3] >= 0.5
    assert inside.reused == after.reused == 3  # counted without the lock, added at counts() and at close


def test_a_connector_is_refused() -> None:
    async def scenario() -> None:
        with pytest.raises(TypeError, match="connector= would not be guarded"):
            hc.aiohttp_session(connector=aiohttp.TCPConnector())

    asyncio.run(scenario())


def _lab_run(tmp_path: Path, client: str) -> dict[str, typing.Any]:
    out = tmp_path / f"{client}.json"
    halfclose = Path(sys.executable).with_name("halfclose")
    run([str(halfclose), "lab", "run", "--client", client, "--rtt", "20", "--requests", "5", "--gap", "3",
         "--idle-timeout", "2", "--out", str(tmp_path / client), "--json", str(out)], timeout=300)
    data: dict[str, typing.Any] = json.loads(out.read_text())
    return data


@pytest.mark.root
def test_lab_guard_aiohttp_against_plain_aiohttp(tmp_path: Path) -> None:
    """The lab's guard-aiohttp client: no payload after a server FIN, fewer DNS queries, no errors.

    15 s of requests: longer than plain aiohttp's own 10 s DNS cache, shorter than the guard's floor.
    """
    plain, guarded = _lab_run(tmp_path, "aiohttp"), _lab_run(tmp_path, "guard-aiohttp")
    for result in (plain, guarded):
        assert all(r["ok"] for r in result["requests"]) and len(result["requests"]) == 5
    wire = Capture(Path(guarded["pcap"]), host=guarded["server_address"], port=80)  # tshark, not the analysis
    assert wire.server_closed_first() >= 2, "the server's idle timer did fire"
    assert wire.payload_after_server_fin() == 0
    assert guarded["wire"]["stale_writes"] == 0
    assert guarded["wire"]["dns_queries"] < plain["wire"]["dns_queries"]
