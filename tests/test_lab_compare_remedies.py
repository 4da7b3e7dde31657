"""`lab compare`'s remedies beyond the default five, on one shared run, with tshark as the oracle.

The run: ``lab compare --strategies server-rst,dns-cache,rules-verbatim,rules-naive,rules,guard+server-announce
--rtt 50 --requests 6 --gap 3 --idle-timeout 2`` (DNS TTL 3 s, the phone cache's floor 300 s).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import tshark
from halfclose.lab.compare import DEFAULT_STRATEGIES, REMEDIES, Deploy, Outcome, ranking, remedies
from halfclose.lab.config import LabConfig
from halfclose.lab.figures import RunFigures
from halfclose.lab.runner import LabResult
from halfclose.report.lab import COSTS, verdict
from labfigures import figures as _figures
from runcli import halfclose

STRATEGIES = "server-rst,dns-cache,rules-verbatim,rules-naive,rules,guard+server-announce"
BY_NAME = {r.name: r for r in REMEDIES}


def _outcome(name: str, figures: RunFigures) -> Outcome:
    result = LabResult(run_id="000000", config=LabConfig(), run_dir=Path("."), pcap=Path("x.pcap"), records=(),
                       server_address="", phone_address="", figures=figures, analysis=None)  # type: ignore[arg-type]
    return Outcome(remedy=BY_NAME[name], result=result)


def test_all_names_every_remedy_and_the_default_set_is_the_first_five() -> None:
    assert remedies("all") == REMEDIES
    assert DEFAULT_STRATEGIES == "none,rules,reap,guard,requests"
    assert set(COSTS) == {r.name for r in REMEDIES}
    assert BY_NAME["server-rst"].deploy == {Deploy.SERVER}
    assert BY_NAME["guard+server-announce"].deploy == {Deploy.SERVER, Deploy.APP}
    assert BY_NAME["dns-cache"].client is BY_NAME["none"].client  # the report's app, unchanged


def test_ranking_puts_less_waste_first_and_breaks_ties_by_deploy_cost() -> None:
    same = _figures(post_idle_wait_rtts=1.0)
    outcomes = [_outcome("none", _figures(stale_writes=5, post_idle_wait_rtts=2.0)),
                _outcome("guard+server-announce", same), _outcome("server-rst", same),
                _outcome("dns-cache", _figures(post_idle_wait_rtts=1.0, dns_queries=2))]
    ranked = [o.remedy.name for o in ranking(outcomes)]
    assert ranked == ["dns-cache", "server-rst", "guard+server-announce", "none"]
    assert "Ranked by the waste left" in verdict(outcomes)


@pytest.fixture(scope="module")
def remedies_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("remedies")
    result = halfclose(
        "lab", "compare", "--strategies", STRATEGIES, "--rtt", "50", "--requests", "6", "--gap", "3",
        "--idle-timeout", "2", "--out", str(out / "runs"), "--json", str(out / "compare.json"),
        "--html", str(out / "report.html"), timeout=900,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "compare.json").read_text())
    return {"stdout": result.stdout, "by": {s["strategy"]: s for s in data["strategies"]}, "json": data,
            "html": (out / "report.html").read_text()}


def _by(run: dict[str, object]) -> dict[str, dict[str, object]]:
    by = run["by"]
    assert isinstance(by, dict)
    return by


@pytest.mark.root
def test_every_strategy_ran_and_the_ranking_is_shown(remedies_run: dict[str, object]) -> None:
    by = _by(remedies_run)
    assert list(by) == STRATEGIES.split(",")
    assert all(not s["skipped"] for s in by.values())
    data = remedies_run["json"]
    assert isinstance(data, dict) and sorted(data["ranking"]) == sorted(by)
    stdout, page = remedies_run["stdout"], remedies_run["html"]
    assert isinstance(stdout, str) and isinstance(page, str)
    assert "ranked by the waste left" in stdout and "root on the device" in stdout
    assert 'id="ranking"' in page and "a server change" in page


@pytest.mark.root
def test_server_rst_closes_with_a_reset_and_nothing_is_written_after_it(remedies_run: dict[str, object]) -> None:
    pcap = Path(str(_by(remedies_run)["server-rst"]["pcap"]))
    rows = tshark.fields(pcap, ["tcp.stream", "frame.time_epoch", "tcp.srcport", "tcp.len", "tcp.flags.fin",
                                "tcp.flags.reset"], "tcp")
    server_close: dict[int, tuple[float, str]] = {}  # stream -> the server's first FIN or RST, and which
    client_fin: dict[int, float] = {}
    last_server_data: dict[int, float] = {}
    server_fins: Counter[int] = Counter()
    payload_after_close = 0
    for stream_s, time_s, sport, length, fin, rst in rows:
        stream, t, from_server = int(stream_s), float(time_s), int(sport) == 80
        is_fin, is_rst = fin in ("1", "True"), rst in ("1", "True")
        if from_server:
            server_fins[stream] += is_fin
            if is_fin or is_rst:
                server_close.setdefault(stream, (t, "RST" if is_rst else "FIN"))
            if int(length or 0) > 0:
                last_server_data[stream] = t
        else:
            if is_fin:
                client_fin.setdefault(stream, t)
            if int(length or 0) > 0 and stream in server_close and t > server_close[stream][0]:
                payload_after_close += 1
    closed_by_server = {s: v for s, v in server_close.items() if s not in client_fin or v[0] < client_fin[s]}
    assert len(closed_by_server) >= 5  # the idle close of each post-idle request's connection
    assert {kind for _, kind in closed_by_server.values()} == {"RST"}
    assert all(server_fins[s] == 0 for s in closed_by_server)  # no FIN, so no FIN retransmission either
    assert all(n <= 1 for n in server_fins.values())  # the client's own close is answered by one FIN
    assert payload_after_close == 0
    for stream, (t, _) in closed_by_server.items():  # the reset is the idle close (2 s), not an answer
        assert t - last_server_data[stream] >= 1.5, stream


@pytest.mark.root
def test_dns_cache_asks_each_record_type_once(remedies_run: dict[str, object]) -> None:
    s = _by(remedies_run)["dns-cache"]
    assert s["client"] == "reuse"
    pcap = Path(str(s["pcap"]))
    types = [row[0] for row in tshark.fields(pcap, ["dns.qry.type"],
                                             'dns.flags.response == 0 && dns.qry.name == "img.lab.test"')]
    counts = Counter(types)
    assert counts["1"] == 1  # A: one query in the whole run (TTL 3 s, floor 300 s, six requests 3 s apart)
    assert counts.get("28", 0) <= 1  # AAAA
    assert set(counts) <= {"1", "28"}
    assert tshark.dns_queries(pcap) == s["metrics"]["dns_queries"] <= 2  # type: ignore[index]
    # The same app without the cache asks for every new connection.
    assert tshark.dns_queries(Path(str(_by(remedies_run)["rules"]["pcap"]))) >= 6


def _client_closed(pcap: Path) -> list[tshark.StreamView]:
    return [v for v in tshark.streams(pcap).values()
            if v.client_fin is not None and (v.server_fin is None or v.client_fin < v.server_fin)]


@pytest.mark.root
def test_the_reports_rules_refused_and_what_the_ports_break(remedies_run: dict[str, object]) -> None:
    by = _by(remedies_run)
    literal, naive = by["rules-verbatim"], by["rules-naive"]
    for s in (literal, naive):
        v = s["verbatim"]
        assert isinstance(v, dict)
        (refused,) = v["refused"]
        assert "-A INPUT -m owner --uid-owner 10400" in refused["command"]
        assert "Invalid argument" in refused["message"]
        assert v["marks_overwritten"] == v["app_packets"] > 0
    stdout = remedies_run["stdout"]
    assert isinstance(stdout, str)
    words = " ".join(stdout.split())  # the table's caption, unwrapped
    assert "rules-verbatim: the kernel refused 'iptables -t filter -A INPUT -m owner --uid-owner 10400" in words
    # Both ports reject the final ACK of a connection the client closed (the app closes its last one
    # at the end): the server repeats its FIN, and the client's stack, its socket reset by the
    # rejection, answers the repeat with a RST. halfclose rules let that ACK through.
    for s in (literal, naive):
        damaged = [v for v in _client_closed(Path(str(s["pcap"])))
                   if v.server_fins >= 2 and any(t > v.server_fin for t in v.client_rsts)]  # type: ignore[operator]
        assert damaged and s["metrics"]["client_close_unacked"] == len(damaged)  # type: ignore[index]
    lost = literal["metrics"]["client_close_unacked"]  # type: ignore[index]
    closed = "1 connection the client closed itself lost its" if lost == 1 else f"{lost} connections the client " \
        "closed itself lost their"
    assert f"rules-verbatim: ported (owner match moved to OUTPUT, where it labels the app's connections), the " \
        f"rules reset {literal['verbatim']['rejected']} outgoing packets; {closed} final ACK (the server repeated " \
        "its FIN; halfclose rules let that ACK through)" in words  # type: ignore[index]
    page = remedies_run["html"]
    assert isinstance(page, str)
    assert "the kernel refused &#x27;iptables -t filter -A INPUT -m owner --uid-owner 10400" in page
    assert f"{closed} final ACK (the server repeated its FIN; halfclose rules let that ACK through)" in page
    closed_by_client = _client_closed(Path(str(by["rules"]["pcap"])))
    assert closed_by_client and all(v.server_fins == 1 and not v.client_rsts for v in closed_by_client)
    assert by["rules"]["metrics"]["client_close_unacked"] == 0  # type: ignore[index]


@pytest.mark.root
def test_guard_with_the_announced_timeout(remedies_run: dict[str, object]) -> None:
    s = _by(remedies_run)["guard+server-announce"]
    metrics = s["metrics"]
    assert isinstance(metrics, dict)
    views = tshark.streams(Path(str(s["pcap"])))
    assert all(v.client_data_after_server_fin == 0 for v in views.values())
    # The guard's retirement timer closes each pooled connection at 1.5 s idle (timeout=2 less the
    # margin), before the server's timer: every connection's first FIN is the client's.
    assert len(views) >= 6
    assert all(v.client_fin is not None and (v.server_fin is None or v.client_fin < v.server_fin)
               for v in views.values()), {v.stream: (v.client_fin, v.server_fin) for v in views.values()}
    assert metrics["server_fin_retransmits"] == 0
    assert metrics["stale_writes"] == 0 and metrics["app_errors"] == 0
    keep_alive = tshark.fields(Path(str(s["pcap"])), ["http.response.line"], "http.response")
    assert any("Keep-Alive: timeout=2" in row[0] for row in keep_alive)
