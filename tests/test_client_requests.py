"""The requests integration against a real keep-alive server (and tcpdump + tshark as the oracle)."""

from __future__ import annotations

import http.client
import json
import sys
import time
from pathlib import Path

import pytest
import requests

import halfclose.client as hc
from clientlab import Capture, DnsServer, KeepAliveServer, make_certificate, server_tls, wait_until
from halfclose.netns import Claim
from halfclose.proc import run

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def test_session_factory_returns_a_requests_session() -> None:
    s = hc.session(network="lab", profile={"img.lab.test": 2})
    assert isinstance(s, requests.Session)
    assert isinstance(s.get_adapter("http://x/"), hc.GuardedAdapter)
    assert isinstance(s.get_adapter("https://x/"), hc.GuardedAdapter)
    assert s.guard.network == "lab"
    shared = hc.Guard(network="x")
    assert hc.session(guard=shared).guard is shared


@pytest.mark.root
def test_guard_writes_nothing_after_the_server_fin(tmp_path: Path) -> None:
    with KeepAliveServer(idle_timeout=0.5) as server:
        # Control: http.client reuses the connection blindly and writes into CLOSE_WAIT.
        with Capture(tmp_path / "plain.pcap", host=server.host, port=server.port) as plain:
            conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
            conn.request("GET", "/")
            conn.getresponse().read()
            wait_until(lambda: server.closed_ends()["timer"] == 1)  # the server's FIN (0.5 s idle) is out
            with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
                conn.request("GET", "/")
                conn.getresponse().read()
            conn.close()
        assert plain.payload_after_server_fin() >= 1

        with Capture(tmp_path / "guard.pcap", host=server.host, port=server.port) as guarded:
            # The retirement timer off: once the 0.5 s timer is learned it would close the later
            # connections before the server does (test_client_watch); here the FIN path is measured.
            s = hc.session(use_dns_cache=False, policy=hc.KeepAlivePolicy(retire_idle=False))
            for i in range(3):
                assert s.get(server.url()).status_code == 200
                # closed when the server's FIN arrives, with no request (however late the threads run)
                wait_until(lambda i=i: s.counts().closed_at_fin == i + 1)
            s.close()
        assert guarded.server_closed_first() >= 2, "the server's idle timer did fire"
        assert guarded.payload_after_server_fin() == 0
        assert s.counts().closed_at_fin >= 2  # closed when the FIN arrived, before any request looked


def test_race_plain_requests_fails_guarded_get_succeeds() -> None:
    with KeepAliveServer(idle_timeout=0.4, race=True) as server:
        plain = requests.Session()
        plain.get(server.url())
        time.sleep(0.7)
        with pytest.raises(requests.ConnectionError):
            plain.get(server.url())
        plain.close()

        s = hc.session(use_dns_cache=False)
        assert s.get(server.url()).json()["n"] == 1
        time.sleep(0.7)
        reply = s.get(server.url())
        assert reply.status_code == 200 and reply.json()["method"] == "GET"
        c = s.counts()
        assert (c.retried_idempotent, c.not_retried) == (1, 0)
        assert server.ends()["race"] == 2
        s.close()


def test_race_post_without_key_is_not_retried_with_key_it_is() -> None:
    with KeepAliveServer(idle_timeout=0.4, race=True) as server:
        s = hc.session(use_dns_cache=False)
        s.post(server.url(), data=b"order=1")
        time.sleep(0.7)
        with pytest.raises(requests.ConnectionError, match="Remote end closed"):
            s.post(server.url(), data=b"order=2")
        c = s.counts()
        assert (c.retries, c.not_retried) == (0, 1)
        s.close()

        s = hc.session(use_dns_cache=False)
        s.post(server.url(), data=b"order=3")
        time.sleep(0.7)
        reply = s.post(server.url(), data=b"order=4", headers={"Idempotency-Key": "order-4"})
        assert reply.json()["method"] == "POST"
        assert s.counts().retried_idempotency_key == 1
        s.close()


def test_keep_alive_header_retires_before_the_server_closes() -> None:
    with KeepAliveServer(idle_timeout=2.0, keep_alive_header=2.0) as server:
        plain = requests.Session()
        plain.get(server.url())
        wait_until(lambda: server.ends()["timer"] == 1)  # the control: the server closes first
        plain.close()

        s = hc.session(use_dns_cache=False)
        first = s.get(server.url()).json()["conn"]
        time.sleep(1.6)  # past 2.0 - margin (0.5), before 2.0
        second = s.get(server.url()).json()["conn"]
        s.close()
        assert first != second
        assert s.counts().retired_early == 1
        wait_until(lambda: server.ends()["client"] == 2)
        assert server.ends()["timer"] == 1, "no server-initiated close on the guarded connections"


