from __future__ import annotations

from halfclose.lab.app import RequestRecord
from halfclose.lab.config import LabConfig
from halfclose.lab.summary import render_summary, summarize


def _record(index: int, *, dead: bool = False, ms: float = 5.0, ok: bool = True, port: int = 40000,
            lookups: int = 1) -> RequestRecord:
    return RequestRecord(index=index, start_ns=index * 3_000_000_000, latency_ns=int(ms * 1e6), ok=ok,
                         status=200 if ok else 0, body_bytes=20000 if ok else 0, reused=index > 0,
                         reused_dead=dead, attempts=2 if dead else 1, error="x" if dead else "",
                         local_port=port + index, dns_lookups=lookups)


def test_counts_dead_reuse_and_medians() -> None:
    # Request 4 reused a live connection: reused, but not dead.
    records = [_record(0, ms=40), _record(1, dead=True, ms=6), _record(2, dead=True, ms=8),
               _record(3, dead=True, ms=7), _record(4, ms=2)]
    summary = summarize(records, LabConfig(gap_s=3, idle_timeout_s=2))
    assert summary.requests == 5 and summary.ok == 5
    assert summary.post_idle == 4
    assert summary.reused_dead == 3
    assert summary.connections == 5
    assert summary.dns_lookups == 5
    assert summary.median_ms_dead == 7.0
    assert summary.median_ms_other == 21.0
    text = "\n".join(render_summary(summary, LabConfig()))
    assert "3 of 4 post-idle requests" in text


def test_short_gaps_are_not_post_idle_and_unknown_lookups_stay_unknown() -> None:
    records = [_record(0, lookups=-1), _record(1, lookups=-1)]
    summary = summarize(records, LabConfig(gap_s=1, idle_timeout_s=2))
    assert summary.post_idle == 0
    assert summary.dns_lookups == -1
    assert "DNS lookups" not in "\n".join(render_summary(summary, LabConfig()))


def test_failures_are_counted() -> None:
    summary = summarize([_record(0), _record(1, ok=False)], LabConfig())
    assert summary.app_errors == 1 and summary.ok == 1
