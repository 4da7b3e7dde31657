"""The analysis on captures made by ``halfclose lab run``, checked against tshark."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from halfclose.analysis import FindingKind, Side
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
    # The server's 2 s timer: never early, but late by however long its process waited for a CPU
    # (0.3 s allowed; the client's 3 s gap stays far outside).
    assert -0.1 <= server.idle_timeout_s - 2.0 <= 0.3
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
    server_alert = {int(s): float(t) for s, t in reversed(shark(["tcp.stream", "frame.time_epoch"],
                                                                  "tcp.srcport == 443 && tls.alert_message.desc == 0"))}
    requests = shark(["tcp.stream", "frame.time_epoch"], "tcp.dstport == 443 && http.request")
    alerts = shark(["tcp.stream", "frame.time_epoch"], "tcp.dstport == 443 && tls.alert_message.desc == 0")
    wire_after = {s: sum(1 for rs, t in requests if int(rs) == s and float(t) > fin) for s, fin in server_fin.items()}
    # the client's close_notify answering the server's, after its FIN or (nginx's FIN late under
    # load) before it: never a stale write
    client_alerts_after = sum(1 for s, t in alerts if int(s) in server_alert and float(t) > server_alert[int(s)])
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


CLIENT_FIRST_CASES = [
    # uvicorn sends close_notify at its timer and no FIN; requests resets at its next request
    pytest.param("uvicorn", "requests", ["--tls"], "tls.alert_message.desc == 0", id="uvicorn-tls-close-notify"),
    # Go's HTTP/2 server sends GOAWAY at its timer and its FIN 1 s later; curl's next request
    # comes 0.5 s into that second: curl closes first
    pytest.param("go", "curl", ["--tls", "--http2"], "http2.type == 7", id="go-h2-goaway"),
]


@pytest.mark.root
@pytest.mark.parametrize(("server", "client", "flags", "record"), CLIENT_FIRST_CASES)
def test_idle_timeout_from_the_servers_record_when_the_client_closes_first(
    server: str, client: str, flags: list[str], record: str, tmp_path: Path
) -> None:
    """A server that sends its closing record at the timer and leaves the TCP close to the client:
    the analysis takes that record (tshark decrypts it with the run's key log) as the server's
    idle close, and infers the timeout from it."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "halfclose", "lab", "run", "--server", server, "--client", client, *flags,
         "--requests", "2", "--gap", "2.5", "--idle-timeout", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    pcap = out / "phone.pcap"

    def shark(display: str) -> dict[int, float]:
        """Per client port, the first matching packet's time."""
        argv = ["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{out / 'tls-keys.log'}", "-Y", display,
                "-T", "fields", "-e", "tcp.port", "-e", "frame.time_epoch", "-E", "occurrence=a", "-E", "aggregator=,"]
        first: dict[int, float] = {}
        for line in run(argv).stdout.splitlines():
            ports, t = line.split("\t")
            first.setdefault(max(int(p) for p in ports.split(",")), float(t))
        return first

    records = shark(f"tcp.srcport == 443 && {record}")
    server_closes = shark("tcp.srcport == 443 && (tcp.flags.fin == 1 || tcp.flags.reset == 1)")
    client_closes = shark("tcp.dstport == 443 && (tcp.flags.fin == 1 || tcp.flags.reset == 1)")
    assert records, f"the server sent no {record}"
    # on the wire: the client's FIN or RST is the connection's first close, after the server's record
    assert all(records[p] < client_closes[p] < server_closes.get(p, float("inf")) for p in records)
    result = analyze([pcap])
    by_port = {c.orig_p: c for c in result.connections if c.resp_p == 443}
    for port, t in records.items():
        conn = by_port[port]
        assert conn.closed_first is Side.ORIG
        assert conn.closing_side is Side.RESP
        assert conn.closing_record_ns is not None and abs(conn.closing_record_ns / 1e9 - t) <= 1e-6
    (timeout,) = result.servers
    assert timeout.server == "img.lab.test" and timeout.samples == len(records)
    assert -0.15 <= timeout.idle_timeout_s - 2.0 <= 0.3  # never early; late by scheduling, as above
