from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from halfclose.analysis import analyze_batches
from halfclose.analysis.document import CONNECTION_COLUMNS
from halfclose.errors import UsageError
from halfclose.report.analysis_files import write_connections, write_json, write_profile
from test_engine import stale_scenario


def test_csv_and_parquet_tables(tmp_path: Path) -> None:
    a = analyze_batches(stale_scenario().batches(4))
    write_connections(a, str(tmp_path / "c.csv"))
    with (tmp_path / "c.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["uid"] for r in rows] == [c.uid for c in a.connections]
    assert rows[0]["stale_write_ns"] == str(a.connections[0].stale_write_ns)
    assert rows[1]["stale_write_ns"] == ""
    write_connections(a, str(tmp_path / "c.parquet"))
    table = pq.read_table(tmp_path / "c.parquet")
    assert table.column_names == list(CONNECTION_COLUMNS)
    assert table.column("history").to_pylist() == [c.history for c in a.connections]
    assert table.column("stale_write_ns").to_pylist()[1] is None
    with pytest.raises(UsageError):
        write_connections(a, str(tmp_path / "c.xlsx"))


def test_profile(tmp_path: Path) -> None:
    a = analyze_batches(stale_scenario().batches(4))
    write_profile(a, str(tmp_path / "p.json"))
    assert json.loads((tmp_path / "p.json").read_text()) == {"img.lab.test": 2.0}


def test_profile_is_what_the_client_guard_reads(tmp_path: Path) -> None:
    from halfclose.client import load_profile

    a = analyze_batches(stale_scenario().batches(4))
    write_profile(a, str(tmp_path / "p.json"))
    assert load_profile(tmp_path / "p.json").idle_timeout("img.lab.test", 80) == 2.0


def test_files_are_written_atomically(tmp_path: Path) -> None:
    a = analyze_batches(stale_scenario().batches(4))
    target = tmp_path / "a.json"
    target.write_text("old")
    write_json(a, str(target))
    assert json.loads(target.read_text())["summary"]["stale_reuse"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file left

    class Boom(Exception):
        pass

    def fail(*_: object) -> None:
        raise Boom

    import halfclose.report.analysis_files as files

    orig = files._csv
    files._csv = fail  # type: ignore[assignment]
    try:
        (tmp_path / "c.csv").write_text("old")
        with pytest.raises(Boom):
            write_connections(a, str(tmp_path / "c.csv"))
    finally:
        files._csv = orig  # type: ignore[assignment]
    assert (tmp_path / "c.csv").read_text() == "old"  # the target is untouched by a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.csv"]


def test_unwritable_folder_is_one_clear_error(tmp_path: Path) -> None:
    from halfclose.errors import EnvironmentProblem

    a = analyze_batches(stale_scenario().batches(4))
    with pytest.raises(EnvironmentProblem, match="cannot write"):
        write_profile(a, str(tmp_path / "missing" / "p.json"))


def test_a_large_document_written_block_by_block_is_the_whole_document(tmp_path: Path) -> None:
    """Above 2,000 connections the JSON is compact and the connections are encoded 1,000 at a
    time: the file holds exactly the document (every connection once, in order), small or large."""
    from halfclose.analysis.document import to_document
    from pktbuild import MS, Builder

    b = Builder()
    for i in range(2500):
        c = b.tcp(("198.18.0.10", 20000 + i), ("198.19.0.1", 443))
        t = i * MS
        c.syn(t)
        c._send(t + MS, False, 0x12)
        c.ack(t + 2 * MS, True)
        c.data(t + 3 * MS, True, 100)
        c.rst(t + 4 * MS, False)
    a = analyze_batches(b.batches(4096))
    assert len(a.connections) == 2500
    target = tmp_path / "big.json"
    switch = sys.getswitchinterval()
    write_json(a, str(target))
    assert sys.getswitchinterval() == switch  # (shortened while two threads write it)
    doc = json.loads(target.read_text())
    assert doc == json.loads(json.dumps(to_document(a)))
    assert [c["orig_p"] for c in doc["connections"]] == list(range(20000, 22500))
    assert target.read_text().count("\n") == 1  # compact


def test_a_large_document_is_whole_whether_its_blocks_can_be_reserved_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compact document's large pieces have their blocks reserved before they are written;
    where that fails (a file system without it, no room for it) the same bytes are written."""
    import os

    from halfclose.analysis.document import to_document
    from halfclose.report import analysis_files

    a = analyze_batches(stale_scenario().batches(4))
    monkeypatch.setattr(analysis_files, "_INDENTED_MAX", 0)
    monkeypatch.setattr(analysis_files, "_RESERVED_FROM", 1)
    reserved: list[tuple[int, int]] = []
    real = os.posix_fallocate

    def reserve(fd: int, offset: int, size: int) -> None:
        reserved.append((offset, size))
        real(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", reserve)
    write_json(a, str(tmp_path / "a.json"))
    doc = (tmp_path / "a.json").read_bytes()
    assert reserved and reserved[-1][0] + reserved[-1][1] <= len(doc)  # never past what was written

    def cannot(fd: int, offset: int, size: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", cannot)
    write_json(a, str(tmp_path / "b.json"))
    assert (tmp_path / "b.json").read_bytes() == doc
    assert json.loads(doc) == json.loads(json.dumps(to_document(a)))


def test_every_long_list_is_written_block_by_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections, findings and DNS exchanges, one per block (the compact path forced): the file
    is the whole document."""
    from halfclose.analysis.document import to_document
    from halfclose.report import analysis_files

    a = analyze_batches(stale_scenario().batches(4))
    assert len(a.connections) == 2 and len(a.findings) >= 1 and len(a.dns.exchanges) == 2
    monkeypatch.setattr(analysis_files, "_INDENTED_MAX", 0)
    monkeypatch.setattr(analysis_files, "_JSON_BLOCK", 1)
    target = tmp_path / "blocks.json"
    write_json(a, str(target))
    assert json.loads(target.read_text()) == json.loads(json.dumps(to_document(a)))


def test_records_written_by_template_are_the_bytes_orjson_writes_for_their_dicts() -> None:
    """Every kind of column value (escaped and non-ASCII strings, a %, missing values, bools, floats,
    tuples, small and large tables): the same bytes as orjson over the records' dicts."""
    import numpy as np
    import orjson

    from halfclose.analysis._common import MISSING_CODE, MISSING_INT
    from halfclose.analysis.records import Block, Coded, Ints, Texts, plain_rows
    from halfclose.report.analysis_files import _rows_json, _RowWriter

    codes = np.array([0, MISSING_CODE, 2, 1], dtype=np.int64)
    big = np.array([5, 0, MISSING_CODE, 7], dtype=np.int64)
    block: Block = {
        "plain": Texts(["a", "b%s", "c", "d"]),
        "escaped": Texts(['q"uote', "back\\slash", "tab\t", "caf\u00e9"]),
        "quote": Texts(['q"', "", "r", "s"]),
        "backslash": Texts(["\\", "t", "u", "v"]),
        "odd name": Coded(codes, ("x", 'y"', "z")),
        "%key": Ints(np.array([1, -2, 3, 4], dtype=np.int64)),
        "optional": Ints(np.array([MISSING_INT, 0, -7, 2**62], dtype=np.int64), optional=True),
        "enum": Coded(codes, ("x", "y", "z")),
        "odd strings": Coded(codes, ("x", 'y"', "\u00fc")),
        "flags": Coded(np.array([1, 0, 0, 1], dtype=np.int64), (False, True)),
        "numbers": Coded(codes, (1.5, 1e16, None)),
        "tuples": Coded(codes, (("1.2.3.4", "::1"), (), (30,)), (), tuples=True),
        "names": Coded(big, tuple(f"n{i}" for i in range(10))),
        "names, one odd": Coded(big, tuple(f"n{i}" if i != 7 else "\u00e9" for i in range(10))),
    }
    assert _rows_json(block) == orjson.dumps(plain_rows(block))[1:-1]
    assert _rows_json({"a": Ints(np.empty(0, np.int64))}) == b""
    assert _rows_json({}) == b""
    # the kernel's writer (its plain Python form here): the same bytes, a table shared by blocks
    # encoded once; an int64 minimum that is no missing value written as a number
    writer = _RowWriter()
    assert bytes(writer.rows(block)) == orjson.dumps(plain_rows(block))[1:-1]
    assert bytes(writer.rows(block)) == orjson.dumps(plain_rows(block))[1:-1]
    edge: Block = {"n": Ints(np.array([MISSING_INT, 0, 2**63 - 1], dtype=np.int64)), "t": Texts(["", "é", "\x00"])}
    assert bytes(writer.rows(edge)) == orjson.dumps(plain_rows(edge))[1:-1]
    assert writer.rows({"a": Ints(np.empty(0, np.int64))}) == b""
    assert writer.rows({}) == b""
    # a column whose table is empty (every value missing: a block of stale writes none replaced)
    none: Block = {"t": Coded(np.full(3, MISSING_CODE, np.int64), []), "u": Coded(np.arange(3), [None, 1.5, None])}
    assert bytes(writer.rows(none)) == orjson.dumps(plain_rows(none))[1:-1]


def test_findings_written_by_kind_are_the_bytes_orjson_writes_for_their_dicts() -> None:
    """Findings of several kinds, interleaved: each kind's records written by the kernel (its plain
    Python form here), then put back in order, are the bytes of their dicts; a block of them too."""
    import dataclasses

    import orjson

    from halfclose.analysis.document import finding_dicts, finding_groups
    from halfclose.analysis.findings import FindingKind
    from halfclose.report.analysis_files import _RowWriter

    a = analyze_batches(stale_scenario().batches(4))
    odd = [dataclasses.replace(f, server='we"ird\u00e9', uids=(*f.uids, "C\\x")) for f in a.findings]
    a = dataclasses.replace(a, findings=(*a.findings, *odd, *a.findings))  # every kind three times, interleaved
    kinds = [f.kind for f in a.findings]
    assert len(set(kinds)) >= 2 and all(kinds.count(k) == 3 for k in kinds)
    writer = _RowWriter()
    assert bytes(writer.findings(finding_groups(a))()) == orjson.dumps(finding_dicts(a))[1:-1]
    for rows in (slice(1, None), slice(0, 1), slice(5, 5)):
        assert bytes(writer.findings(finding_groups(a, rows))()) == orjson.dumps(finding_dicts(a, rows))[1:-1]
    # a block in which no stale write was replaced: the replacement uids' table is empty
    stale = [f for f in a.findings if f.kind is FindingKind.STALE_REUSE]
    lone = dataclasses.replace(a, findings=tuple(dataclasses.replace(f, replacement_uid=None) for f in stale))
    assert stale and all(f.replacement_uid is None for f in lone.findings)
    assert bytes(writer.findings(finding_groups(lone))()) == orjson.dumps(finding_dicts(lone))[1:-1]


def test_a_document_written_meanwhile_is_complete_and_its_failure_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread's document is the one write_json writes, whether the block beside it fails
    or not; its own failure (half the document written) is raised at the block's end, after the
    block ran, and leaves the old file; an unwritable path fails before the block."""
    from halfclose.errors import EnvironmentProblem
    from halfclose.report import analysis_files
    from halfclose.report.analysis_files import json_written_meanwhile

    a = analyze_batches(stale_scenario().batches(4))
    monkeypatch.setattr(analysis_files, "_INDENTED_MAX", 0)
    switch = sys.getswitchinterval()
    write_json(a, str(tmp_path / "ref.json"))
    ref = (tmp_path / "ref.json").read_bytes()
    ran: list[str] = []
    with json_written_meanwhile(a, str(tmp_path / "a.json")):
        ran.append("block")
    assert ran == ["block"] and (tmp_path / "a.json").read_bytes() == ref

    class Boom(Exception):
        pass

    with pytest.raises(Boom), json_written_meanwhile(a, str(tmp_path / "b.json")):
        raise Boom
    assert (tmp_path / "b.json").read_bytes() == ref

    pieces = analysis_files._json_pieces

    def failing(result: object) -> object:
        it = pieces(result)  # type: ignore[arg-type]
        yield next(it)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(analysis_files, "_json_pieces", failing)
    (tmp_path / "c.json").write_text("old")
    c_json = str(tmp_path / "c.json")
    with pytest.raises(EnvironmentProblem, match="No space left") as raised, json_written_meanwhile(a, c_json):
        ran.append("block")
        raise Boom
    assert isinstance(raised.value.__cause__, OSError) and isinstance(raised.value.__cause__.__context__, Boom)
    assert sys.getswitchinterval() == switch
    assert ran == ["block", "block"]
    assert (tmp_path / "c.json").read_text() == "old"
    with pytest.raises(EnvironmentProblem, match="cannot write"), json_written_meanwhile(a, str(tmp_path / "no" / "d")):
        ran.append("never")
    assert ran == ["block", "block"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json", "ref.json"]
