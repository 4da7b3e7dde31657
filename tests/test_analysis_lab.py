"""The analysis on captures made by ``halfclose lab run``, checked against tshark."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from halfclose.analysis import FindingKind
from halfclose.analysis_io import analyze
from halfclose.proc import run
from realcap import tshark_counts

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    pytest.param(["--client", "reuse"], id="reuse-ipv4-builtin"),
    pytest.param(
        ["--client", "reuse", "--ipv6", "--server", "nginx", "--dns", "dnsmasq"], id="reuse-ipv6-nginx"
    ),
    pytest.param(["--client", "requests"], id="requests-ipv4"),
    pytest.param(["--client", "requests", "--ipv6", "--capture-any"], id="requests-ipv6-any"),
    pytest.param(["--client", "reuse", "--capture-any"], id="reuse-ipv4-any"),
]


@pytest.mark.root
@pytest.mark.parametrize("extra", CASES)
def test_lab_capture_counts_equal_tsharks(extra: list[str], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    pcap = tmp_path / "lab.pcap"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [
            sys.executable, "-m", "halfclose", "lab", "run", "--requests", "3", "--gap", "3",
            "--idle-timeout", "2", "--pcap", str(pcap), "--out", str(tmp_path / "run"), *extra,
        ],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pcapng = tmp_path / "lab.pcapng"
    run(["editcap", "-F", "pcapng", str(pcap), str(pcapng)])
    oracle = tshark_counts(pcap)
    for path in (pcap, pcapng):
        s = analyze([path]).summary
        assert s.tcp_connections == oracle.connections
        assert s.server_closed_first == oracle.server_closed_first
        assert s.stale_reuse == oracle.client_data_after_server_fin
        assert s.fin_retransmits == oracle.fin_retransmits
        assert s.dns_queries == oracle.dns_queries
    result = analyze([pcap])
    (server,) = result.servers
    assert server.server == "img.lab.test"
    assert abs(server.idle_timeout_s - 2.0) <= 0.1
    stale = [f for f in result.findings if f.kind is FindingKind.STALE_REUSE]
    if extra[1] == "reuse":
        assert len(stale) == 2  # requests 2 and 3 went into dead connections
        for f in stale:
            assert f.outcome == "rst"
            assert f.replacement_uid is not None
            assert f.dns_lookups >= 1
    else:
        assert stale == []  # urllib3 checks the socket before reuse
        assert result.summary.server_closed_first >= 2


TLS_CASES = [
    pytest.param("go", 0, id="go-answers-close-notify"),  # its own close_notify after the server's FIN
    pytest.param("reuse", 2, id="reuse-writes-requests"),  # encrypted requests after the server's FIN
]


@pytest.mark.root
@pytest.mark.parametrize(("client", "requests_after_fin"), TLS_CASES)
def test_tls_stale_writes_are_requests_not_closing_records(client: str, requests_after_fin: int,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """Over TLS a client's own close_notify sent after the server's FIN is no stale write; an
    encrypted request is (tshark decrypts with the run's key log)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "halfclose", "lab", "run", "--client", client, "--server", "nginx", "--tls",
         "--requests", "3", "--gap", "3", "--idle-timeout", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    pcap = out / "phone.pcap"
    tls = ["-o", f"tls.keylog_file:{out / 'tls-keys.log'}"]

    def shark(fields: list[str], display: str) -> list[list[str]]:
        argv = ["tshark", "-r", str(pcap), *tls, "-Y", display, "-T", "fields", "-E", "occurrence=f"]
        for f in fields:
            argv += ["-e", f]
        return [line.split("\t") for line in run(argv).stdout.splitlines() if line]

    server_fin = {int(s): float(t) for s, t in reversed(shark(["tcp.stream", "frame.time_epoch"],
                                                                "tcp.srcport == 443 && tcp.flags.fin == 1"))}
    requests = shark(["tcp.stream", "frame.time_epoch"], "tcp.dstport == 443 && http.request")
    alerts = shark(["tcp.stream", "frame.time_epoch"], "tcp.dstport == 443 && tls.alert_message.desc == 0")
    wire_after = {s: sum(1 for rs, t in requests if int(rs) == s and float(t) > fin) for s, fin in server_fin.items()}
    client_alerts_after = sum(1 for s, t in alerts if int(s) in server_fin and float(t) > server_fin[int(s)])
    assert sum(wire_after.values()) == requests_after_fin
    if client == "go":
        assert client_alerts_after == 2  # what the analysis must not take for stale writes
    result = analyze([pcap])
    by_port = {c.orig_p: c for c in result.connections if c.resp_p == 443}
    syns = shark(["tcp.stream", "tcp.srcport"], "tcp.dstport == 443 && tcp.flags.syn == 1")
    ports = {int(s): int(p) for s, p in syns}
    expect = {ports[s]: n for s, n in wire_after.items()}
    assert {p: by_port[p].stale_writes for p in expect} == expect
    assert result.summary.stale_reuse == requests_after_fin
