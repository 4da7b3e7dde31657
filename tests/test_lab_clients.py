"""The lab's clients: each run for real in a lab (as the app uid, in the phone namespace) against the
built-in server, checked with tshark on the capture; plus the pure parts (curl's options and
output, the records programs write, the registry)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import tshark
from halfclose.lab.app import RequestRecord, Workload
from halfclose.lab.clients import CLIENTS
from halfclose.lab.clients._common import PortTracker, version_text
from halfclose.lab.clients._curl import _MARK, _Parser, argv, rate
from halfclose.lab.clients._external import from_json_line
from halfclose.lab.config import ClientKind
from runcli import halfclose

# -- the pure parts ----------------------------------------------------------------------------------


def test_every_client_kind_has_a_registry_entry() -> None:
    assert set(CLIENTS) == {k.value for k in ClientKind}


def test_workload_url_leaves_out_default_ports() -> None:
    assert Workload(client="curl", host="img.lab.test", port=80).url == "http://img.lab.test/img.png"
    assert Workload(client="curl", host="img.lab.test", port=443, tls=True).url == "https://img.lab.test/img.png"
    assert Workload(client="curl", host="img.lab.test", port=8443, tls=True).url == (
        "https://img.lab.test:8443/img.png")


def test_curl_rate_comes_closest_to_the_gap() -> None:
    assert rate(3) == "20/m"
    assert rate(2.5) == "24/m"
    assert rate(0.5) == "2/s"
    assert rate(7200) == "12/d"
    assert rate(7) == "12343/d"   # 86400 / 12343 = 6.99992 s


def test_curl_options_follow_the_workload() -> None:
    plain = argv(Workload(client="curl", host="h.test", port=80, requests=3, gap_s=3))
    assert "--http1.1" in plain and "--cacert" not in plain
    assert plain[plain.index("--rate") + 1] == "20/m"
    assert plain[-1] == "http://h.test/img.png?n=[1-3]"
    tls = argv(Workload(client="curl", host="h.test", port=443, tls=True, cafile="/x/ca.pem", http2=True, requests=1))
    assert tls[tls.index("--cacert") + 1] == "/x/ca.pem" and "--http2" in tls and "--rate" not in tls
    h2c = argv(Workload(client="curl", host="h.test", port=80, http2=True, requests=2, gap_s=1))
    assert "--http2-prior-knowledge" in h2c


def _curl_line(**fields: object) -> str:
    data = {"http_code": 200, "size_download": 20, "time_total": 0.002, "num_connects": 1, "errormsg": None,
            "local_port": 40000, "http_version": "1.1"} | fields
    return f"{_MARK}{json.dumps(data)}\ttimeout=5"


def test_curl_output_becomes_records() -> None:
    parse = _Parser()
    first = parse(_curl_line())
    assert parse("*   Trying 198.18.0.1:80...") is None
    assert parse("* Re-using existing connection #0 with host img.lab.test") is None
    second = parse(_curl_line(num_connects=0))
    assert parse("* Re-using existing connection #0 with host img.lab.test") is None
    assert parse("* Connection died, retrying a fresh connect (retry count: 1)") is None
    third = parse(_curl_line(local_port=40002))
    failed = parse(_curl_line(http_code=0, size_download=0, errormsg="Failed to connect", http_version="0"))
    assert first is not None and second is not None and third is not None and failed is not None
    assert [r.index for r in (first, second, third, failed)] == [0, 1, 2, 3]
    assert first.ok and not first.reused and first.keep_alive == "timeout=5" and first.http_version == "1.1"
    assert first.latency_ns == 2_000_000
    assert second.reused and not second.reused_dead
    assert third.reused and third.reused_dead and third.attempts == 2 and third.local_port == 40002
    assert not failed.ok and failed.error == "Failed to connect" and failed.http_version == ""


def test_program_lines_become_records() -> None:
    line = json.dumps({"index": 2, "start_ns": 10, "latency_ns": 5, "status": 200, "body_bytes": 7, "error": "",
                       "local_port": 1234, "reused": True, "http_version": "2", "keep_alive": ""})
    record = from_json_line(line)
    assert record == RequestRecord(index=2, start_ns=10, latency_ns=5, ok=True, status=200, body_bytes=7,
                                   reused=True, reused_dead=False, attempts=1, error="", local_port=1234,
                                   dns_lookups=-1, http_version="2", keep_alive="")
    assert from_json_line("(node:1) warning") is None


def test_versions_and_ports() -> None:
    assert [version_text(v) for v in (11, 10, 20, "HTTP/1.1", "HTTP/2", "2.0")] == ["1.1", "1.0", "2", "1.1", "2", "2"]
    ports = PortTracker()
    assert [ports.reused(p) for p in (5, 5, 6, 0, 6)] == [False, True, False, False, True]


# -- every client in a lab ---------------------------------------------------------------------------

WORKLOAD = ("--requests", "3", "--gap", "3", "--idle-timeout", "2", "--dns-ttl", "3")


@dataclass(frozen=True)
class Run:
    run_id: str
    records: list[dict[str, object]]
    pcap: Path
    keylog: Path | None


@dataclass(frozen=True)
class Wire:
    """What tshark shows of a run's HTTP connections."""

    connections: int
    #: HTTP requests the client wrote into a connection after the server's FIN.
    requests_after_fin: int
    server_rsts: int
    dns_queries: int
    #: For each connection the server closed while the client still ran: did the client close
    #: its side (FIN or RST) within 0.5 s of the server's FIN (a background reader), rather than
    #: when it next needed a connection (1 s later in this workload)?
    prompt_closes: list[bool]


