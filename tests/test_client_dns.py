"""The DNS cache: TTL floor and cap, refresh on use, RFC 8767 serve-stale (fake clock and resolver),
and the dnspython resolver function against a real DNS server on loopback."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clientlab import DnsServer, wait_until
from halfclose.client._dns import (
    Answer,
    DnsCache,
    DnsError,
    DnsPolicy,
    RecordType,
    dnspython_resolver,
    read_hosts,
)

A, AAAA = RecordType.A, RecordType.AAAA


def parked_in_query(threads: list[threading.Thread]) -> bool:
    """Whether every thread is blocked in a wait inside the cache's shared query: the leader in the
    resolver, the others on the leader's answer (read from the threads' stacks)."""
    frames = sys._current_frames()
    for t in threads:
        frame = frames.get(t.ident) if t.ident is not None else None
        if frame is None or frame.f_code.co_name != "wait":
            return False
        names = set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        if "_query" not in names:
            return False
    return True


@dataclass
class FakeResolver:
    """Answers from a table; ``failing`` makes every query fail; records every query."""

    answers: dict[tuple[str, RecordType], Answer]
    failing: bool = False
    calls: list[tuple[str, RecordType, float]] = field(default_factory=list)

    def __call__(self, name: str, rtype: RecordType, timeout: float) -> Answer:
        self.calls.append((name, rtype, timeout))
        if self.failing:
            raise DnsError(f"no answer for {name}")
        return self.answers.get((name, rtype), Answer(addresses=(), ttl=300))


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    ttl: float = 20, policy: DnsPolicy | None = None, spawned: list[Callable[[], None]] | None = None
) -> tuple[DnsCache, FakeResolver, Clock]:
    resolver = FakeResolver({
        ("img.lab.test", A): Answer(addresses=("198.18.0.10",), ttl=ttl),
        ("img.lab.test", AAAA): Answer(addresses=("fd00::10",), ttl=ttl),
    })
    clock = Clock()
    spawn = (lambda work: work()) if spawned is None else spawned.append
    cache = DnsCache(resolve=resolver, policy=policy or DnsPolicy(), clock=clock, spawn=spawn)
    return cache, resolver, clock


def test_ttl_floor_keeps_short_ttls_for_min_ttl() -> None:
    cache, resolver, clock = make(ttl=5)
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    clock.now += 50
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    assert len(resolver.calls) == 1
    clock.now += 11  # 61 s: past the 60 s floor
    cache.lookup("img.lab.test", A)
    assert len(resolver.calls) == 2
    c = cache.counts()
    assert (c.hits, c.misses) == (1, 2)


def test_ttl_cap_bounds_long_ttls() -> None:
    cache, resolver, clock = make(ttl=7 * 86400, policy=DnsPolicy(max_ttl=600, prefetch_min=0,
                                                                   prefetch_fraction=0))
    cache.lookup("img.lab.test", A)
    clock.now += 599
    cache.lookup("img.lab.test", A)
    assert len(resolver.calls) == 1
    clock.now += 2
    cache.lookup("img.lab.test", A)
    assert len(resolver.calls) == 2


def test_names_are_case_and_dot_insensitive_and_networks_are_separate() -> None:
    cache, resolver, _ = make()
    cache.lookup("img.lab.test", A, network="wifi")
    cache.lookup("IMG.lab.test.", A, network="wifi")
    assert len(resolver.calls) == 1
    cache.lookup("img.lab.test", A, network="cell")
    assert len(resolver.calls) == 2
    cache.flush("cell")
    cache.lookup("img.lab.test", A, network="wifi")
    cache.lookup("img.lab.test", A, network="cell")
    assert len(resolver.calls) == 3


def test_refresh_on_use_shortly_before_expiry_answers_from_cache() -> None:
    spawned: list[Callable[[], None]] = []
    cache, resolver, clock = make(ttl=100, spawned=spawned)  # lifetime 100, window 10 s
    cache.lookup("img.lab.test", A)
    clock.now += 89
    cache.lookup("img.lab.test", A)
    assert spawned == []
    clock.now += 2  # 91: in the last 10 %
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    assert len(spawned) == 1, "one refresh in flight per name, however many hits"
    assert len(resolver.calls) == 1, "the caller did not wait for the refresh"
    spawned.pop()()
    assert len(resolver.calls) == 2
    clock.now += 50  # past the old expiry, within the refreshed lifetime
    cache.lookup("img.lab.test", A)
    assert len(resolver.calls) == 2
    assert cache.counts().prefetches == 1


def test_expired_data_is_refreshed_first_and_served_stale_only_when_that_fails() -> None:
    cache, resolver, clock = make(ttl=60)
    cache.lookup("img.lab.test", A)
    clock.now += 61
    resolver.answers[("img.lab.test", A)] = Answer(addresses=("198.18.0.11",), ttl=60)
    assert cache.lookup("img.lab.test", A) == ("198.18.0.11",)  # refresh worked: new data
    assert resolver.calls[-1][2] == DnsPolicy().refresh_timeout
    clock.now += 61
    resolver.failing = True
    assert cache.lookup("img.lab.test", A) == ("198.18.0.11",)  # refresh failed: stale
    c = cache.counts()
    assert (c.stale, c.failures) == (1, 1)


def test_failed_refresh_is_retried_at_most_every_30_s() -> None:
    cache, resolver, clock = make(ttl=60)
    cache.lookup("img.lab.test", A)
    clock.now += 61
    resolver.failing = True
    cache.lookup("img.lab.test", A)
    calls = len(resolver.calls)
    for _ in range(5):
        clock.now += 5
        assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    assert len(resolver.calls) == calls, "no query within 30 s of a failure"
    clock.now += 6  # 31 s after the failure
    cache.lookup("img.lab.test", A)
    assert len(resolver.calls) == calls + 1
    assert cache.counts().stale == 7


def test_stale_data_is_served_for_at_most_max_stale() -> None:
    cache, resolver, clock = make(ttl=60)
    cache.lookup("img.lab.test", A)
    resolver.failing = True
    clock.now += 60 + 86400 - 1
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    clock.now += 2
    with pytest.raises(DnsError):
        cache.lookup("img.lab.test", A)


def test_ttl_zero_is_used_once_never_cached_never_stale() -> None:
    cache, resolver, _ = make(ttl=0)
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    assert len(resolver.calls) == 2
    resolver.failing = True
    with pytest.raises(DnsError):
        cache.lookup("img.lab.test", A)


def test_ttl_zero_answer_does_not_replace_good_data() -> None:
    cache, resolver, clock = make(ttl=60)
    cache.lookup("img.lab.test", A)
    clock.now += 61
    resolver.answers[("img.lab.test", A)] = Answer(addresses=("198.18.0.99",), ttl=0)
    assert cache.lookup("img.lab.test", A) == ("198.18.0.99",)
    resolver.failing = True
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)


def test_failed_background_refresh_keeps_good_data_and_its_expiry() -> None:
    spawned: list[Callable[[], None]] = []
    cache, resolver, clock = make(ttl=100, spawned=spawned)
    cache.lookup("img.lab.test", A)
    clock.now += 95
    resolver.failing = True
    cache.lookup("img.lab.test", A)
    spawned.pop()()
    assert cache.counts().failures == 1
    clock.now += 2
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    assert spawned == [], "no new refresh within 30 s of the failure"
    clock.now += 4  # 101: expired; failure 6 s ago: stale without a query
    calls = len(resolver.calls)
    assert cache.lookup("img.lab.test", A) == ("198.18.0.10",)
    assert len(resolver.calls) == calls
    assert cache.counts().stale == 1


def test_negative_answers_are_cached_and_empty_names_raise() -> None:
    cache, resolver, _ = make()
    resolver.answers[("v4only.lab.test", A)] = Answer(addresses=("198.18.0.12",), ttl=300)
    resolver.answers[("v4only.lab.test", AAAA)] = Answer(addresses=(), ttl=300)
    assert cache.addresses("v4only.lab.test") == ["198.18.0.12"]
    assert cache.addresses("v4only.lab.test") == ["198.18.0.12"]
    assert len(resolver.calls) == 2
    resolver.answers[("none.lab.test", A)] = Answer(addresses=(), ttl=300)
    with pytest.raises(DnsError, match="no A or AAAA"):
        cache.addresses("none.lab.test")


def test_addresses_order_and_literals() -> None:
    cache, resolver, _ = make()
    assert cache.addresses("img.lab.test") == ["198.18.0.10", "fd00::10"]
    assert cache.addresses("img.lab.test", prefer_ipv6=True) == ["fd00::10", "198.18.0.10"]
    calls = len(resolver.calls)
    assert cache.addresses("198.18.0.1") == ["198.18.0.1"]
    assert cache.addresses("[fd00::1]") == ["fd00::1"]
    assert len(resolver.calls) == calls


def test_eviction_drops_least_recently_used() -> None:
    cache, resolver, _ = make(policy=DnsPolicy(max_entries=2))
    for name in ("a.lab.test", "b.lab.test"):
        resolver.answers[(name, A)] = Answer(addresses=("198.18.0.1",), ttl=300)
        cache.lookup(name, A)
    cache.lookup("a.lab.test", A)
    resolver.answers[("c.lab.test", A)] = Answer(addresses=("198.18.0.3",), ttl=300)
    cache.lookup("c.lab.test", A)
    calls = len(resolver.calls)
    cache.lookup("a.lab.test", A)
    assert len(resolver.calls) == calls
    cache.lookup("b.lab.test", A)
    assert len(resolver.calls) == calls + 1


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="min_ttl"):
        DnsPolicy(min_ttl=100, max_ttl=10)
    with pytest.raises(ValueError, match="RFC 8767"):
        DnsPolicy(max_stale=4 * 86400)


def test_read_hosts(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost loop # comment\n::1 localhost\nbogus line\n")
    assert read_hosts(path) == {"localhost": ("127.0.0.1", "::1"), "loop": ("127.0.0.1",)}
    assert read_hosts(tmp_path / "missing") == {}


def test_dnspython_resolver_against_a_real_server() -> None:
    with DnsServer(records={"img.lab.test": "198.18.7.7"}, ttl=42) as server:
        resolve = dnspython_resolver([server.host], port=server.port)
        assert resolve("img.lab.test", A, 2.0) == Answer(addresses=("198.18.7.7",), ttl=42)
        nodata = resolve("img.lab.test", AAAA, 2.0)
        assert nodata == Answer(addresses=(), ttl=42)  # SOA TTL / MINIMUM (RFC 2308)
        assert resolve("nothing.lab.test", A, 2.0).addresses == ()
        server.failing = True
        with pytest.raises(DnsError, match=r"img\.lab\.test"):
            resolve("img.lab.test", A, 1.0)
        assert server.queries[("img.lab.test", "A")] >= 2


def test_cache_over_real_server_serves_stale_during_an_outage() -> None:
    clock = Clock()
    with DnsServer(records={"img.lab.test": "198.18.7.8"}, ttl=1) as server:
        cache = DnsCache(resolve=dnspython_resolver([server.host], port=server.port), clock=clock,
                         policy=DnsPolicy(refresh_timeout=0.5))
        assert cache.addresses("img.lab.test") == ["198.18.7.8"]
        clock.now += 61
        server.failing = True
        assert cache.addresses("img.lab.test") == ["198.18.7.8"]
        assert cache.counts().stale == 2  # the A entry and the (negative) AAAA entry


def test_system_configuration_is_read_and_its_absence_is_clear(tmp_path: Path) -> None:
    with DnsServer(records={"img.lab.test": "198.18.7.9"}, ttl=30) as server:
        conf = tmp_path / "resolv.conf"
        conf.write_text(f"nameserver {server.host}\n")
        # resolv.conf has no port: reach the test server by the resolver's port setting
        resolve = dnspython_resolver(resolv_conf=conf, port=server.port, hosts=[])
        assert resolve("img.lab.test", A, 2.0).addresses == ("198.18.7.9",)
    empty = tmp_path / "empty.conf"
    empty.write_text("# nothing\n")
    with pytest.raises(DnsError, match="pass nameservers"):
        dnspython_resolver(resolv_conf=empty)


def test_hosts_entries_are_answered_without_a_query() -> None:
    with DnsServer(records={}, ttl=30) as server:
        resolve = dnspython_resolver([server.host], port=server.port,
                                     hosts=[("printer.lan", ("192.0.2.5", "2001:db8::5"))])
        assert resolve("printer.lan", A, 1.0) == Answer(addresses=("192.0.2.5",), ttl=0)
        assert resolve("Printer.LAN.", AAAA, 1.0) == Answer(addresses=("2001:db8::5",), ttl=0)
        assert server.total() == 0


def test_a_and_aaaa_are_asked_side_by_side_on_a_miss() -> None:
    import threading

    barrier = threading.Barrier(2, timeout=5)
    answers = {A: Answer(addresses=("198.18.0.10",), ttl=300), AAAA: Answer(addresses=("fd00::10",), ttl=300)}

    def resolve(name: str, rtype: RecordType, timeout: float) -> Answer:
        try:
            barrier.wait()  # returns only when the other type's query is in flight too
        except threading.BrokenBarrierError as exc:
            raise DnsError("asked one after the other") from exc
        return answers[rtype]

    cache = DnsCache(resolve=resolve, clock=Clock())
    assert cache.addresses("img.lab.test") == ["198.18.0.10", "fd00::10"]
    assert cache.addresses("img.lab.test") == ["198.18.0.10", "fd00::10"]  # hits: no query at all
    assert cache.counts().hits == 2


def test_concurrent_misses_share_one_query() -> None:
    release = threading.Event()
    calls: list[RecordType] = []

    def resolve(name: str, rtype: RecordType, timeout: float) -> Answer:
        calls.append(rtype)
        release.wait(5)
        return Answer(addresses=("198.18.0.10",), ttl=300)

    cache = DnsCache(resolve=resolve, clock=Clock())
    got: list[tuple[str, ...]] = []
    threads = [threading.Thread(target=lambda: got.append(cache.lookup("img.lab.test", A)))
               for _ in range(5)]
    for t in threads:
        t.start()
    wait_until(lambda: parked_in_query(threads))  # every thread in the cache while the first query is in flight
    release.set()
    for t in threads:
        t.join(5)
    assert got == [("198.18.0.10",)] * 5
    assert calls == [A], "one query for five callers"
    assert cache.counts().misses == 5


def test_waiting_callers_share_a_failure_and_get_stale_data() -> None:
    release = threading.Event()
    cache, resolver, clock = make(ttl=60)
    cache.lookup("img.lab.test", A)
    clock.now += 61

    def failing(name: str, rtype: RecordType, timeout: float) -> Answer:
        resolver.calls.append((name, rtype, timeout))
        release.wait(5)
        raise DnsError("SERVFAIL")

    cache.resolve = failing
    got: list[tuple[str, ...]] = []
    threads = [threading.Thread(target=lambda: got.append(cache.lookup("img.lab.test", A)))
               for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: parked_in_query(threads))  # all waiting on the one refresh
    release.set()
    for t in threads:
        t.join(5)
    assert got == [("198.18.0.10",)] * 3
    assert len(resolver.calls) == 2  # the first lookup, then one failed refresh for three callers
    c = cache.counts()
    assert (c.stale, c.failures) == (3, 1)
