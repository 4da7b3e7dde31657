"""The urllib3 integration against a real keep-alive server and a real DNS server."""

from __future__ import annotations

import io
import time

import pytest
import urllib3

import halfclose.client as hc
from clientlab import DnsServer, KeepAliveServer, wait_until


def test_pool_manager_factory() -> None:
    http = hc.pool_manager(network="lab", retries=False)
    assert isinstance(http, urllib3.PoolManager)
    assert http.guard.network == "lab"
    pool = http.connection_from_url("http://198.18.0.1:8080/")
    assert isinstance(pool, hc.GuardedHTTPConnectionPool)
    assert isinstance(http.connection_from_url("https://198.18.0.1/"), hc.GuardedHTTPSConnectionPool)


def test_race_get_is_retried_post_is_raised() -> None:
    with KeepAliveServer(idle_timeout=0.4, race=True) as server:
        plain = urllib3.PoolManager(retries=False)
        plain.request("GET", server.url())
        time.sleep(0.7)
        with pytest.raises(urllib3.exceptions.ProtocolError):
            plain.request("GET", server.url())

        http = hc.pool_manager(use_dns_cache=False, retries=False)
        http.request("GET", server.url())
        time.sleep(0.7)
        assert http.request("GET", server.url()).json()["method"] == "GET"
        assert http.guard.counts().retried_idempotent == 1

        http = hc.pool_manager(use_dns_cache=False, retries=False)
        http.request("POST", server.url(), body=b"x")
        time.sleep(0.7)
        with pytest.raises(urllib3.exceptions.ProtocolError, match="Remote end closed"):
            http.request("POST", server.url(), body=b"y")
        assert http.guard.counts().not_retried == 1


def test_retried_file_body_is_sent_again_from_its_start() -> None:
    body = bytes(range(256)) * 8
    with KeepAliveServer(idle_timeout=0.4, race=True) as server:
        http = hc.pool_manager(use_dns_cache=False, retries=False)
        http.request("PUT", server.url(), body=b"first")
        time.sleep(0.7)
        reply = http.request("PUT", server.url(), body=io.BytesIO(body),
                             headers={"Content-Length": str(len(body))})
        assert reply.json()["method"] == "PUT"
        assert http.guard.counts().retried_idempotent == 1
        assert server.served()[-1][2] == body


def test_dns_cache_and_host_header() -> None:
    with KeepAliveServer(idle_timeout=0.2) as server, \
            DnsServer(records={"img.lab.test": server.host}, ttl=1) as dns:
        http = hc.pool_manager(network="lab", nameservers=[dns.host], dns_port=dns.port)
        for i in range(3):
            assert http.request("GET", server.url(host="img.lab.test")).status == 200
            # closed by the watcher at the server's FIN (0.2 s idle), before the next request:
            # waited for, since the server's and the watcher's threads may run late
            wait_until(lambda i=i: http.guard.counts().closed_at_fin == i + 1)
        counts = http.guard.counts()
        assert (counts.new_connections, counts.closed_at_fin) == (3, 3)  # the last one too, while idle
        assert dns.total() == 2
        assert {h for _, h, _ in server.served()} == {f"img.lab.test:{server.port}"}


def test_unresolvable_name_is_a_name_resolution_error() -> None:
    with DnsServer(records={}, ttl=30) as dns:
        http = hc.pool_manager(nameservers=[dns.host], dns_port=dns.port, retries=False)
        with pytest.raises(urllib3.exceptions.NameResolutionError):
            http.request("GET", "http://missing.lab.test:9/")


def test_the_reuse_limit_cached_on_a_connection_follows_what_the_guard_learns() -> None:
    with KeepAliveServer(idle_timeout=5.0) as server:
        http = hc.pool_manager(use_dns_cache=False, retries=False)
        guard = http.guard
        for method in ("GET", "GET", "PUT"):
            http.request(method, server.url(), body=b"x" if method == "PUT" else None)
        (conn,) = [c for c in http.connection_from_url(server.url()).pool.queue if c is not None]
        w = conn.hc_watch
        # Nothing known of the server: the default 60 s less the 1 s margin, cached for this version.
        assert w is not None and (w.limit, w.limit_version) == (59.0, guard.timeouts_version)
        assert conn._hc.body is None and conn._hc.headers is None  # nothing of a request outlives it
        origin = conn.hc_origin
        guard.exchange_done(origin, reused=False, idle=None, keep_alive="timeout=1")  # learned: 1 s
        time.sleep(0.85)  # past 1 s less its 0.25 s margin: the cached 59 s no longer applies
        assert http.request("GET", server.url()).status == 200
        counts = guard.counts()
        assert (counts.retired_early, counts.reused, counts.new_connections) == (1, 2, 2)
        http.clear()
