"""The client guard in the lab: real kernel TCP, the built-in server, tshark on the capture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tshark
from runcli import halfclose

pytestmark = pytest.mark.root


def _run(tmp_path: Path, *args: str) -> tuple[dict[str, object], Path]:
    result = halfclose("lab", "run", "--out", str(tmp_path), "--json", str(tmp_path / "run.json"), *args)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "run.json").read_text())
    return data, Path(str(data["pcap"]))


WORKLOAD = ("--requests", "4", "--gap", "3", "--idle-timeout", "2", "--dns-ttl", "3")


@pytest.fixture(scope="module")
def plain_requests(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    return _run(tmp_path_factory.mktemp("requests"), "--client", "requests", *WORKLOAD)


@pytest.mark.parametrize("client", ["guard-requests", "guard-httpx"])
def test_guard_writes_nothing_after_fin_and_asks_dns_less(
    tmp_path: Path, client: str, plain_requests: tuple[dict[str, object], Path]
) -> None:
    data, pcap = _run(tmp_path, "--client", client, *WORKLOAD)
    summary = data["summary"]
    assert isinstance(summary, dict)
    assert summary["ok"] == 4 and summary["app_errors"] == 0
    views = tshark.streams(pcap)
    assert all(v.client_data_after_server_fin == 0 for v in views.values())
    assert tshark.dns_queries(pcap) < tshark.dns_queries(plain_requests[1])


def test_race_mode_requests_fails_guard_does_not(tmp_path: Path) -> None:
    plain, _ = _run(tmp_path / "plain", "--client", "requests", "--race", *WORKLOAD)
    guarded, _pcap = _run(tmp_path / "guard", "--client", "guard-requests", "--race", *WORKLOAD)
    plain_summary, guard_summary = plain["summary"], guarded["summary"]
    assert isinstance(plain_summary, dict) and isinstance(guard_summary, dict)
    assert plain_summary["app_errors"] >= 1
    errors = [r["error"] for r in plain["requests"] if not r["ok"]]  # type: ignore[union-attr]
    assert any("Connection aborted" in e for e in errors)
    assert guard_summary["app_errors"] == 0 and guard_summary["ok"] == 4


def test_keepalive_header_retires_before_the_server_closes(tmp_path: Path) -> None:
    # Gaps just under the server's timeout: a plain client reuses and races the server's timer;
    # the guard, told "timeout=2", retires each idle connection itself before the server's FIN.
    args = ("--keepalive-header", "--requests", "4", "--gap", "1.9", "--idle-timeout", "2")
    data, pcap = _run(tmp_path / "guard", "--client", "guard-requests", *args)
    summary = data["summary"]
    assert isinstance(summary, dict) and summary["ok"] == 4
    views = tshark.streams(pcap)
    for view in views.values():
        assert view.client_fin is not None, "the guard closed the connection itself"
        assert view.server_fin is None or view.client_fin < view.server_fin
    _plain, plain_pcap = _run(tmp_path / "plain", "--client", "requests", *args)
    assert len(tshark.streams(plain_pcap)) < len(views), "plain requests reuses what the guard retires"
