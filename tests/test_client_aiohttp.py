"""The aiohttp integration against a real keep-alive server and a real DNS server."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

import halfclose.client as hc
from clientlab import DnsServer, KeepAliveServer


def test_dns_through_the_guards_cache_and_name_in_host() -> None:
    async def scenario(url: str, dns: DnsServer) -> hc.GuardCounts:
        async with hc.aiohttp_session(network="lab", nameservers=[dns.host], dns_port=dns.port) as s:
            assert isinstance(s.connector, hc.GuardedConnector)
            for _ in range(3):
                async with s.get(url) as r:
                    assert r.status == 200
                await asyncio.sleep(0.35)  # each on a new connection (server idle timeout 0.2 s)
            return s.connector.guard.counts()

    with KeepAliveServer(idle_timeout=0.2) as server, \
            DnsServer(records={"img.lab.test": server.host}, ttl=1) as dns:
        counts = asyncio.run(scenario(server.url(host="img.lab.test"), dns))
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


def test_a_connector_is_refused() -> None:
    async def scenario() -> None:
        with pytest.raises(TypeError, match="connector= would not be guarded"):
            hc.aiohttp_session(connector=aiohttp.TCPConnector())

    asyncio.run(scenario())
