"""`lab matrix`: a small real matrix (2 servers x 2 clients), its figures checked with tshark on each capture."""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
from pathlib import Path

import pytest

import tshark
from browser import CHROMIUM, load
from halfclose.errors import UsageError
from halfclose.lab.matrix import FIGURES, clients, server_close, servers
from halfclose.report.matrix import LABELS
from labfigures import figures
from runcli import argv, env, halfclose

REQUESTS = 3


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("matrix")
    result = halfclose(
        "lab", "matrix", "--servers", "builtin,nginx", "--clients", "reuse,requests", "--requests", str(REQUESTS),
        "--gap", "2.5", "--idle-timeout", "2", "--out", str(out / "runs"), "--json", str(out / "m.json"),
        "--html", str(out / "m.html"), timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return {"stdout": result.stdout, "stderr": result.stderr, "json": json.loads((out / "m.json").read_text()),
            "html": out / "m.html", "runs": out / "runs"}


def _pairs(run: dict[str, object]) -> dict[tuple[str, str], dict[str, object]]:
    data = run["json"]
    assert isinstance(data, dict)
    return {(p["server"], p["client"]): p for p in data["pairs"]}


def test_every_figure_has_a_label_and_names_parse() -> None:
    assert set(LABELS) == {f.key for f in FIGURES}
    assert [s.value for s in servers("nginx, builtin,nginx")] == ["nginx", "builtin"]
    assert [c.value for c in clients("requests")] == ["requests"]
    with pytest.raises(UsageError, match="--clients: unknown 'nope'"):
        clients("reuse,nope")


def test_how_the_server_closed() -> None:
    assert server_close(figures()) == "FIN"
    assert server_close(figures(server_closed_first=0, server_reset_first=2)) == "RST"
    assert server_close(figures(server_reset_first=1)) == "FIN+RST"
    assert server_close(figures(server_closed_first=0)) == "-"
    assert server_close(figures(keep_alive="timeout=2")) == "FIN, Keep-Alive: timeout=2"
    assert server_close(figures(server_goaway_first=5)) == "GOAWAY, FIN"
    assert server_close(figures(server_close_notify_first=5)) == "close_notify, FIN"
    assert server_close(figures(server_tls_record_first=3)) == "TLS record, FIN"
    assert server_close(figures(server_goaway_first=2, server_tls_record_first=1, server_reset_first=1,
                                keep_alive="timeout=2")) == "GOAWAY+TLS record, FIN+RST, Keep-Alive: timeout=2"


@pytest.mark.root
def test_one_record_per_pair_under_the_configuration(matrix_run: dict[str, object]) -> None:
    data = matrix_run["json"]
    assert isinstance(data, dict)
    assert data["config"]["requests"] == REQUESTS and data["config"]["gap_s"] == 2.5
    assert "server" not in data["config"] and "client" not in data["config"]
    pairs = _pairs(matrix_run)
    assert set(pairs) == {(s, c) for s in ("builtin", "nginx") for c in ("reuse", "requests")}
    for pair in pairs.values():
        assert pair["skipped"] == "" and Path(str(pair["pcap"])).is_file()
        assert set(pair["figures"]) == {f.key for f in FIGURES}
    # Progress per pair on stderr, the matrix on stdout.
    stderr, stdout = matrix_run["stderr"], matrix_run["stdout"]
    assert isinstance(stderr, str) and isinstance(stdout, str)
    assert "[4/4]" in stderr and "[1/4] reuse -> builtin" in stderr
    for figure in FIGURES:
        assert LABELS[figure.key].title in stdout


@pytest.mark.root
def test_figures_match_tshark(matrix_run: dict[str, object]) -> None:
    for (server, client), pair in _pairs(matrix_run).items():
        figures = pair["figures"]
        pcap = Path(str(pair["pcap"]))
        views = sorted(tshark.streams(pcap).values(), key=lambda v: v.syn or 0)
        stale = sum(1 for v in views if v.client_data_after_server_fin)
        assert figures["stale_writes"] == stale, (server, client)
        assert figures["stale_writes"] == (REQUESTS - 1 if client == "reuse" else 0), (server, client)
        assert figures["failed_requests"] == 0
        assert figures["dns_queries_per_request"] == round(tshark.dns_queries(pcap) / REQUESTS, 2)
        # Every server closed its idle connections with a FIN, never a RST first.
        assert all(v.server_fin is not None for v in views[:-1]), (server, client)
        assert not any(v.server_rsts and v.server_fin is None for v in views)
        assert figures["server_close"] == "FIN"
        # From the server's FIN to the client's FIN or RST, whichever ended the connection first.
        lingers = []
        for v in views:
            if v.server_fin is None or (v.client_fin is not None and v.client_fin < v.server_fin):
                continue
            ends = [t for t in [v.client_fin, *v.client_rsts] if t is not None and t >= v.server_fin]
            if ends:
                lingers.append((min(ends) - v.server_fin) * 1000)
        assert figures["server_fin_to_gone_ms"] == pytest.approx(statistics.median(lingers), abs=0.01)
        # Extra round trips: from the first thing the app sent after the server's FIN (a stale write
        # or a DNS query) to the end of the new connection's handshake. The app's clock starts a
        # moment before its first packet, never after.
        sent = sorted(float(r[0]) for r in tshark.fields(
            pcap, ["frame.time_epoch"], "(tcp.dstport == 80 && tcp.len > 0) || (dns && dns.flags.response == 0)"))
        rtts = {int(s): float(v) for s, v in reversed(tshark.fields(
            pcap, ["tcp.stream", "tcp.analysis.initial_rtt"], "tcp.analysis.initial_rtt"))}
        waits = []
        for prev, cur in itertools.pairwise(views):
            assert prev.server_fin is not None and cur.syn is not None
            start = min(t for t in sent if t > prev.server_fin)
            waits.append(cur.syn + rtts[cur.stream] - start)
        oracle = statistics.median(waits) / statistics.median(rtts.values())
        assert oracle - 0.02 <= figures["extra_rtts_per_post_idle_request"] <= oracle + 0.3, (server, client, oracle)
        # A post-idle request needs a DNS answer and a new handshake: two round trips at least.
        assert oracle >= 1.9


@pytest.mark.root
def test_matrix_html_in_chromium(matrix_run: dict[str, object], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: run ./scripts/setup")
    page = matrix_run["html"]
    assert isinstance(page, Path)
    text = page.read_text()
    assert "<script src=\"http" not in text, "plotly.js is embedded, not fetched"
    selectors = [f"#chart-{i} .main-svg" for i in range(len(FIGURES))] + ["#chart-0 .hm image"]
    errors, sizes = load(page, tmp_path / "matrix.png", selectors)
    assert errors == []
    for selector, (width, height) in sizes.items():
        assert width > 0 and height > 0, selector
    for figure in FIGURES:
        assert LABELS[figure.key].title in text


@pytest.mark.root
def test_a_pair_whose_program_is_missing_is_skipped(tmp_path: Path) -> None:
    # A mount namespace in which nginx is an empty, non-executable file: missing, as on a bare host.
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    nginx = subprocess.run(["sh", "-c", "command -v nginx || echo /usr/sbin/nginx"], capture_output=True, text=True,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout.strip()

    def matrix(servers: str, name: str) -> subprocess.CompletedProcess[str]:
        inner = " ".join(argv("lab", "matrix", "--servers", servers, "--clients", "reuse", "--requests", "2",
                              "--gap", "2.5", "--rtt", "0", "--out", str(tmp_path / name),
                              "--json", str(tmp_path / f"{name}.json")))
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount --bind {empty} {nginx} && exec {inner}"],
                              capture_output=True, text=True, env=env(), timeout=300)

    result = matrix("nginx,builtin", "some")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    pairs = {p["server"]: p for p in json.loads((tmp_path / "some.json").read_text())["pairs"]}
    assert "nginx is not installed" in pairs["nginx"]["skipped"]
    assert pairs["nginx"]["pcap"] is None and set(pairs["nginx"]["figures"].values()) == {None}
    assert pairs["builtin"]["skipped"] == "" and pairs["builtin"]["figures"]["stale_writes"] == 1
    assert "reuse -> nginx: skipped: nginx is not installed" in result.stderr
    assert "reuse -> nginx skipped: nginx is not installed" in result.stdout
    assert not (tmp_path / "some" / "nginx-reuse").exists(), "a skipped pair leaves nothing behind"
    # Nothing could run: status 2.
    nothing = matrix("nginx", "none")
    assert nothing.returncode == 2, nothing.stderr
    assert json.loads((tmp_path / "none.json").read_text())["pairs"][0]["skipped"]


def test_unknown_names_are_one_line_before_anything_starts(tmp_path: Path) -> None:
    for option, value in (("--servers", "builtin,apache2000"), ("--clients", "reuse,mosaic")):
        args = {"--servers": "builtin", "--clients": "reuse", option: value}
        result = halfclose("lab", "matrix", *[a for kv in args.items() for a in kv], "--out", str(tmp_path / "r"))
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and option in lines[0] and value.split(",")[1] in lines[0], result.stderr
        assert not (tmp_path / "r").exists()
