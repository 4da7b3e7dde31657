"""The httpx integration against a real keep-alive server and a real DNS server."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import halfclose.client as hc
from clientlab import DnsServer, KeepAliveServer


def test_factory_returns_an_httpx_client() -> None:
    with hc.httpx_client(network="lab") as client:
        assert isinstance(client, httpx.Client)
        assert isinstance(client._transport, hc.GuardedTransport)
        assert client.guard.network == "lab"


def test_race_plain_httpx_fails_guarded_get_succeeds_post_is_not_retried() -> None:
    with KeepAliveServer(idle_timeout=0.4, race=True) as server:
        with httpx.Client() as plain:
            plain.get(server.url())
            time.sleep(0.7)
            with pytest.raises(httpx.RemoteProtocolError):
                plain.get(server.url())

        with hc.httpx_client(use_dns_cache=False) as client:
            client.get(server.url())
            time.sleep(0.7)
            assert client.get(server.url()).json()["method"] == "GET"
            assert client.counts().retried_idempotent == 1

        with hc.httpx_client(use_dns_cache=False) as client:
            client.post(server.url(), content=b"a=1")
            time.sleep(0.7)
            with pytest.raises(httpx.RemoteProtocolError):
                client.post(server.url(), content=b"a=2")
            c = client.counts()
            assert (c.retries, c.not_retried) == (0, 1)

        with hc.httpx_client(use_dns_cache=False) as client:
            client.post(server.url(), content=b"a=3")
            time.sleep(0.7)
            reply = client.post(server.url(), content=b"a=4", headers={"Idempotency-Key": "a4"})
            assert reply.json()["method"] == "POST"
            assert client.counts().retried_idempotency_key == 1
        assert server.served()[-1] == ("POST", f"{server.host}:{server.port}", b"a=4")


@pytest.mark.parametrize("close_at_fin", [True, False])
def test_half_closed_connection_is_skipped_and_its_timeout_learned(close_at_fin: bool) -> None:
    with KeepAliveServer(idle_timeout=0.6) as server, \
            hc.httpx_client(use_dns_cache=False, close_at_fin=close_at_fin) as client:
        first = client.get(server.url()).json()["conn"]
        time.sleep(0.9)
        second = client.get(server.url()).json()["conn"]
        assert first != second
        counts = client.counts()
        # closed by the watcher when the FIN arrived, or else found closed at checkout
        assert (counts.closed_at_fin, counts.half_closed_skipped) == ((1, 0) if close_at_fin else (0, 1))
        origin = hc.Origin(scheme="http", host=server.host, port=server.port)
        learned = client.guard.idle_timeout(origin)
        assert learned is not None and learned.source is hc.TimeoutSource.LEARNED
        assert 0.5 < learned.seconds < 0.7


def test_keep_alive_header_retires_early_and_reuse_works_before_it() -> None:
    with KeepAliveServer(idle_timeout=2.0, keep_alive_header=2.0) as server:
        with hc.httpx_client(use_dns_cache=False) as client:
            a = client.get(server.url()).json()["conn"]
            time.sleep(0.3)
            b = client.get(server.url()).json()["conn"]
            time.sleep(1.6)  # past 2.0 - margin (0.5), before 2.0
            c = client.get(server.url()).json()["conn"]
            counts = client.counts()
        assert a == b != c
        assert (counts.reused, counts.retired_early) == (1, 1)
        deadline = time.monotonic() + 5
        while server.ends()["client"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.ends()["timer"] == 0


def test_connections_go_to_the_cached_address_with_the_name_in_host() -> None:
    with KeepAliveServer(idle_timeout=0.2) as server, \
            DnsServer(records={"img.lab.test": server.host}, ttl=1) as dns:
        with hc.httpx_client(network="lab", nameservers=[dns.host], dns_port=dns.port) as client:
            for _ in range(3):
                client.get(server.url(host="img.lab.test")).raise_for_status()
                time.sleep(0.35)  # each request on a new connection
            counts = client.counts()
        assert counts.new_connections == 3
        assert dns.total() == 2
        assert (counts.dns_misses, counts.dns_hits) == (2, 4)
        assert {h for _, h, _ in server.served()} == {f"img.lab.test:{server.port}"}


def test_unresolvable_name_is_a_connect_error() -> None:
    with DnsServer(records={}, ttl=30) as dns, \
            hc.httpx_client(nameservers=[dns.host], dns_port=dns.port) as client, \
            pytest.raises(httpx.ConnectError, match="no A or AAAA"):
        client.get("http://missing.lab.test:9/")


def test_async_client_race_and_half_close() -> None:
    async def scenario(race_url: str, idle_url: str) -> tuple[hc.GuardCounts, hc.GuardCounts]:
        async with hc.async_httpx_client(use_dns_cache=False) as client:
            await client.get(race_url)
            await asyncio.sleep(0.7)
            assert (await client.get(race_url)).json()["method"] == "GET"
            await asyncio.sleep(0.7)  # learned from the race: retired before it, no error
            assert (await client.post(race_url, content=b"p")).json()["method"] == "POST"
            race = client.counts()
        async with hc.async_httpx_client(use_dns_cache=False) as client:
            await client.post(race_url, content=b"p")
            await asyncio.sleep(0.7)
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(race_url, content=b"q")
            assert client.counts().not_retried == 1
        async with hc.async_httpx_client(use_dns_cache=False) as client:
            await client.get(idle_url)
            await asyncio.sleep(0.7)
            await client.get(idle_url)
            idle = client.counts()
        return race, idle

    with KeepAliveServer(idle_timeout=0.4, race=True) as racer, KeepAliveServer(idle_timeout=0.4) as idler:
        race, idle = asyncio.run(scenario(racer.url(), idler.url()))
    assert (race.retried_idempotent, race.retired_early, race.not_retried) == (1, 1, 0)
    assert (idle.closed_at_fin, idle.half_closed_skipped, idle.new_connections) == (1, 0, 2)


def test_async_client_resolves_through_the_cache() -> None:
    async def fetch(url: str, dns: DnsServer) -> hc.GuardCounts:
        async with hc.async_httpx_client(nameservers=[dns.host], dns_port=dns.port) as client:
            for _ in range(2):
                (await client.get(url)).raise_for_status()
                await asyncio.sleep(0.35)
            return client.counts()

    with KeepAliveServer(idle_timeout=0.2) as server, \
            DnsServer(records={"img.lab.test": server.host}, ttl=1) as dns:
        counts = asyncio.run(fetch(server.url(host="img.lab.test"), dns))
    assert (counts.new_connections, counts.dns_misses, counts.dns_hits) == (2, 2, 2)
    assert dns.total() == 2


def test_retry_goes_to_a_new_connection_not_another_idle_one() -> None:
    policy = hc.KeepAlivePolicy(min_learned_timeout=10)  # learn nothing: only the retry rule acts
    with KeepAliveServer(idle_timeout=0.4, race=True) as server, \
            hc.httpx_client(use_dns_cache=False, policy=policy) as client:
        with client.stream("GET", server.url()) as r1, client.stream("GET", server.url()) as r2:
            r1.read()
            r2.read()
        assert client.counts().new_connections == 2
        time.sleep(0.7)  # both idle connections are now past the server's timeout
        assert client.get(server.url()).status_code == 200
        counts = client.counts()
    assert (counts.retried_idempotent, counts.new_connections) == (1, 3)
    assert server.ends()["race"] == 1, "the retry did not go to the other stale connection"


def test_factory_splits_guard_options_from_client_options() -> None:
    with hc.httpx_client(network="lab", prefer_ipv6=True, timeout=3.5, headers={"X-App": "1"}) as client:
        assert client.guard.prefer_ipv6 and client.guard.network == "lab"
        assert client.timeout.read == 3.5
        assert client.headers["X-App"] == "1"
    shared = hc.Guard()
    with pytest.raises(TypeError, match="prefer_ipv6 given together with guard="):
        hc.httpx_client(guard=shared, prefer_ipv6=True)