def _wire(run: Run, port: int = 80) -> Wire:
    views = tshark.streams(run.pcap, port=port)
    requests = tshark.fields(run.pcap, ["tcp.stream", "frame.time_epoch"],
                             f"tcp.dstport == {port} && (http.request || http2.type == 1)", keylog=run.keylog)
    after = sum(1 for stream, t in requests
                if (fin := views[int(stream)].server_fin) is not None and float(t) > fin)
    last_request = max(float(t) for _, t in requests)
    prompt = []
    for view in views.values():
        if view.server_fin is None or view.server_fin > last_request:
            continue
        ends = [t for t in [view.client_fin, *view.client_rsts] if t is not None and t >= view.server_fin]
        prompt.append(bool(ends) and min(ends) - view.server_fin < 0.5)
    return Wire(connections=sum(v.syn is not None for v in views.values()), requests_after_fin=after,
                server_rsts=sum(bool(v.server_rsts) for v in views.values()), dns_queries=tshark.dns_queries(run.pcap),
                prompt_closes=prompt)


_RUNS: dict[tuple[str, ...], Run] = {}


def _run(tmp_path_factory: pytest.TempPathFactory, client: str, *extra: str) -> Run:
    key = (client, *extra)
    if key not in _RUNS:
        out = tmp_path_factory.mktemp(client)
        done = halfclose("lab", "run", "--client", client, *WORKLOAD, *extra, "--out", str(out / "run"),
                         "--json", str(out / "run.json"))
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        data = json.loads((out / "run.json").read_text())
        keylog = out / "run" / "tls-keys.log"
        _RUNS[key] = Run(run_id=data["run_id"], records=data["requests"], pcap=Path(data["pcap"]),
                         keylog=keylog if keylog.exists() else None)
    return _RUNS[key]


@dataclass(frozen=True)
class Expect:
    """How a client meets the built-in server's idle close (2 s) with 3 s gaps, 3 requests."""

    requests_after_fin: int
    #: DNS queries on the wire (A and AAAA per resolution).
    dns: int | None
    #: Closes its side at once when the server's FIN arrives (True) or only when it next needs a
    #: connection (False); None: it never closes, it writes into the connection instead.
    prompt: bool | None
    reused_dead: int = 0
    extra: tuple[str, ...] = ()


EXPECT = {
    # The field report's app: writes each post-idle request into the dead connection, gets a RST.
    "reuse": Expect(requests_after_fin=2, dns=6, prompt=None, reused_dead=2),
    # Probe the socket at checkout (poll): find the FIN only when the next request comes.
    "urllib3": Expect(requests_after_fin=0, dns=6, prompt=False),
    "httpx": Expect(requests_after_fin=0, dns=6, prompt=False),
    # curl checks at reuse too, and keeps its own DNS cache (60 s). Run with the Keep-Alive header.
    "curl": Expect(requests_after_fin=0, dns=2, prompt=False, extra=("--keepalive-header",)),
    # Background readers: the FIN is seen as it arrives and the client closes at once.
    "aiohttp": Expect(requests_after_fin=0, dns=2, prompt=True),
    "node": Expect(requests_after_fin=0, dns=6, prompt=True),
    "go": Expect(requests_after_fin=0, dns=6, prompt=True),
    # A browser: leaves the server-closed socket in CLOSE_WAIT until it needs one, asks DNS a lot.
    "chromium": Expect(requests_after_fin=0, dns=None, prompt=False),
}


@pytest.mark.root
@pytest.mark.parametrize("client", sorted(EXPECT))
def test_client_against_the_builtin_server(tmp_path_factory: pytest.TempPathFactory, client: str) -> None:
    expect = EXPECT[client]
    run = _run(tmp_path_factory, client, *expect.extra)
    records = run.records
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(r["ok"] for r in records), records
    assert all(r["http_version"] == "1.1" for r in records)
    assert sum(bool(r["reused_dead"]) for r in records) == expect.reused_dead
    # Every idle gap outlasts the server's timeout: no request goes out on a live reused connection.
    assert not any(r["reused"] and not r["reused_dead"] for r in records)
    wire = _wire(run)
    assert wire.requests_after_fin == expect.requests_after_fin
    assert wire.server_rsts == expect.requests_after_fin   # the server resets exactly the stale writes
    assert wire.connections >= 3 if client == "chromium" else wire.connections == 3
    if expect.dns is None:
        assert wire.dns_queries >= 2
    else:
        assert wire.dns_queries == expect.dns
    # Two connections (Chromium: its spare one too) were closed by the server before the last request.
    assert len(wire.prompt_closes) == (len(wire.prompt_closes) if client == "chromium" else 2) >= 2
    assert set(wire.prompt_closes) == {bool(expect.prompt)}
    ports = [r["local_port"] for r in records]
    if client == "chromium":
        assert ports == [0, 0, 0]   # a page cannot see its connection's port
    else:
        # Each request's port is one of the capture's connections.
        syn_ports = {int(row[0]) for row in tshark.fields(run.pcap, ["tcp.srcport"],
                                                          "tcp.flags.syn == 1 && tcp.flags.ack == 0")}
        assert set(ports) <= syn_ports and len(set(ports)) == 3


@pytest.mark.root
def test_curl_reports_the_keep_alive_header(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = _run(tmp_path_factory, "curl", *EXPECT["curl"].extra)
    assert [r["keep_alive"] for r in run.records] == ["timeout=2"] * 3
    plain = _run(tmp_path_factory, "go")
    assert [r["keep_alive"] for r in plain.records] == [""] * 3


@pytest.mark.root
def test_chromium_leaves_nothing_behind(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = _run(tmp_path_factory, "chromium")
    work = f"/run/halfclose/{run.run_id}-work"
    assert not Path(work).exists()   # its profile and home were in there
    cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
    assert not any(work.encode() in c for c in cmdlines)
