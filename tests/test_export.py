from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from halfclose.analysis import analyze_batches
from halfclose.analysis.export import CONNECTION_FIELDS, SCHEMA, to_document, write_connections, write_profile
from halfclose.errors import UsageError
from test_engine import stale_scenario


def test_document_has_the_documented_keys_and_is_json() -> None:
    a = analyze_batches(stale_scenario().batches(4))
    doc = json.loads(json.dumps(to_document(a)))
    assert doc["schema"] == SCHEMA
    assert set(doc) == {"schema", "summary", "connections", "findings", "servers", "dns", "issues"}
    assert doc["summary"]["stale_reuse"] == 1
    assert doc["connections"][0]["conn_state"] == "RSTR"
    assert set(doc["connections"][0]) == set(CONNECTION_FIELDS)
    kinds = sorted(f["kind"] for f in doc["findings"])
    assert kinds == ["silent_half_close", "stale_reuse"]
    assert doc["servers"][0] == {
        "server": "img.lab.test", "idle_timeout_s": 2.0, "samples": 1, "min_s": 2.0, "p10_s": 2.0,
        "p90_s": 2.0, "max_s": 2.0, "spread_s": 0.0, "address": "198.18.7.1:80",
    }
    assert doc["dns"]["exchanges"][1]["within_ttl"] is True


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
    assert table.column_names == list(CONNECTION_FIELDS)
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
