"""Every lab server started for real, over plain HTTP, TLS 1.2 and 1.3, HTTP/2 and h2c, checked with tshark.

Each test is one lab run and groups what that run shows: how the server closes an idle
connection and how long after the last response byte (its configured idle timeout), the TLS
handshake (SNI, version, certificate names, ALPN), the HTTP version on the wire, the headers.
The plain-HTTP runs use the lab's own app (``lab run --client reuse`` / ``requests``); the TLS and
HTTP/2 runs use tests/serverprobe.py in the phone namespace as the app uid, which trusts only
the run's CA and logs its TLS keys so that tshark can read the closing records.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import tshark
from halfclose.analysis import Side
from halfclose.analysis_io import analyze
from halfclose.lab.config import SERVER_HTTP2, LabConfig, ServerKind, TlsVersion
from runcli import halfclose, netns_with, popen
from serverlab import ServerSide, finish, server_lab, server_sides

pytestmark = pytest.mark.root

HOST = "img.lab.test"
#: The idle timeout of the runs: 1 s, and 1.5 s for Node (whose keepAliveTimeout is set 1 s below
#: it, since Node closes 1 s after its knob: it must stay above 0).
IDLE = {kind: 1.0 for kind in ServerKind} | {ServerKind.NODE: 1.5}
#: |measured idle time - expected| on the wire, seconds.
TOLERANCE = 0.15
#: Go's HTTP/2 server (Caddy's too) sends GOAWAY at the idle timeout and closes 1 s later.
H2_GOAWAY_GRACE = {ServerKind.CADDY: 1.0, ServerKind.GO: 1.0}
#: How each server closes an idle connection over TLS with HTTP/1.1 (the probe reads nothing meanwhile).
#: uvicorn's asyncio TLS transport sends close_notify, then waits for the client's close_notify or
#: FIN (up to 30 s) before its own FIN.
TLS_H1_CLOSE = {kind: ["close_notify", "FIN"] for kind in ServerKind} | {ServerKind.NODE: ["FIN"],
                                                                          ServerKind.UVICORN: ["close_notify"]}
#: ... and with HTTP/2 (ALPN h2).
TLS_H2_CLOSE = {kind: ["GOAWAY", "close_notify", "FIN"] for kind in ServerKind}

#: What a server does with a request written into the connection about 1 s after its FIN: RST,
#: except Apache (its lingering close reads and drops what comes for 2 s after its FIN) and
#: uvicorn over TLS (not closed yet: the request is dropped and the FIN follows).
STALE_REACTION = {ServerKind.APACHE: []}

ALL = list(ServerKind)
H2C = [k for k in ServerKind if "h2c" in SERVER_HTTP2[k]]


def _passive(server: ServerKind) -> str:
    """How long the probe waits reading nothing: past the server's close, whatever the server."""
    return str(IDLE[server] + H2_GOAWAY_GRACE.get(server, 0.0) + 1.0)


