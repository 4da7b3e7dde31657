"""The lab's clients: each run for real in a lab (as the app uid, in the phone namespace) against the
built-in server, checked with tshark on the capture; plus the pure parts (curl's options and
output, the records programs write, the registry)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
    port: int
    keylog: Path | None


@dataclass(frozen=True)
class Wire:
    """What tshark shows of a run's HTTP connections (TLS decrypted with the run's key log).

    The server's close of a connection is its first closing record: a TLS close_notify, an HTTP/2
    GOAWAY or its FIN, whichever comes first; the client's close likewise (or its RST).
    """

    connections: int
    #: HTTP requests (HTTP/2: HEADERS frames) the client wrote after the server's close.
    requests_after_close: int
    server_rsts: int
    dns_queries: int
    #: For each connection the server closed while the client still ran: seconds from the
    #: server's close to the client's (None: the client did not close it; 0.0: the client had closed
    #: it first).
    client_close_s: list[float | None]


def _closing(alert: str, h2_types: str) -> bool:
    return alert == "0" or "7" in h2_types.split(",")


def _wire(run: Run) -> Wire:
    port = run.port
    views = tshark.streams(run.pcap, port=port)
    rows = tshark.fields(run.pcap, ["tcp.stream", "frame.time_epoch", "tcp.srcport", "tls.alert_message.desc",
                                    "http2.type", "http.request.method"],
                         f"tcp.port == {port} && (tls.alert_message || http2.type == 7 || http2.type == 1 || "
                         "http.request)", keylog=run.keylog)
    server_close = {stream: view.server_fin for stream, view in views.items()}
    client_close = {stream: [t for t in [view.client_fin, *view.client_rsts] if t is not None]
                    for stream, view in views.items()}
    requests: list[tuple[int, float]] = []
    for stream_s, time_s, sport, alert, h2_types, method in rows:
        stream, t = int(stream_s), float(time_s)
        if int(sport) == port:
            first = server_close[stream]
            if _closing(alert, h2_types) and (first is None or t < first):
                server_close[stream] = t
        elif method or "1" in h2_types.split(","):
            requests.append((stream, t))
        elif _closing(alert, h2_types):
            client_close[stream].append(t)
    after = sum(1 for stream, t in requests if (c := server_close[stream]) is not None and t > c)
    last_request = max(t for _, t in requests)
    closes: list[float | None] = []
    for stream in views:
        c = server_close[stream]
        if c is None or c > last_request:
            continue
        mine = client_close[stream]
        if mine and min(mine) < c:  # the client closed it first (the guard's retirement timer): no wait
            closes.append(0.0)
            continue
        ends = [t for t in mine if t >= c]
        closes.append(min(ends) - c if ends else None)
    return Wire(connections=sum(v.syn is not None for v in views.values()), requests_after_close=after,
                server_rsts=sum(bool(v.server_rsts) for v in views.values()), dns_queries=tshark.dns_queries(run.pcap),
                client_close_s=closes)


def _lab_run(case: str, out: Path) -> Run:
    expect = CASES[case]
    done = halfclose("lab", "run", "--client", expect.client, *WORKLOAD, *expect.args, "--out", str(out / "run"),
                     "--json", str(out / "run.json"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads((out / "run.json").read_text())
    keylog = out / "run" / "tls-keys.log"
    return Run(run_id=data["run_id"], records=data["requests"], pcap=Path(data["pcap"]),
               port=int(data["config"]["http_port"]), keylog=keylog if keylog.exists() else None)


#: Cases that run alone: a browser's start-up keeps both cores of a CI machine busy for seconds,
#: which would delay the other lab's client past what its timing checks allow (and the reverse).
SOLO = frozenset({"chromium"})


class Labs:
    """The cases' lab runs, each made once; asking for one also starts the next case's run, so that
    two labs run at a time (their gaps are mostly sleep), except the :data:`SOLO` cases."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._pool = ThreadPoolExecutor(max_workers=2)
        self._runs: dict[str, Future[Run]] = {}

    def _start(self, case: str) -> Future[Run]:
        if case not in self._runs:
            if case in SOLO:  # once every other run has ended
                wait(list(self._runs.values()))
            self._runs[case] = self._pool.submit(_lab_run, case, self._tmp.mktemp(case))
        return self._runs[case]

    def get(self, case: str) -> Run:
        future = self._start(case)
        order = list(CASES)
        following = order[order.index(case) + 1] if order.index(case) + 1 < len(order) else None
        if following is not None and case not in SOLO and following not in SOLO:
            self._start(following)
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    runs = Labs(tmp_path_factory)
    yield runs
    runs.close()


@dataclass(frozen=True)
class Expect:
    """How a client meets the built-in server's idle close (2 s) with 3 s gaps, 3 requests."""

    client: str
    args: tuple[str, ...] = ()
    #: Post-idle requests it writes into the closed connection (each answered by a RST and resent).
    stale: int = 0
    #: DNS queries on the wire (A and AAAA per resolution); None: at least one resolution.
    dns: int | None = 6
    #: True: it closes its side at once when the server closes (a background reader); False: only
    #: when it next needs a connection, 1 s later here (a check at checkout); None: never, it
    #: writes into the connection instead.
    prompt: bool | None = False
    http_version: str = "1.1"
    #: Whether the server's RSTs are exactly the stale writes' (False: the server also resets a
    #: client's own closing records arriving after it closed, as over TLS).
    rsts_are_stale: bool = True


