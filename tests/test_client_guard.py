"""The guard: timeout sources, the decision before reuse on real sockets, retries, connecting, counters."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clientlab import random_loopback
from halfclose.client._dns import Answer, DnsCache, DnsError, RecordType
from halfclose.client._guard import Guard, Origin
from halfclose.client._policy import KeepAlivePolicy, RetryReason, TimeoutSource
from halfclose.client._profile import Profile
from halfclose.client._sockcheck import TCP_CLOSE_WAIT, read_tcp_info
from halfclose.errors import InputError

ORIGIN = Origin(scheme="http", host="img.lab.test", port=8080)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.socket()
    listener.bind((random_loopback(), 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def test_profile_forms(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"servers": {"img.lab.test": 7}}))
    for profile in (path, str(path), {"img.lab.test": 7}, Profile.from_mapping({"img.lab.test": 7})):
        timeout = Guard(profile=profile, use_dns_cache=False).idle_timeout(ORIGIN)
        assert timeout is not None and (timeout.seconds, timeout.source) == (7, TimeoutSource.PROFILE)
    with pytest.raises(InputError):
        Guard(profile=tmp_path / "missing.json")


def test_default_then_header_then_learned() -> None:
    g = Guard(use_dns_cache=False)
    t = g.idle_timeout(ORIGIN)
    assert t is not None and (t.seconds, t.source) == (60.0, TimeoutSource.DEFAULT)
    no_default = Guard(use_dns_cache=False, policy=KeepAlivePolicy(default_timeout=None))
    assert no_default.idle_timeout(ORIGIN) is None
    g.exchange_done(ORIGIN, reused=False, idle=None, keep_alive="timeout=5, max=100")
    t = g.idle_timeout(ORIGIN)
    assert t is not None and (t.seconds, t.source) == (5.0, TimeoutSource.HEADER)
    g.exchange_failed(ORIGIN, method="GET", idempotency_key=False, bytes_written=10, reused=True,
                      idle=3.0, response_started=False, replayable=True)
    t = g.idle_timeout(ORIGIN)
    assert t is not None and (t.seconds, t.source) == (3.0, TimeoutSource.LEARNED)


def test_may_reuse_idle_socket_until_the_margin(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    g = Guard(use_dns_cache=False, profile={"img.lab.test": 10})
    assert g.may_reuse(ORIGIN, client, idle=8.9)
    assert not g.may_reuse(ORIGIN, client, idle=9.0)
    c = g.counts()
    assert (c.retired_early, c.half_closed_skipped) == (1, 0)


def test_may_reuse_refuses_close_wait_and_learns_when(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    g = Guard(use_dns_cache=False)
    server.close()
    for _ in range(200):
        info = read_tcp_info(client)
        if info is not None and info.state == TCP_CLOSE_WAIT:
            break
        time.sleep(0.01)
    # Pretend the connection had been idle 5 s: the FIN came a few ms ago, so the server closed at ~5 s.
    assert not g.may_reuse(ORIGIN, client, idle=5.0)
    assert g.counts().half_closed_skipped == 1
    learned = g.learner.estimate(ORIGIN.key)
    assert learned is not None and 4.5 < learned <= 5.0


def test_exchange_failed_counts_retries_and_refusals() -> None:
    g = Guard(use_dns_cache=False)
    common = {"idempotency_key": False, "reused": True, "idle": 2.0, "response_started": False,
              "replayable": True}
    reason = g.exchange_failed(ORIGIN, method="GET", bytes_written=10, **common)
    assert reason is RetryReason.IDEMPOTENT_METHOD
    assert g.exchange_failed(ORIGIN, method="POST", bytes_written=0, **common) is RetryReason.NOTHING_WRITTEN
    assert g.exchange_failed(ORIGIN, method="POST", bytes_written=10, **common) is None
    c = g.counts()
    assert (c.retried_idempotent, c.retried_nothing_written, c.not_retried, c.retries) == (1, 1, 1, 2)
    assert c.as_dict()["not_retried"] == 1


def test_connect_goes_through_the_dns_cache_and_tries_each_address() -> None:
    listener = socket.socket()
    host = random_loopback()
    listener.bind((host, 0))
    listener.listen()
    port = listener.getsockname()[1]
    dead = socket.socket()
    dead.bind((random_loopback(), 0))  # bound, not listening: connecting is refused
    dead_host = dead.getsockname()[0]
    answers = {RecordType.A: Answer(addresses=(dead_host, host), ttl=300),
               RecordType.AAAA: Answer(addresses=(), ttl=300)}
    calls: list[str] = []

    def resolve(name: str, rtype: RecordType, timeout: float) -> Answer:
        calls.append(name)
        return answers[rtype]

    g = Guard(network="lab", dns=DnsCache(resolve=resolve))
    try:
        for _ in range(3):
            sock = g.connect("img.lab.test", port, timeout=5)
            assert sock.getpeername() == (host, port)
            sock.close()
        assert calls == ["img.lab.test", "img.lab.test"]  # A and AAAA once
        c = g.counts()
        assert (c.new_connections, c.dns_misses, c.dns_hits) == (3, 2, 4)
        answers[RecordType.A] = Answer(addresses=(), ttl=300)
        with pytest.raises(DnsError):
            g.connect("none.lab.test", port, timeout=5)
    finally:
        listener.close()
        dead.close()


def test_decisions_are_logged_at_debug(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = pair
    g = Guard(use_dns_cache=False, profile={"img.lab.test": 10})
    with caplog.at_level("DEBUG", logger="halfclose.client"):
        g.may_reuse(ORIGIN, client, idle=9.5)
        g.exchange_failed(ORIGIN, method="POST", idempotency_key=False, bytes_written=5, reused=True,
                          idle=9.5, response_started=False, replayable=True)
    text = caplog.text
    assert "retired (server idle timeout 10.000 s from profile" in text
    assert "not safe to repeat" in text


def test_profile_entries_by_address_apply_to_connections_to_that_address(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, _ = pair
    host, port = client.getpeername()[:2]
    g = Guard(use_dns_cache=False, profile={f"{host}:{port}": 4.0})
    origin = Origin(scheme="http", host="img.lab.test", port=port)
    assert g.may_reuse(origin, client, idle=2.9)
    assert not g.may_reuse(origin, client, idle=3.1)  # 4.0 - margin 1.0
    assert g.counts().retired_early == 1


def test_tallies_are_added_to_the_counters_and_kept_when_removed() -> None:
    g = Guard(use_dns_cache=False)
    n = {"reused": 2}

    def tally() -> dict[str, int]:
        return dict(n)

    g.add_tally(tally)
    g.exchange_done(ORIGIN, reused=True, idle=0.1, keep_alive=None)
    assert g.counts().reused == 3
    n["reused"] = 5
    assert g.counts().reused == 6
    g.remove_tally(tally)
    n["reused"] = 100
    assert g.counts().reused == 6