def _lab_run(tmp_path: Path, server: ServerKind, client: str) -> tuple[dict[str, object], Path]:
    out = tmp_path / "run"
    result = halfclose("lab", "run", "--server", server.value, "--client", client, "--requests", "2", "--gap", "2.5",
                       "--idle-timeout", str(IDLE[server]), "--out", str(out), "--json", str(tmp_path / "run.json"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads((tmp_path / "run.json").read_text())
    return data, Path(str(data["pcap"]))


def _check_idle_close(side: ServerSide, expected: float) -> None:
    idle = side.idle_before_close()
    assert abs(idle - expected) <= TOLERANCE, f"closed {idle:.3f} s after the last response byte, not {expected:g}"


@pytest.mark.parametrize("server", ALL, ids=[k.value for k in ALL])
def test_plain_http_reuse_client(tmp_path: Path, server: ServerKind) -> None:
    """The field report's app against each server over HTTP/1.1: idle close on the timer, stale writes."""
    data, pcap = _lab_run(tmp_path, server, "reuse")
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["ok"] == 2 and summary["reused_dead"] == 1
    sides = server_sides(pcap, 80)
    assert len(sides) == 2
    for side in sides.values():
        assert side.h1_responses and set(side.h1_responses) == {"HTTP/1.1"}
        assert "Cache-Control: no-store" in side.response_headers or "cache-control: no-store" in side.response_headers
    stale = [s for s in sides.values() if s.client_payload_after_close]
    assert len(stale) == 1, "the app wrote its next request into the connection the server had closed"
    for side in stale:
        assert side.close_kinds()[0] == "FIN"
        _check_idle_close(side, IDLE[server])
    (view,) = [v for v in tshark.streams(pcap).values() if v.client_data_after_server_fin]
    # Apache keeps reading after its FIN: the stale request is ACKed and dropped, the app sees EOF.
    assert view.server_rst_after_stale_data == (server is not ServerKind.APACHE)
    keep_alive = [h for h in sides[0].response_headers if h.lower().startswith("keep-alive:")]
    # Node announces its knob, 1 s below the idle timeout at which it closes (0.5 s: "timeout=0").
    announces = {ServerKind.NODE: ["Keep-Alive: timeout=0"]}
    assert keep_alive == announces.get(server, [])


@pytest.mark.parametrize("server", [ServerKind.APACHE, ServerKind.GO], ids=["apache", "go"])
def test_plain_http_requests_client(tmp_path: Path, server: ServerKind) -> None:
    """requests notices the FIN before reuse; Apache answers its ``Connection: keep-alive`` with a Keep-Alive header."""
    data, pcap = _lab_run(tmp_path, server, "requests")
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["ok"] == 2 and summary["reused_dead"] == 0
    sides = server_sides(pcap, 80)
    assert len(sides) == 2 and not any(s.client_payload_after_close for s in sides.values())
    for side in list(sides.values())[:1]:
        assert side.close_kinds() == ["FIN"]
        _check_idle_close(side, IDLE[server])
    keep_alive = [h for h in sides[0].response_headers if h.lower().startswith("keep-alive:")]
    assert keep_alive == (["Keep-Alive: timeout=1"] if server is ServerKind.APACHE else [])


def _probe_run(tmp_path: Path, config: LabConfig, *probes: list[str]) -> tuple[list[dict[str, object]], Path, Path]:
    """One lab with *config*'s server; each probe (its extra arguments) runs at once; their results."""
    run_dir = tmp_path / "run"
    with server_lab(config, run_dir) as lab:
        keylog = lab.work / "keylog" / "probe.keys"
        procs = [lab.probe(*args, keylog=keylog if config.tls else None) for args in probes]
        results = [finish(p) for p in procs]
        if config.tls:
            (run_dir / "keys.txt").write_bytes(keylog.read_bytes())
            ca_cert = lab.endpoint.ca_cert
            assert ca_cert is not None and ca_cert.is_relative_to(lab.work)
        run_id = lab.topo.phone.split("-")[1]
    # Nothing of the run is left: namespaces, server processes, work folder; the run folder keeps the PKI.
    assert netns_with(run_id) == []
    assert not lab.work.exists()
    if config.tls:
        files = sorted(p.name for p in (run_dir / "tls").iterdir())
        assert files == ["ca.pem", "server-bundle.pem", "server.key", "server.pem"]
    else:
        assert not (run_dir / "tls").exists()
    return results, run_dir / "phone.pcap", run_dir / "keys.txt"


def _check_analysis(pcap: Path, sides: dict[int, ServerSide], port: int, server: ServerKind) -> None:
    """``halfclose analyze`` on the run's capture: each connection the server closed on its own
    (the client wrote nothing before the connection's first FIN or RST) has the server's first
    closing signal as tshark shows it (GOAWAY, close_notify, else FIN) for its closing record, else
    its server-first FIN; the server's idle timeout is inferred within the tolerance."""
    result = analyze([pcap])
    conns = sorted((c for c in result.connections if c.resp_p == port), key=lambda c: c.ts_ns)
    measured = 0
    for side, conn in zip((sides[k] for k in sorted(sides)), conns, strict=True):
        closes = [t for t in (side.client_fin, *(t for k, t in side.closing if k in ("FIN", "RST"))) if t is not None]
        if side.client_stale is not None and side.client_stale < min(closes, default=float("inf")):
            continue  # a request after the server's record and before any close: that record's run is broken
        if conn.closing_record_ns is not None:
            assert conn.closing_side is Side.RESP
            at = conn.closing_record_ns
        else:
            assert side.closing[0][0] == "FIN" and conn.is_server_closed_first()
            at = conn.first_close_ns or 0
        assert abs(at / 1e9 - side.first_close()) <= 1e-6, (side.closing, conn.closing_record)
        measured += 1
    if measured:
        (timeout,) = result.servers
        assert timeout.samples == measured
        assert abs(timeout.idle_timeout_s - IDLE[server]) <= TOLERANCE


def _check_tls(side: ServerSide, version: TlsVersion) -> None:
    assert side.sni == HOST
    assert side.server_version == {TlsVersion.V1_2: "0x0303", TlsVersion.V1_3: "0x0304"}[version]
    assert side.cert_names == [HOST]


def _check_stale(server: ServerKind, side: ServerSide, *, tls: bool, http2: bool) -> None:
    assert side.client_stale is not None, "the probe wrote a request after the server's close"
    expected = ["FIN"] if server is ServerKind.UVICORN and tls else STALE_REACTION.get(server, ["RST"])
    assert side.stale_reaction() == expected


def _check_closes(server: ServerKind, side: ServerSide, *, http2: bool) -> None:
    if http2:
        assert side.close_kinds() == TLS_H2_CLOSE[server]
        _check_idle_close(side, IDLE[server])
        grace = side.at("FIN") - side.at("GOAWAY")
        assert abs(grace - H2_GOAWAY_GRACE.get(server, 0.0)) <= TOLERANCE
    else:
        assert side.close_kinds() == TLS_H1_CLOSE[server]
        _check_idle_close(side, IDLE[server])


@pytest.mark.parametrize("server", ALL, ids=[k.value for k in ALL])
def test_tls12_http1(tmp_path: Path, server: ServerKind) -> None:
    config = LabConfig(server=server, tls=True, tls_version=TlsVersion.V1_2, idle_timeout_s=IDLE[server],
                       http_port=443)
    (result,), pcap, keylog = _probe_run(tmp_path, config,
                                         ["--requests", "2", "--passive", _passive(server), "--stale"])
    assert result["tls_version"] == "TLSv1.2" and result["stale"] == "written"
    responses = result["responses"]
    assert isinstance(responses, list) and [r["status"] for r in responses] == [200, 200]
    assert all(r["headers"]["cache-control"] == "no-store" for r in responses)
    (side,) = server_sides(pcap, 443, keylog=keylog).values()
    _check_tls(side, TlsVersion.V1_2)
    # uvicorn sets no ALPN at all; the others select http/1.1.
    assert side.server_alpn == ("" if server is ServerKind.UVICORN else "http/1.1")
    assert set(side.h1_responses) == {"HTTP/1.1"} and len(side.h1_responses) == 2
    _check_closes(server, side, http2=False)
    _check_stale(server, side, tls=True, http2=False)
    _check_analysis(pcap, {0: side}, 443, server)


@pytest.mark.parametrize("server", ALL, ids=[k.value for k in ALL])
def test_tls13_http2(tmp_path: Path, server: ServerKind) -> None:
    """TLS 1.3 with --http2 (uvicorn: HTTP/1.1 only): an h2 client and an HTTP/1.1-only client at once."""
    http2 = "tls" in SERVER_HTTP2[server]
    config = LabConfig(server=server, tls=True, tls_version=TlsVersion.V1_3, http2=http2,
                       idle_timeout_s=IDLE[server], http_port=443)
    passive = ["--requests", "2", "--passive", _passive(server)]
    results, pcap, keylog = _probe_run(tmp_path, config, [*passive, "--stale"], [*passive, "--http1"])
    by_port = {int(str(r["local_port"])): r for r in results}
    assert all(r["tls_version"] == "TLSv1.3" for r in results)
    sides = server_sides(pcap, 443, keylog=keylog)
    assert len(sides) == 2
    for side in sides.values():
        _check_tls(side, TlsVersion.V1_3)
        probe_wants_h2 = side.client_alpn == "h2;http/1.1"
        speaks_h2 = probe_wants_h2 and http2
        assert side.server_alpn == ("h2" if speaks_h2 else "" if server is ServerKind.UVICORN else "http/1.1")
        if speaks_h2:
            assert "1" in side.http2_frames and side.h1_responses == []  # HEADERS frames, no HTTP/1.1
            assert "cache-control: no-store" in side.response_headers
        else:
            assert set(side.h1_responses) == {"HTTP/1.1"}
        _check_closes(server, side, http2=speaks_h2)
        if probe_wants_h2:
            _check_stale(server, side, tls=True, http2=speaks_h2)
    assert len(by_port) == 2
    assert all([r["status"] for r in result["responses"]] == [200, 200] for result in results)  # type: ignore[index,union-attr]
    _check_analysis(pcap, sides, 443, server)


@pytest.mark.parametrize("server", H2C, ids=[k.value for k in H2C])
def test_h2c(tmp_path: Path, server: ServerKind) -> None:
    """HTTP/2 over plain TCP with prior knowledge: GOAWAY, then FIN, at the idle timeout."""
    config = LabConfig(server=server, http2=True, idle_timeout_s=IDLE[server])
    (result,), pcap, _ = _probe_run(tmp_path, config, ["--requests", "2", "--passive", _passive(server), "--stale"])
    responses = result["responses"]
    assert isinstance(responses, list) and [r["version"] for r in responses] == ["HTTP/2", "HTTP/2"]
    (side,) = server_sides(pcap, 80, h2c=True).values()
    assert "1" in side.http2_frames and side.h1_responses == []
    assert side.close_kinds() == ["GOAWAY", "FIN"]
    _check_idle_close(side, IDLE[server])
    assert abs(side.at("FIN") - side.at("GOAWAY") - H2_GOAWAY_GRACE.get(server, 0.0)) <= TOLERANCE
    _check_stale(server, side, tls=False, http2=True)
    _check_analysis(pcap, {0: side}, 80, server)


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _lab_processes(server: str) -> list[str]:
    out = subprocess.run(["pgrep", "-a", server], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "/run/halfclose/" in line]


def test_a_server_that_cannot_start_leaves_nothing(tmp_path: Path) -> None:
    """caddy on the port dnsmasq holds, with TLS: one line, exit 2, no namespace, process, key or file left."""
    before = _netns()
    out = tmp_path / "run"
    out.mkdir()  # a folder of the user's: the run leaves it as it was, without the PKI it made in it
    proc = popen("lab", "run", "--server", "caddy", "--dns", "dnsmasq", "--http-port", "53", "--tls",
                 "--out", str(out))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("halfclose lab: error: caddy did not start"), err
    assert list(out.iterdir()) == [], "the PKI the run made is removed"
    # Namespaces that appeared meanwhile belong to other live runs, not to this one.
    for name in _netns() - before:
        claim = Path("/run/halfclose") / f"{name.split('-')[1]}.json"
        assert json.loads(claim.read_text())["pid"] != proc.pid, f"{name} was left behind"
    assert not [p for p in Path("/run/halfclose").glob("*-work") if (p / "server" / "caddy.json").exists()
                and not p.with_name(p.name.removesuffix("-work") + ".json").exists()]
    assert not [line for line in _lab_processes("caddy") if str(proc.pid) in line]
