"""TCP Fast Open: the rules (pure) and, in a network namespace with Fast Open on, the wire (tshark)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from halfclose.client._tfo import FastOpen, FastOpenResult, kernel_allows_client
from halfclose.lab.syndata import count_syn_data
from halfclose.netns import Claim
from halfclose.proc import run

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def test_rules_replay_safety_memory_and_retry_after() -> None:
    now = [0.0]
    fo = FastOpen(kernel=True, retry_after=60, clock=lambda: now[0])
    dest = ("198.18.0.1", 80)
    assert fo.allowed(dest, replay_safe=True) and not fo.allowed(dest, replay_safe=False)
    fo.record(dest, FastOpenResult.NO_COOKIE)  # the first connection: not a failure
    assert fo.allowed(dest, replay_safe=True)
    fo.record(dest, FastOpenResult.DATA_NOT_ACKED)
    assert not fo.allowed(dest, replay_safe=True) and fo.allowed(("198.18.0.2", 80), replay_safe=True)
    now[0] = 61
    assert fo.allowed(dest, replay_safe=True) and fo.failed() == []
    assert not FastOpen(enabled=False, kernel=True).allowed(dest, replay_safe=True)
    assert not FastOpen(kernel=False).allowed(dest, replay_safe=True)


def test_kernel_sysctl_client_bit(tmp_path: Path) -> None:
    f = tmp_path / "tcp_fastopen"
    for text, allowed in (("1\n", True), ("3\n", True), ("2\n", False), ("0x401\n", True), ("", False)):
        f.write_text(text)
        assert kernel_allows_client(f) is allowed
    assert kernel_allows_client(tmp_path / "missing") is False


def _probe(tmp_path: Path, *, drop_syn_data: bool, extra: tuple[str, ...] = ()) -> tuple[dict[str, object], Path]:
    with Claim() as claim:
        ns = claim.add_netns("tfo")
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_fastopen=3"])
        if drop_syn_data:  # the lab fault: a path that drops SYNs carrying payload (SYN+data >= 90 bytes)
            run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "tcp", "--syn",
                 "-m", "length", "--length", "90:65535", "-j", "DROP"])
        pcap = tmp_path / "tfo.pcap"
        tmp_path.chmod(0o777)
        out = run(["ip", "netns", "exec", ns, "env", f"PYTHONPATH={SRC}", sys.executable,
                   str(TESTS / "tfo_probe.py"), str(pcap), "4", *extra], timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1]), pcap


def _tshark(pcap: Path, display: str) -> int:
    out = run(["tshark", "-r", str(pcap), "-Y", display, "-T", "fields", "-e", "frame.number"], timeout=60).stdout
    return len(out.split())


@pytest.mark.root
@pytest.mark.parametrize("client", ["requests", "httpx", "async-httpx"])
def test_gets_ride_in_the_syn_and_a_post_never_does(tmp_path: Path, client: str) -> None:
    result, pcap = _probe(tmp_path, drop_syn_data=False, extra=() if client == "requests" else (f"--{client}",))
    counts = result["counts"]
    assert isinstance(counts, dict)
    assert result["statuses"] == [200] * 5
    # the first connection asks for a cookie; the next three GETs travel in their SYNs
    assert _tshark(pcap, "tcp.flags.syn==1 && tcp.flags.ack==0 && tcp.len>0") == 3
    assert _tshark(pcap, "tcp.flags.syn==1 && tcp.flags.ack==0 && tcp.len>0 && http.request.method==\"POST\"") == 0
    assert (counts["fast_open_syn_data"], counts["fast_open_failed"], counts["new_connections"]) == (3, 0, 5)


@pytest.mark.root
def test_async_tls_puts_each_client_hello_in_the_syn(tmp_path: Path) -> None:
    """Over TLS the first write is the ClientHello, replay-safe whatever the request: the POST's too."""
    result, pcap = _probe(tmp_path, drop_syn_data=False, extra=("--async-httpx", "--tls"))
    counts = result["counts"]
    assert isinstance(counts, dict)
    assert result["statuses"] == [200] * 5
    assert _tshark(pcap, "tcp.flags.syn==1 && tcp.flags.ack==0 && tcp.len>0 && tls.handshake.type==1") == 4
    assert (counts["fast_open_syn_data"], counts["fast_open_failed"], counts["new_connections"]) == (4, 0, 5)


@pytest.mark.root
def test_off_switch_sends_no_syn_data(tmp_path: Path) -> None:
    result, pcap = _probe(tmp_path, drop_syn_data=False, extra=("--no-fast-open",))
    assert result["statuses"] == [200] * 5
    assert _tshark(pcap, "tcp.flags.syn==1 && tcp.len>0") == 0


