"""`lab compare`: five strategies, figures from each capture's analysis, cross-checked with tshark."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import tshark
from halfclose.errors import UsageError
from halfclose.lab.compare import REMEDIES, Outcome, least_wasteful, metrics, remedies
from halfclose.lab.config import LabConfig
from halfclose.lab.figures import RunFigures
from halfclose.lab.runner import LabResult
from halfclose.report.lab import COSTS, verdict
from labfigures import figures as _figures
from runcli import argv, env

BY_NAME = {r.name: r for r in REMEDIES}


def _outcome(name: str, figures: RunFigures | None, skipped: str = "") -> Outcome:
    # Only the figures of a run matter here; the rest of a LabResult is left empty.
    result = None
    if figures is not None:
        result = LabResult(run_id="000000", config=LabConfig(), run_dir=Path("."), pcap=Path("x.pcap"), records=(),
                           server_address="", phone_address="", figures=figures,
                           analysis=None)  # type: ignore[arg-type]
    return Outcome(remedy=BY_NAME[name], result=result, skipped=skipped)


def test_verdict_names_the_least_wasteful_and_its_cost() -> None:
    outcomes = [
        _outcome("none", _figures(stale_writes=5, rsts=5, app_retries=5)),
        _outcome("rules", _figures(server_fin_retransmits=5)),
        _outcome("guard", _figures(post_idle_wait_ms=50.0, post_idle_wait_rtts=1.0, dns_queries=2)),
        _outcome("reap", None, skipped="no NFLOG"),
    ]
    assert least_wasteful(outcomes) is outcomes[2]
    text = verdict(outcomes)
    assert text.startswith("guard wasted least")
    assert COSTS["guard"] in text
    assert "Doing nothing cost 100.0 ms" in text
    assert "5 stale writes" in text
    assert "reap (no NFLOG)" in text


def test_verdict_when_nothing_ran() -> None:
    text = verdict([_outcome("rules", None, skipped="nft missing")])
    assert "No strategy could run" in text and "nft missing" in text


def test_every_remedy_has_a_cost_and_names_parse_in_order() -> None:
    assert set(COSTS) == {r.name for r in REMEDIES}
    assert [r.name for r in remedies(" reap, none ")] == ["reap", "none"]
    with pytest.raises(UsageError, match="'magic'"):
        remedies("none,magic")
    with pytest.raises(UsageError, match="empty"):
        remedies(",")


def test_metrics_are_the_run_figures_flat() -> None:
    figures = _figures(stale_writes=3, dns_queries=7)
    flat = metrics(figures)
    assert flat["stale_writes"] == 3 and flat["dns_queries"] == 7
    assert flat["post_idle_ms_median"] == figures.app.median_ms_post_idle
    assert flat["rtt_ms"] == figures.wire.rtt_ms_median
    assert flat["server_linger_ms"] == figures.wire.server_linger_ms_median




@pytest.mark.root
def test_compare_done_when(compare_run: dict[str, object]) -> None:
    data = compare_run["json"]
    assert isinstance(data, dict)
    by = {s["strategy"]: s for s in data["strategies"]}
    assert list(by) == ["none", "rules", "reap", "guard", "requests"]
    assert all(not s["skipped"] for s in by.values())
    m = {name: s["metrics"] for name, s in by.items()}
    # none: payload after the server's FIN, and more than one extra round trip per post-idle request.
    assert m["none"]["stale_writes"] == 5
    assert m["none"]["post_idle_wait_rtts"] >= 1.0
    for name in ("rules", "reap", "guard"):
        assert m[name]["stale_writes"] == 0, name
        assert m[name]["app_errors"] == 0, name
    assert m["rules"]["server_fin_retransmits"] >= 1
    assert m["reap"]["server_fin_retransmits"] == 0
    assert m["guard"]["dns_queries"] < m["none"]["dns_queries"]
    for name in by:
        assert 48 <= m[name]["rtt_ms"] <= 60, name
    stdout = compare_run["stdout"]
    assert isinstance(stdout, str)
    assert "wasted least" in stdout
    for label in ("payload after a server FIN", "server FIN retransmissions", "DNS queries"):
        assert label in stdout


@pytest.mark.root
def test_compare_figures_match_tshark(compare_run: dict[str, object]) -> None:
    data = compare_run["json"]
    assert isinstance(data, dict)
    for s in data["strategies"]:
        pcap = Path(s["pcap"])
        views = tshark.streams(pcap)
        stale = sum(1 for v in views.values() if v.client_data_after_server_fin)
        assert s["metrics"]["stale_writes"] == stale, s["strategy"]
        assert s["metrics"]["dns_queries"] == tshark.dns_queries(pcap), s["strategy"]
        assert s["metrics"]["tcp_connections"] == len(views), s["strategy"]


@pytest.mark.root
def test_a_strategy_that_cannot_run_is_skipped(tmp_path: Path) -> None:
    # A mount namespace in which the netfilter front ends are empty, non-executable files.
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    hide = []
    for name in ("nft", "iptables", "iptables-legacy", "iptables-nft", "iptables-restore", "ip6tables-restore",
                 "iptables-legacy-restore", "iptables-nft-restore", "ip6tables-legacy-restore",
                 "ip6tables-nft-restore", "iptables-save", "ip6tables-save", "ip6tables"):
        for folder in ("/usr/sbin", "/sbin", "/usr/bin"):
            path = Path(folder) / name
            if (path.exists() and not path.is_symlink()) or (path.is_symlink() and path.resolve().exists()):
                hide.append(f"mount --bind {empty} {path}")
    inner = " ".join(argv("lab", "compare", "--strategies", "none,rules", "--requests", "2", "--gap", "2.5",
                          "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "c.json")))
    script = " && ".join([*hide, f"exec {inner}"])
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr
    import json

    data = json.loads((tmp_path / "c.json").read_text())
    by = {s["strategy"]: s for s in data["strategies"]}
    assert by["rules"]["skipped"] and by["rules"]["metrics"] is None
    assert not by["none"]["skipped"] and by["none"]["metrics"]["stale_writes"] == 1
    assert "rules skipped" in result.stdout


def test_bad_strategy_name_is_one_line(tmp_path: Path) -> None:
    from runcli import halfclose

    result = halfclose("lab", "compare", "--strategies", "none,magic")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--strategies" in lines[0] and "magic" in lines[0]