def test_learned_timeout_retires_before_the_server_closes() -> None:
    with KeepAliveServer(idle_timeout=1.6) as server:
        s = hc.session(use_dns_cache=False)
        s.get(server.url())
        wait_until(lambda: s.counts().closed_at_fin == 1)  # closed at the server's FIN, no request needed
        time.sleep(0.7)  # the next request well after the FIN: its idle age is >= 2.3 s
        s.get(server.url())  # the first connection was closed at the server's FIN, learned ~1.6 s
        assert (s.counts().closed_at_fin, s.counts().half_closed_skipped) == (1, 0)
        origin = hc.Origin(scheme="http", host=server.host, port=server.port)
        learned = s.guard.idle_timeout(origin)
        assert learned is not None and learned.source is hc.TimeoutSource.LEARNED
        # The age at the FIN (1.6 s, plus however late the server's timer and the watcher ran: 0.4 s
        # allowed), not the age at the next request (>= 2.3 s).
        assert 1.5 < learned.seconds < 2.0
        # Retired by the timer at the learned timeout less its margin (25 %: ~1.2 s), before the
        # server's 1.6 s: no request needed, so none can come too early or too late.
        wait_until(lambda: s.counts().retired_early == 1)
        s.get(server.url())
        s.close()
        assert s.counts().retired_early == 1
        wait_until(lambda: server.ends()["client"] == 2)
        assert server.ends()["timer"] == 1, "only the connection before learning was closed by the server"


NS_SCRIPT = """
import json, requests
from clientlab import DnsServer, KeepAliveServer, wait_until
import halfclose.client as hc
with KeepAliveServer(idle_timeout=0.2, host="127.0.0.1") as srv, \\
        DnsServer(records={"img.lab.test": "127.0.0.1"}, ttl=1, host="127.0.0.53", port=53) as dns:
    url = srv.url("/", host="img.lab.test")
    out = {}
    for name, make in (("plain", requests.Session), ("guard", lambda: hc.session(network="ns"))):
        before = dns.total()
        s = make()
        for _ in range(4):
            closed = srv.closed_ends()["timer"]
            s.get(url, timeout=5).raise_for_status()
            wait_until(lambda: srv.closed_ends()["timer"] > closed)  # a new connection each time
        out[name] = dns.total() - before
        out[name + "_counts"] = s.counts().as_dict() if hasattr(s, "counts") else {}
    print(json.dumps(out))
"""


@pytest.mark.root
def test_dns_queries_drop_versus_plain_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    with Claim() as claim:
        ns = claim.netns_name("client")
        claim.add_path(f"/etc/netns/{ns}")
        Path(f"/etc/netns/{ns}").mkdir(parents=True, exist_ok=True)
        Path(f"/etc/netns/{ns}/resolv.conf").write_text("nameserver 127.0.0.53\n")
        claim.add_netns("client")
        run(["ip", "link", "set", "lo", "up"], netns=ns)
        monkeypatch.setenv("PYTHONPATH", f"{SRC}:{TESTS}")
        done = run([sys.executable, "-c", NS_SCRIPT], netns=ns, timeout=60)
    out = json.loads(done.stdout)
    assert out["plain"] == 8, "plain requests: A and AAAA for each of 4 connections"
    assert out["guard"] == 2, "the guard: A and AAAA once, then the 60 s floor"
    assert out["guard_counts"]["dns_hits"] == 6


def test_tls_by_name_through_the_dns_cache(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "img.lab.test")
    with KeepAliveServer(idle_timeout=0.4, tls=server_tls(cert, key)) as server, \
            DnsServer(records={"img.lab.test": server.host}, ttl=1) as dns:
        s = hc.session(network="lab", nameservers=[dns.host], dns_port=dns.port)
        url, ca = server.url(host="img.lab.test"), str(cert)  # per request: REQUESTS_CA_BUNDLE wins
        first = s.get(url, verify=ca).json()["conn"]
        second = s.get(url, verify=ca).json()["conn"]
        wait_until(lambda: server.closed_ends()["timer"] == 1)  # its close_notify (0.4 s idle) is out
        third = s.get(url, verify=ca).json()["conn"]
        s.close()
        assert first == second != third
        c = s.counts()
        assert (c.reused, c.half_closed_skipped, c.new_connections) == (1, 1, 2)
        assert dns.total() == 2
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(server.url(), verify=str(cert))  # by address: the name check still applies


def test_tls_race_get_is_retried(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "img.lab.test")
    with KeepAliveServer(idle_timeout=0.4, race=True, tls=server_tls(cert, key)) as server, \
            DnsServer(records={"img.lab.test": server.host}, ttl=1) as dns:
        s = hc.session(network="lab", nameservers=[dns.host], dns_port=dns.port)
        url, ca = server.url(host="img.lab.test"), str(cert)
        s.get(url, verify=ca)
        time.sleep(0.7)
        assert s.get(url, verify=ca).status_code == 200
        assert s.counts().retried_idempotent == 1
        s.close()


def test_session_factory_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="unknown options timeout"):
        hc.session(timeout=3)