@pytest.mark.root
@pytest.mark.parametrize("client", ["requests", "async-httpx"])
def test_a_path_that_drops_syn_data_costs_one_retransmitted_syn(tmp_path: Path, client: str) -> None:
    result, pcap = _probe(tmp_path, drop_syn_data=True, extra=() if client == "requests" else (f"--{client}",))
    counts = result["counts"]
    assert isinstance(counts, dict)
    assert result["statuses"] == [200] * 5  # nothing fails
    assert _tshark(pcap, "tcp.flags.syn==1 && tcp.flags.ack==0 && tcp.analysis.retransmission") == 1
    assert (counts["fast_open_failed"], counts["fast_open_syn_data"]) == (1, 0)


@pytest.mark.root
def test_an_unanswered_fast_open_syn_is_a_connect_timeout() -> None:
    """Fast Open defers the SYN to the first write; a SYN nobody answers still raises ConnectTimeoutError."""
    script = (
        "import socket, urllib3, halfclose.client as hc\n"
        "srv = socket.create_server(('127.0.0.1', 0)); port = srv.getsockname()[1]\n"
        "http = hc.pool_manager(use_dns_cache=False, retries=False, timeout=urllib3.Timeout(connect=0.5))\n"
        "try:\n"
        "    http.request('GET', f'http://127.0.0.1:{port}/')\n"
        "except urllib3.exceptions.ConnectTimeoutError:\n"
        "    print('connect-timeout')\n"
    )
    with Claim() as claim:
        ns = claim.add_netns("tarpit")
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP"])
        out = run(["ip", "netns", "exec", ns, "env", f"PYTHONPATH={SRC}", sys.executable, "-c", script],
                  timeout=60).stdout
    assert out.strip() == "connect-timeout"


@pytest.mark.root
def test_lab_tfo_puts_post_idle_requests_in_the_syn(tmp_path: Path) -> None:
    """``lab run --tfo`` with the guarded client: after the first connection (which fetches the
    cookie), every new connection's SYN carries the GET (tshark on the lab's capture)."""
    out = tmp_path / "run.json"
    halfclose = Path(sys.executable).with_name("halfclose")
    run([str(halfclose), "lab", "run", "--client", "guard-requests", "--tfo", "--rtt", "20", "--requests", "3",
         "--gap", "2.5", "--idle-timeout", "2", "--out", str(tmp_path / "run"), "--json", str(out)], timeout=300)
    result = json.loads(out.read_text())
    assert all(r["ok"] for r in result["requests"])
    pcap = Path(result["pcap"])
    syns = run(["tshark", "-r", str(pcap), "-Y", "tcp.flags.syn==1 && tcp.flags.ack==0", "-T", "fields",
                "-e", "tcp.stream", "-e", "tcp.len"], timeout=60).stdout.split("\n")
    payload = [int(line.split("\t")[1]) for line in syns if line.strip()]
    assert len(payload) == 3
    assert payload[0] == 0 and all(n > 0 for n in payload[1:])  # cookie first, then the request in the SYN
    assert result["wire"]["stale_writes"] == 0
    assert count_syn_data(pcap) == 2  # the lab's own reading of the capture agrees with tshark
    # the post-idle requests were on the wire with their SYN: no round trip of waiting
    rtt_ns = result["wire"]["rtt_ms_median"] * 1e6
    waits = result["waits_ns"]
    post_idle = [waits[str(i)] for i in (1, 2)]
    assert all(w < 0.2 * rtt_ns for w in post_idle), (post_idle, rtt_ns)


@pytest.mark.root
def test_lab_path_dropping_syn_data_costs_one_retransmitted_syn(tmp_path: Path) -> None:
    """``lab run --tfo --drop-syn-data``: one SYN retransmitted (without its data), once; nothing fails."""
    out = tmp_path / "run.json"
    halfclose = Path(sys.executable).with_name("halfclose")
    run([str(halfclose), "lab", "run", "--client", "guard-requests", "--tfo", "--drop-syn-data", "--rtt", "20",
         "--requests", "4", "--gap", "2.5", "--idle-timeout", "2", "--out", str(tmp_path / "run"),
         "--json", str(out)], timeout=300)
    result = json.loads(out.read_text())
    assert len(result["requests"]) == 4 and all(r["ok"] for r in result["requests"])
    pcap = Path(result["pcap"])
    assert _tshark(pcap, "tcp.flags.syn==1 && tcp.flags.ack==0 && tcp.analysis.retransmission") == 1
    assert _tshark(pcap, "tcp.flags.syn==1 && tcp.flags.ack==0 && tcp.len>0") == 1  # tried once, then not