CASES = {
    # The field report's app: writes each post-idle request into the dead connection, gets a RST.
    "reuse": Expect(client="reuse", stale=2, prompt=None),
    "reuse-tls": Expect(client="reuse", args=("--tls",), stale=2, prompt=None),
    # A readability check at checkout (poll) finds the FIN only when the next request comes.
    "urllib3": Expect(client="urllib3"),
    "httpx": Expect(client="httpx"),
    "requests-tls": Expect(client="requests", args=("--tls",)),
    # httpcore's HTTP/2 connection has no such check: it writes, then resends on a new connection.
    "httpx-h2": Expect(client="httpx", args=("--tls", "--http2"), stale=2, prompt=None, http_version="2"),
    # curl checks at reuse too and keeps its own DNS cache (60 s); over TLS the server's close_notify
    # makes the socket readable with data, curl takes it as alive, writes, and resends by itself.
    "curl": Expect(client="curl", args=("--keepalive-header",), dns=2),
    "curl-tls": Expect(client="curl", args=("--tls",), dns=2, stale=2, prompt=None),
    "curl-h2": Expect(client="curl", args=("--tls", "--http2"), dns=2, http_version="2"),
    # Background readers: the close is seen as it arrives and the client closes at once.
    "aiohttp": Expect(client="aiohttp", dns=2, prompt=True),
    "aiohttp-tls": Expect(client="aiohttp", args=("--tls",), dns=2, prompt=True, rsts_are_stale=False),
    "node": Expect(client="node", prompt=True),
    "node-tls": Expect(client="node", args=("--tls",), prompt=True, rsts_are_stale=False),
    "go": Expect(client="go", prompt=True),
    "go-tls": Expect(client="go", args=("--tls",), prompt=True, rsts_are_stale=False),
    "go-h2": Expect(client="go", args=("--tls", "--http2"), prompt=True, http_version="2", rsts_are_stale=False),
    # halfclose's guard closes its pooled connections at the server's FIN (epoll), or first once it knows the
    # server's idle timeout (its retirement timer); its DNS cache resolves once.
    "guard-httpx-tls": Expect(client="guard-httpx", args=("--tls",), dns=2, prompt=True, rsts_are_stale=False),
    "guard-aiohttp": Expect(client="guard-aiohttp", dns=2, prompt=True),
    # A browser (one run: its start is slow): trusts the run's CA through an NSS database, speaks
    # h2, asks DNS a lot, opens a spare connection.
    "chromium": Expect(client="chromium", args=("--tls", "--http2"), dns=None, prompt=None, http_version="2",
                       rsts_are_stale=False),
}


@pytest.mark.root
@pytest.mark.parametrize("case", list(CASES))
def test_client_against_the_builtin_server(labs: Labs, case: str) -> None:
    expect = CASES[case]
    run = labs.get(case)
    records = run.records
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(r["ok"] for r in records), [(r["index"], r["latency_ns"], r["error"]) for r in records if not r["ok"]]
    assert all(r["http_version"] == expect.http_version for r in records)
    # The app's account of its stale writes matches the wire's.
    assert sum(bool(r["reused_dead"]) for r in records) == expect.stale
    # Every idle gap outlasts the server's timeout: no request goes out on a live reused connection.
    assert not any(r["reused"] and not r["reused_dead"] for r in records)
    wire = _wire(run)
    assert wire.requests_after_close == expect.stale
    if expect.rsts_are_stale:
        assert wire.server_rsts == expect.stale
    # Each request's port is one of the capture's connections.
    ports = [int(str(r["local_port"])) for r in records]
    syns = {int(row[0]) for row in tshark.fields(run.pcap, ["tcp.srcport"], "tcp.flags.syn == 1 && tcp.flags.ack == 0")}
    assert set(ports) <= syns and len(set(ports)) == 3
    if expect.client == "chromium":
        assert wire.connections >= 3
        assert wire.dns_queries >= 2
        return
    assert wire.connections == 3
    assert wire.dns_queries == expect.dns
    assert len(wire.client_close_s) == 2
    if expect.prompt is None:
        assert wire.client_close_s == [None, None]
    else:
        assert all(c is not None and (c < 0.5) == expect.prompt for c in wire.client_close_s), wire


@pytest.mark.root
def test_keep_alive_header_as_the_client_saw_it(labs: Labs) -> None:
    assert [r["keep_alive"] for r in labs.get("curl").records] == ["timeout=2"] * 3
    assert [r["keep_alive"] for r in labs.get("go").records] == [""] * 3


@pytest.mark.root
def test_chromium_leaves_nothing_behind(labs: Labs) -> None:
    run = labs.get("chromium")
    work = f"/run/halfclose/{run.run_id}-work"
    assert not Path(work).exists()   # its profile, home and NSS database were in there
    cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
    assert not any(work.encode() in c for c in cmdlines)


@pytest.mark.root
def test_tls_runs_leave_a_key_log_that_decrypts_the_capture(labs: Labs) -> None:
    run = labs.get("go-tls")
    assert run.keylog is not None
    uris = tshark.fields(run.pcap, ["http.request.uri"], "http.request", keylog=run.keylog)
    assert [row[0] for row in uris] == ["/img.png?n=0", "/img.png?n=1", "/img.png?n=2"]
    assert tshark.fields(run.pcap, ["http.request.uri"], "http.request") == []   # encrypted without it
    sni = tshark.fields(run.pcap, ["tls.handshake.extensions_server_name"], "tls.handshake.type == 1")
    assert [row[0] for row in sni] == ["img.lab.test"] * 3
