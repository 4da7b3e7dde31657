"""The dataset's declared tables: docs generated from them, columns still in the analysis records,
and part files written with exactly the declared schemas."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pyarrow.parquet as pq

from fleetcap import generate
from halfclose.analysis import DnsExchange, Finding, ServerTimeout, Summary
from halfclose.fleet import schema
from halfclose.fleet._engine import AnalysisKnobs, connection_columns
from halfclose.fleet.dataset import Dataset
from halfclose.fleet.runner import plan, write_run
from halfclose.fleet.sets import parse_labels

ROOT = Path(__file__).resolve().parents[1]

RECORDS = {"DnsExchange": DnsExchange, "ServerTimeout": ServerTimeout, "Summary": Summary, "Finding": Finding}
#: Columns of a table that the fleet adds (not read from the analysis record).
ADDED = {
    "captures": {"set_name", "files", "bytes", "first_ts_ns", "last_ts_ns", "capture_issues"},
    "findings": {"evidence", "remedies"},
}


def test_docs_are_generated_from_the_schema() -> None:
    doc = (ROOT / "docs" / "fleet.md").read_text()
    assert schema.rewrite(doc) == doc, "run: python -m halfclose.fleet.schema docs/fleet.md"
    assert schema.markdown() in doc


def test_declared_columns_exist_in_the_analysis_records() -> None:
    for t in schema.TABLES.values():
        if t.name == "connections":
            continue
        record = RECORDS[t.record]
        kinds = typing.get_args(record) or (record,)  # Finding is a union of one record per kind
        fields = set.intersection(*({f.name for f in dataclasses.fields(k)} for k in kinds))
        fields |= {name for name in ("kind",) if all(hasattr(k, name) for k in kinds)}
        own = {c.name for c in t.columns} - ADDED.get(t.name, set())
        assert own <= fields, (t.name, own - fields)


def test_parts_have_the_declared_schemas(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    generate(tmp_path / "in" / "a.pcap", 20_000, seed=3)
    ds = tmp_path / "ds"
    write_run(plan([str(tmp_path / "in")]).sets, str(ds), labels=parse_labels(["host=a"]), knobs=AnalysisKnobs())
    fleet = [c.name for c in schema.FLEET_COLUMNS]
    for name, t in schema.TABLES.items():
        (path,) = Dataset(str(ds)).files(name)
        written = pq.read_schema(path)
        own = [c.name for c in t.columns]
        if name == "connections":
            assert written.names == [*fleet, *own, *connection_columns()]
        else:
            assert written.equals(schema.arrow_schema((*schema.FLEET_COLUMNS, *t.columns)), check_metadata=False)
        assert pq.read_table(path).num_rows >= 1, name
