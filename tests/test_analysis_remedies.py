"""The remedy table: which remedies remove each kind of finding, and the best one for a capture."""

from __future__ import annotations

from halfclose.analysis import FindingKind
from halfclose.analysis.remedies import REDUNDANT_DNS, REMEDIES_BY_FINDING, best_remedy, remedies_for
from halfclose.lab.compare import REMEDIES


def test_every_finding_kind_has_remedies_that_lab_compare_measures() -> None:
    assert {k.value for k in FindingKind} | {REDUNDANT_DNS} == set(REMEDIES_BY_FINDING)
    names = {r.name for r in REMEDIES}
    assert all(set(rs) <= names for rs in REMEDIES_BY_FINDING.values())
    assert remedies_for("stale_reuse") == ("rules", "reap", "guard", "server-rst")
    assert remedies_for(REDUNDANT_DNS) == ("dns-cache", "guard")
    assert remedies_for("unknown") == ()


def test_best_remedy_removes_most_and_prefers_the_app_on_a_tie() -> None:
    assert best_remedy({"stale_reuse": 3, REDUNDANT_DNS: 4}) == ("guard", 7)
    assert best_remedy({"silent_half_close": 2, "lost_fin_ack": 2}) == ("reap", 4)
    assert best_remedy({"lost_fin_ack": 1, "silent_half_close": 0}) == ("reap", 1)
    assert best_remedy({REDUNDANT_DNS: 0}) is None
    assert best_remedy({}) is None
