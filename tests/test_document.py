"""The JSON document of an analysis (pure)."""

from __future__ import annotations

import json

from halfclose.analysis import analyze_batches
from halfclose.analysis.document import CONNECTION_COLUMNS, SCHEMA, finding_dicts, plain, to_document
from halfclose.analysis.remedies import remedies_for
from test_engine import stale_scenario


def test_document_has_the_documented_keys_and_is_json() -> None:
    a = analyze_batches(stale_scenario().batches(4))
    doc = json.loads(json.dumps(to_document(a)))
    assert doc["schema"] == SCHEMA
    assert set(doc) == {"schema", "summary", "connections", "findings", "servers", "dns", "issues"}
    assert doc["summary"]["stale_reuse"] == 1
    assert doc["connections"][0]["conn_state"] == "RSTR"
    assert set(doc["connections"][0]) == set(CONNECTION_COLUMNS)
    kinds = sorted(f["kind"] for f in doc["findings"])
    assert kinds == ["silent_half_close", "stale_reuse"]
    assert doc["servers"][0] == {
        "server": "img.lab.test", "idle_timeout_s": 2.0, "samples": 1, "min_s": 2.0, "p10_s": 2.0,
        "p90_s": 2.0, "max_s": 2.0, "spread_s": 0.0, "address": "198.18.7.1:80",
    }
    assert doc["dns"]["exchanges"][1]["within_ttl"] is True



def test_findings_keep_their_evidence_object() -> None:
    a = analyze_batches(stale_scenario().batches(4))
    doc = json.loads(json.dumps(to_document(a)))
    (stale,) = [f for f in doc["findings"] if f["kind"] == "stale_reuse"]
    assert list(stale) == ["kind", "ts_ns", "uids", "server", "evidence", "remedies"]
    assert stale["remedies"] == ["rules", "reap", "guard", "server-rst"]
    assert list(stale["evidence"]) == [
        "server_fin_ns", "stale_write_ns", "write_after_fin_ns", "stale_segments", "outcome", "replacement_uid",
        "wasted_ns", "wasted_rtts", "rtt_ns", "dns_lookups",
    ]
    assert stale["evidence"]["outcome"] == "rst"


def test_finding_dicts_are_the_records_values() -> None:
    a = analyze_batches(stale_scenario().batches(4))
    assert len({type(f) for f in a.findings}) >= 2
    expected = []
    for f in a.findings:
        own = plain(f)
        common = {k: own.pop(k) for k in ("ts_ns", "uids", "server")}
        expected.append({"kind": f.kind.value, **common, "evidence": own, "remedies": list(remedies_for(f.kind.value))})
    assert finding_dicts(a) == expected
    assert [list(d) for d in finding_dicts(a)] == [list(d) for d in expected]
    assert [list(d["evidence"]) for d in finding_dicts(a)] == [list(d["evidence"]) for d in expected]
    assert finding_dicts(a, slice(1, None)) == expected[1:]


def test_encodable_findings_are_the_bytes_of_finding_dicts() -> None:
    """The writer's findings (enums and tuples left to orjson) encode as the plain dicts do, block by block."""
    import orjson

    from halfclose.analysis.document import encodable_findings

    a = analyze_batches(stale_scenario().batches(4))
    assert len({type(f) for f in a.findings}) >= 2
    assert orjson.dumps(encodable_findings(a)) == orjson.dumps(finding_dicts(a))
    assert orjson.dumps(encodable_findings(a, slice(1, None))) == orjson.dumps(finding_dicts(a, slice(1, None)))


def test_encodable_servers_are_the_bytes_of_server_dicts() -> None:
    """Server idle timeouts, records of plain fields, are written by orjson as their dicts."""
    import orjson

    from halfclose.analysis.document import encodable_servers, server_dicts

    a = analyze_batches(stale_scenario().batches(4))
    assert a.servers
    written = orjson.dumps(encodable_servers(a))
    assert written == orjson.dumps(server_dicts(a)) == orjson.dumps(to_document(a)["servers"])


def test_finding_groups_are_the_findings_by_kind() -> None:
    """Column-wise by kind: every finding once, at its position, with the values of its dict."""
    from halfclose.analysis.document import finding_groups
    from halfclose.analysis.records import plain_rows

    a = analyze_batches(stale_scenario().batches(4))
    groups = finding_groups(a)
    assert len(groups) >= 2
    dicts = finding_dicts(a)
    seen = []
    for g in groups:
        for row, common, evidence in zip(g.rows.tolist(), plain_rows(g.common), plain_rows(g.evidence), strict=True):
            assert dicts[row] == {"kind": g.kind, **common, "evidence": evidence, "remedies": list(g.remedies)}
            seen.append(row)
    assert sorted(seen) == list(range(len(dicts)))
    assert finding_groups(a, slice(0, 0)) == []
