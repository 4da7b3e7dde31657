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
