"""End-to-end lab runs on real kernel TCP, checked with tshark."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

import tshark
from runcli import halfclose, netns_with, popen

pytestmark = pytest.mark.root


def _run(tmp_path: Path, *args: str) -> tuple[dict[str, object], Path]:
    out = tmp_path / "run"
    result = halfclose("lab", "run", "--out", str(out), "--json", str(tmp_path / "run.json"), *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads((tmp_path / "run.json").read_text())
    return data, Path(str(data["pcap"]))


def _stale(pcap: Path) -> list[tshark.StreamView]:
    return [v for v in tshark.streams(pcap).values() if v.client_data_after_server_fin]


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_reuse_client_writes_into_dead_connections(tmp_path: Path, ipv6: bool) -> None:
    data, pcap = _run(tmp_path, "--client", "reuse", "--requests", "4", "--gap", "3", "--idle-timeout", "2",
                      *(["--ipv6"] if ipv6 else []))
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["reused_dead"] == 3
    assert summary["ok"] == 4
    stale = _stale(pcap)
    assert len(stale) == 3
    assert all(view.server_rst_after_stale_data for view in stale)
    family = tshark.fields(pcap, ["ipv6.src" if ipv6 else "ip.src"], "tcp.flags.syn == 1 && tcp.flags.ack == 0")
    assert len(family) == 4 and all(row[0] for row in family)


def test_requests_client_never_writes_after_fin(tmp_path: Path) -> None:
    data, pcap = _run(tmp_path, "--client", "requests", "--requests", "4", "--gap", "3", "--idle-timeout", "2")
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["ok"] == 4 and summary["reused_dead"] == 0
    views = tshark.streams(pcap)
    assert sum(v.server_fin is not None for v in views.values()) >= 3, "the server closed idle connections"
    assert _stale(pcap) == []
    # Without a cache every new connection asks DNS again (A and AAAA).
    assert tshark.dns_queries(pcap) >= 8


def test_nginx_and_dnsmasq(tmp_path: Path) -> None:
    data, pcap = _run(tmp_path, "--client", "reuse", "--server", "nginx", "--dns", "dnsmasq",
                      "--requests", "4", "--gap", "3", "--idle-timeout", "2")
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["reused_dead"] == 3
    stale = _stale(pcap)
    assert len(stale) == 3 and all(v.server_rst_after_stale_data for v in stale)
    ttls = tshark.fields(pcap, ["dns.resp.ttl"], "dns.flags.response == 1 && dns.a")
    assert ttls and all(row[0] == "3" for row in ttls)
    _, requests_pcap = _run(tmp_path / "b", "--client", "requests", "--server", "nginx", "--dns",
                                        "dnsmasq", "--requests", "3", "--gap", "3", "--idle-timeout", "2")
    assert _stale(requests_pcap) == []


def _wait_for_run_id(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.match(r"lab ([0-9a-f]{6}):", line)
        if match:
            return match.group(1)
    raise AssertionError(f"no lab line; stderr: {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_cleans_up(tmp_path: Path, sig: int) -> None:
    proc = popen("lab", "run", "--requests", "5", "--gap", "4", "--out", str(tmp_path / "run"))
    run_id = _wait_for_run_id(proc)
    assert len(netns_with(run_id)) == 3
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert netns_with(run_id) == []
    assert not Path(f"/run/halfclose/{run_id}.json").exists()
    assert not Path(f"/etc/netns/hc-{run_id}-phone").exists()
    assert not (tmp_path / "run").exists()


def test_sigkill_then_lab_clean(tmp_path: Path) -> None:
    proc = popen("lab", "run", "--requests", "5", "--gap", "4", "--out", str(tmp_path / "run"))
    run_id = _wait_for_run_id(proc)
    names = netns_with(run_id)
    inside = [
        int(pid)
        for name in names
        for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    ]
    assert inside, "servers, tcpdump and the app run inside the namespaces"
    proc.kill()
    proc.communicate(timeout=10)
    assert netns_with(run_id), "SIGKILL leaves the namespaces behind"
    cleaned = halfclose("lab", "clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"hc-{run_id}-phone" in cleaned.stdout
    assert netns_with(run_id) == []
    for pid in inside:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/status").read_text().find("zombie") >= 0
    assert not Path(f"/run/halfclose/{run_id}.json").exists()


def test_lab_clean_leaves_live_runs_alone(tmp_path: Path) -> None:
    proc = popen("lab", "run", "--requests", "2", "--gap", "3", "--out", str(tmp_path / "run"))
    try:
        run_id = _wait_for_run_id(proc)
        cleaned = halfclose("lab", "clean")
        assert cleaned.returncode == 0
        assert len(netns_with(run_id)) == 3
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_two_labs_at_once(tmp_path: Path) -> None:
    results: dict[str, tuple[dict[str, object], Path]] = {}

    def one(name: str) -> None:
        results[name] = _run(tmp_path / name, "--client", "reuse", "--requests", "3", "--gap", "3")

    threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) == {"a", "b"}
    assert results["a"][0]["run_id"] != results["b"][0]["run_id"]
    for data, pcap in results.values():
        summary = data["summary"]
        assert isinstance(summary, dict)
        assert summary["reused_dead"] == 2
        assert len(_stale(pcap)) == 2


def _assert_bad(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_negative_gap(tmp_path: Path) -> None:
    _assert_bad(halfclose("lab", "run", "--gap", "-1", "--out", str(tmp_path / "r")), "--gap")
    assert not (tmp_path / "r").exists()


def test_busy_address_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    # dnsmasq also listens on TCP port 53: an HTTP server asked for the same port finds it taken.
    proc = popen("lab", "run", "--dns", "dnsmasq", "--http-port", "53", "--out", str(tmp_path / "r"))
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and "in use" in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists(), "a failed run leaves no run folder behind"


def test_not_root(tmp_path: Path) -> None:
    # The package is copied where uid 10400 can read it (the checkout may sit under /root).
    from halfclose.lab.runner import _copy_package

    shared = Path(tempfile.mkdtemp(prefix="halfclose-test-"))
    try:
        shared.chmod(0o755)
        py = _copy_package(shared / "py")
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(py)}
        result = subprocess.run(
            ["setpriv", "--reuid", "10400", "--regid", "10400", "--clear-groups", sys.executable, "-m",
             "halfclose", "lab", "run"],
            capture_output=True, text=True, env=env, timeout=60, cwd=shared,
        )
    finally:
        shutil.rmtree(shared)
    _assert_bad(result, "needs root")


def test_missing_program(tmp_path: Path) -> None:
    # A mount namespace in which dnsmasq is an empty, non-executable file: missing, as on a bare host.
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    dnsmasq = subprocess.run(["sh", "-c", "command -v dnsmasq || echo /usr/sbin/dnsmasq"], capture_output=True,
                             text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout.strip()
    from runcli import argv, env

    inner = " ".join([*argv("lab", "run", "--dns", "dnsmasq", "--out", str(tmp_path / "r"))])
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {empty} {dnsmasq} && exec {inner}"],
        capture_output=True, text=True, env=env(), timeout=60,
    )
    _assert_bad(result, "dnsmasq is not installed")
    assert "apt-get install dnsmasq-base" in result.stderr
    assert not (tmp_path / "r").exists()


def test_rtt_is_emulated_and_reported_next_to_the_measured_one(tmp_path: Path) -> None:
    data, pcap = _run(tmp_path, "--client", "reuse", "--rtt", "50", "--requests", "3", "--gap", "2.5",
                      "--idle-timeout", "2")
    link = data["link"]
    assert isinstance(link, dict)
    assert link["mode"] in {"forwarder", "netem"}
    assert link["rtt_ms_asked"] == 50
    oracle = sorted(tshark.handshake_rtts_ms(pcap))
    assert len(oracle) == link["handshakes"] == 3
    median = oracle[len(oracle) // 2]
    assert abs(median - 50) <= 2, oracle
    assert abs(link["rtt_ms_median"] - median) < 0.5, (link, oracle)
    # The waste counts in round trips: a request written into a dead connection costs the RST's
    # round trip, a DNS lookup, a handshake and the request itself, four at least.
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["reused_dead"] == 2
    assert summary["median_ms_dead"] >= 4 * 50


def test_the_capture_keeps_a_burst_that_comes_while_tcpdump_gets_no_cpu(tmp_path: Path) -> None:
    """The lab's tcpdump stopped (SIGSTOP, as on a host too busy to run it) while 100 datagrams pass:
    once it runs again, all of them are written (with the default ring 8 were)."""
    import socket
    import time

    from halfclose.lab.runner import capture_argv
    from halfclose.netns import Claim
    from halfclose.proc import run, spawn
    from halfclose.sockdiag import netns_entered

    pcap = tmp_path / "burst.pcap"
    with Claim() as claim:
        ns = claim.add_netns("burst")
        run(["ip", "link", "set", "lo", "up"], netns=ns)
        proc = spawn(capture_argv("lo", pcap), netns=ns)
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert b"listening on" in line, line
            with netns_entered(ns):
                sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sender:
                os.kill(proc.pid, signal.SIGSTOP)
                for i in range(100):
                    sender.sendto(b"burst %d" % i, ("127.0.0.1", 9))
                os.kill(proc.pid, signal.SIGCONT)

            def written() -> int:  # the datagrams, not the port unreachables that quote them
                return len(tshark.fields(pcap, ["frame.number"], "udp.dstport == 9 && !icmp"))

            deadline = time.monotonic() + 20
            while written() < 100 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
    assert written() == 100
