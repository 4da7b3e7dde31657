"""The dataset: a killed run leaves it readable and unchanged, runs at once both land, URLs work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetcap import ROOT, generate, table
from halfclose.errors import EnvironmentProblem
from halfclose.fleet.dataset import Dataset, new_run_id, write_text_atomic

TABLES = ("connections", "findings", "dns", "servers", "captures")


def _popen(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-m", "halfclose", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _done(p: subprocess.Popen[str]) -> int:
    _, err = p.communicate(timeout=300)
    assert "Traceback" not in err, err
    return p.returncode


def _query(ds: Path, sql: str) -> list[dict[str, object]]:
    p = _popen("query", str(ds), sql, "--format", "json")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    rows: list[dict[str, object]] = json.loads(out)
    return rows


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("caps")
    first = generate(folder / "host0.pcap", 30_000, seed=21)
    for i in range(1, 8):
        shutil.copy(first, folder / f"host{i}.pcap")
    return folder


def _snapshot(ds: Path) -> dict[str, object]:
    return {
        "manifests": Dataset(str(ds)).manifests(),
        "runs": sorted(p.name for p in (ds / "runs").iterdir()),
        **{name: table(ds, name) for name in TABLES},
    }


def test_killed_run_leaves_the_dataset_unchanged(captures: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    p = _popen("analyze", str(captures / "host0.pcap"), "--dataset", str(ds), "--label", "n=1", "-q")
    assert _done(p) == 0
    before = _snapshot(ds)
    count = _query(ds, "SELECT count(*) AS n FROM connections")
    p = _popen("analyze", str(captures), "--dataset", str(ds), "--label", "n=2", "-q")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((ds / "_staging").glob("*/captures/**/*.parquet")):
        assert p.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    _done(p)
    assert list((ds / "_staging").glob("*/*/**/*.parquet")), "killed while writing"
    assert _snapshot(ds) == before
    assert _query(ds, "SELECT count(*) AS n FROM connections") == count
    # the next run commits and clears what the dead one left
    p = _popen("analyze", str(captures / "host1.pcap"), "--dataset", str(ds), "-q")
    assert _done(p) == 0
    assert len(Dataset(str(ds)).manifests()) == 2
    assert not any((ds / "_staging").iterdir())


def test_two_runs_at_once_both_land(captures: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    one = [str(captures / "host0.pcap"), str(captures / "host1.pcap")]
    procs = [_popen("analyze", *one, "--dataset", str(ds), "--label", f"run={i}", "-q") for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert len(Dataset(str(ds)).manifests()) == 2
    rows = _query(ds, "SELECT label, count(DISTINCT capture_set) AS sets, count(*) AS n FROM connections "
                      "GROUP BY label ORDER BY label")  # fmt: skip
    assert [r["label"] for r in rows] == ["run=0", "run=1"]
    assert rows[0]["n"] == rows[1]["n"] and rows[0]["sets"] == 2


def test_a_file_url_is_a_dataset(captures: Path, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/ds"
    p = _popen("analyze", str(captures / "host0.pcap"), "--dataset", url, "-q")
    assert _done(p) == 0
    assert table(tmp_path / "ds", "captures")[0]["set_name"] == "host0.pcap"
    assert _query(tmp_path / "ds", "SELECT count(*) AS n FROM captures") == [{"n": 1}]


def test_no_dataset_is_one_line(tmp_path: Path) -> None:
    p = _popen("query", str(tmp_path), "--servers")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1 and "halfclose analyze" in err


def test_run_ids_sort_by_time_and_differ() -> None:
    a, b = new_run_id(), new_run_id()
    assert a != b and a[:16] == b[:16] and a.endswith(a[-8:]) and len(a) == 25


def test_atomic_text(tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    write_text_atomic(str(target), "one")
    write_text_atomic(str(target), "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["page.html"]
    with pytest.raises(EnvironmentProblem):
        write_text_atomic(str(tmp_path / "missing" / "x.html"), "x")


def test_inputs_and_dataset_at_fsspec_urls(captures: Path) -> None:
    """A non-local file system (fsspec's in-memory one): inputs copied in, parts written, manifest last."""
    import fsspec

    from halfclose.fleet._engine import AnalysisKnobs
    from halfclose.fleet.query import run_query
    from halfclose.fleet.runner import plan, write_run
    from halfclose.fleet.sets import parse_labels

    fs = fsspec.filesystem("memory")
    fs.pipe("/caps/host0.pcap", (captures / "host0.pcap").read_bytes())
    fs.pipe("/caps/notes.txt", b"not a capture")
    found = plan(["memory://caps"])
    assert [s.paths for s in found.sets] == [("memory:///caps/host0.pcap",)]
    assert len(found.problems) == 1 and "notes.txt" in found.problems[0]
    result = write_run(found.sets, "memory://ds", labels=parse_labels(["store=mem"]), knobs=AnalysisKnobs())
    assert result.committed is not None and not fs.ls("/ds/_staging")
    rows = run_query("memory://ds", "SELECT label, set_name, files FROM captures").rows
    assert rows == [("store=mem", "host0.pcap", ["memory:///caps/host0.pcap"])]
    local = write_run(plan([str(captures / "host0.pcap")]).sets, str(captures.parent / "local-ds"),
                      labels=parse_labels(["store=mem"]), knobs=AnalysisKnobs())  # fmt: skip
    assert local.committed is not None
    sql = "SELECT * EXCLUDE (run_id, file) FROM connections ORDER BY uid"
    assert run_query("memory://ds", sql).rows == run_query(str(captures.parent / "local-ds"), sql).rows
