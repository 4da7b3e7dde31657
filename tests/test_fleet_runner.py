"""Capture sets end to end: stitched rotations equal the unsplit capture (tshark the oracle),
unrelated captures kept apart, bad files named and skipped, --jobs equal to a sequential run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcap import (
    ROOT,
    editcap_split,
    generate,
    table,
    tcpdump_rotate,
    tshark_stream_packets,
    unsplit_connections,
)
from halfclose.fleet._engine import AnalysisKnobs
from halfclose.fleet.runner import plan, write_run
from halfclose.fleet.sets import parse_labels
from halfclose.netns import Claim
from realcap import make_capture, tshark_counts, workdir


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "halfclose", "analyze", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("gen") / "whole.pcap", 60_000, seed=7)


@pytest.fixture(scope="module")
def lab_pcap() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with Claim() as claim:
        yield make_capture(claim, workdir(claim), ipv6=False).pcap


def _spanning(paths: list[Path], rows: list[dict[str, object]]) -> int:
    """Connections whose packets lie in more than one of the files."""
    starts = sorted(plan([str(p) for p in paths]).sets[0].files, key=lambda f: f.first_ts_ns or 0)
    cuts = [f.first_ts_ns or 0 for f in starts[1:]]
    return sum(1 for r in rows if any(int(r["ts_ns"]) < c <= int(r["end_ns"]) for c in cuts))  # type: ignore[call-overload]


def _stitched_equal_unsplit(unsplit: Path, parts: list[Path], tmp: Path) -> list[dict[str, object]]:
    folder = tmp / "parts"
    folder.mkdir()
    for p in parts:
        shutil.move(p, folder / p.name)
    moved = sorted(folder.iterdir())
    found = plan([str(folder)])
    assert len(found.sets) == 1 and not found.problems
    assert len(found.sets[0].files) == len(moved) > 2
    result = write_run(found.sets, str(tmp / "ds"), labels=parse_labels([]), knobs=AnalysisKnobs())
    assert result.committed is not None
    stitched = table(tmp / "ds", "connections")
    for r in stitched:
        for k in ("capture_set", "label", "labels", "date"):
            r.pop(k)
    assert stitched == unsplit_connections(unsplit)
    # tshark on the unsplit capture: the same connections, packet for packet
    oracle = tshark_stream_packets(unsplit)
    assert Counter(int(r["orig_pkts"]) + int(r["resp_pkts"]) for r in stitched) == oracle  # type: ignore[call-overload]
    assert _spanning(moved, stitched) >= 1  # the test means something: a connection crosses a file boundary
    return stitched


@pytest.mark.root
def test_lab_capture_split_by_editcap_is_stitched(lab_pcap: Path, tmp_path: Path) -> None:
    parts = editcap_split(lab_pcap, tmp_path / "lab.pcap", 9)
    stitched = _stitched_equal_unsplit(lab_pcap, parts, tmp_path)
    assert len(stitched) == tshark_counts(lab_pcap).connections == 4


def test_tcpdump_rotation_is_stitched(generated: Path, tmp_path: Path) -> None:
    parts = tcpdump_rotate(generated, tmp_path / "rot.pcap", 2)
    assert [p.name for p in parts][:3] == ["rot.pcap", "rot.pcap1", "rot.pcap2"]
    _stitched_equal_unsplit(generated, parts, tmp_path)


def test_unrelated_captures_apart_bad_file_named_rest_analysed(generated: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    tcpdump_rotate(generated, inputs / "edge.pcap", 2)
    shutil.copy(generated, inputs / "phone-a.pcap")
    (inputs / "notes.txt").write_text("not a capture\n" * 20)
    unreadable = inputs / "phone-b.pcap"
    unreadable.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 3)  # a pcap header cut short
    done = _cli(str(inputs), "--dataset", str(tmp_path / "ds"), "--label", "site=lab", "-q")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr
    assert any("notes.txt" in line for line in lines) and any("phone-b.pcap" in line for line in lines)
    captures = table(tmp_path / "ds", "captures")
    assert sorted(c["set_name"] for c in captures) == ["edge.pcap", "phone-a.pcap"]
    assert {c["label"] for c in captures} == {"site=lab"}
    assert {tuple(c["labels"]) for c in captures} == {(("site", "lab"),)}
    # the rotation and the copy are the same traffic, analysed separately to the same records
    conns = table(tmp_path / "ds", "connections")
    by_set = Counter(r["capture_set"] for r in conns)
    assert len(by_set) == 2 and len(set(by_set.values())) == 1


def test_jobs_give_the_same_dataset(generated: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        shutil.copy(generated, inputs / f"host{i}.pcap")
    seq = _cli(str(inputs), "--dataset", str(tmp_path / "seq"), "--label", "fleet=x")
    par = _cli(str(inputs), "--dataset", str(tmp_path / "par"), "--label", "fleet=x", "--jobs", "2")
    assert seq.returncode == par.returncode == 0, seq.stderr + par.stderr
    assert seq.stdout.count("host") == 3 and "3 capture sets written" in par.stdout
    for name in ("connections", "findings", "dns", "servers", "captures"):
        assert table(tmp_path / "seq", name) == table(tmp_path / "par", name), name


def test_several_captures_without_a_dataset(generated: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    shutil.copy(generated, a)
    shutil.copy(generated, b)
    done = _cli(str(a), str(b))
    assert done.returncode == 0 and done.stdout.count("== capture set") == 2
    done = _cli(str(tmp_path / "*.pcap"), "--json", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "--dataset" in done.stderr and done.stderr.count("\n") == 1
    done = _cli(str(a), "--jobs", "2")
    assert done.returncode == 2 and "--dataset" in done.stderr


def test_one_rotation_keeps_the_single_capture_outputs(generated: Path, tmp_path: Path) -> None:
    tcpdump_rotate(generated, tmp_path / "rot.pcap", 2)
    out = tmp_path / "out.json"
    done = _cli(str(tmp_path / "rot.pcap*"), "--json", str(out), "-q")
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    unsplit = unsplit_connections(generated)
    assert doc["summary"]["tcp_connections"] == len(unsplit)
    assert sorted(c["uid"] for c in doc["connections"]) == sorted(str(c["uid"]) for c in unsplit)
