"""Queries over a dataset of lab captures: --servers finds the configured idle timeouts,
--stale and --dns count what the lab did, SQL errors are one line, and the fleet page is drawn."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from halfclose.fleet.query import run_query

ROOT = Path(__file__).resolve().parents[1]

#: (label, lab options): nginx closing idle connections after 2 s, the built-in server after 3 s.
LABS = [
    ("site=nginx", ["--server", "nginx", "--idle-timeout", "2"]),
    ("site=builtin", ["--server", "builtin", "--idle-timeout", "3"]),
]


def _halfclose(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "halfclose", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    base = tmp_path_factory.mktemp("labs")
    ds = base / "ds"
    for label, extra in LABS:
        pcap = base / f"{label.split('=')[1]}.pcap"
        done = _halfclose(
            "lab", "run", "--client", "reuse", "--requests", "3", "--gap", "3.6", "--pcap", str(pcap),
            "--out", str(base / label.split("=")[1]), *extra,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        done = _halfclose("analyze", str(pcap), "--dataset", str(ds), "--label", label, "--label", "kind=lab", "-q")
        assert done.returncode == 0, done.stderr
    return ds


@pytest.mark.root
def test_servers_finds_the_configured_idle_timeouts(dataset: Path) -> None:
    done = _halfclose("query", str(dataset), "--servers", "--format", "json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["server"] == "img.lab.test" and row["sets"] == 2 and row["labels"] == 2
    # The servers' 2 s and 3 s timers: never early, late by scheduling (0.3 s allowed; the 3.6 s gap
    # stays outside)
    assert -0.1 <= row["set_min_s"] - 2.0 <= 0.3 and -0.1 <= row["set_max_s"] - 3.0 <= 0.3
    assert abs(row["spread_s"] - (row["set_max_s"] - row["set_min_s"])) <= 1e-6  # about 1 s
    per_label = run_query(str(dataset), "SELECT label, idle_timeout_s FROM servers ORDER BY label").rows
    assert [r[0] for r in per_label] == ["kind=lab,site=builtin", "kind=lab,site=nginx"]
    assert -0.1 <= per_label[0][1] - 3.0 <= 0.3 and -0.1 <= per_label[1][1] - 2.0 <= 0.3


@pytest.mark.root
def test_stale_and_dns(dataset: Path) -> None:
    done = _halfclose("query", str(dataset), "--stale", "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert sorted(r["label"] for r in rows) == ["kind=lab,site=builtin", "kind=lab,site=nginx"]
    for r in rows:  # requests 2 and 3 went into dead connections, each retried on a new one
        assert r["server"] == "img.lab.test" and r["stale_reuse"] == "2" and r["replaced"] == "2"
        assert float(r["wasted_ms"]) > 0 and int(r["dns_lookups"]) >= 2
    remedies = run_query(str(dataset), "SELECT DISTINCT remedies FROM findings WHERE kind = 'stale_reuse'").rows
    assert [list(r[0]) for r in remedies] == [["rules", "reap", "guard", "server-rst"]]
    done = _halfclose("query", str(dataset), "--dns", "--format", "json")
    queries = {r["label"]: r["queries"] for r in json.loads(done.stdout)}
    oracle = run_query(str(dataset), "SELECT label, count(*) FROM dns WHERE queries > 0 GROUP BY label").rows
    assert queries == {label: n for label, n in oracle} and all(n >= 3 for n in queries.values())


@pytest.mark.root
def test_table_output_and_errors(dataset: Path) -> None:
    done = _halfclose("query", str(dataset), "SELECT count(*) AS n, min(labels['site']) AS s FROM connections")
    assert done.returncode == 0 and "builtin" in done.stdout and "1 row" in done.stdout
    done = _halfclose("query", str(dataset), "SELECT nope FROM connections")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nope" in done.stderr
    done = _halfclose("query", str(dataset))
    assert done.returncode == 2 and "--servers" in done.stderr


@pytest.mark.root
def test_fleet_page(dataset: Path, tmp_path: Path) -> None:
    page = tmp_path / "fleet.html"
    done = _halfclose("report", str(dataset), "--html", str(page))
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert text.count("plotly.js v") == 1 or text.count("Plotly") > 1  # plotly.js embedded once, offline
    assert "<script src=\"http" not in text
    assert "Stale reuse per day" in text and "Server idle timeouts" in text
    assert "site=nginx" in text and "img.lab.test" in text and "4 requests" in text
