"""A run's figures from the app's records: the post-idle rule, medians, quantiles, the sentences."""

from __future__ import annotations

from halfclose.lab.app import RequestRecord
from halfclose.lab.config import LabConfig
from halfclose.lab.figures import app_figures, is_post_idle, median, quantile
from halfclose.lab.figures import ms as to_ms
from halfclose.report.lab import summary_lines


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
    summary = app_figures(records, LabConfig(gap_s=3, idle_timeout_s=2))
    assert summary.requests == 5 and summary.ok == 5
    assert summary.post_idle == 4
    assert summary.reused_dead == 3
    assert summary.connections == 5
    assert summary.dns_lookups == 5
    assert summary.median_ms_dead == 7.0
    assert summary.median_ms_other == 21.0
    text = "\n".join(summary_lines(summary, LabConfig()))
    assert "3 of 4 post-idle requests" in text


def test_short_gaps_are_not_post_idle_and_unknown_lookups_stay_unknown() -> None:
    records = [_record(0, lookups=-1), _record(1, lookups=-1)]
    summary = app_figures(records, LabConfig(gap_s=1, idle_timeout_s=2))
    assert summary.post_idle == 0
    assert summary.dns_lookups == -1
    assert "DNS lookups" not in "\n".join(summary_lines(summary, LabConfig()))


def test_failures_are_counted() -> None:
    summary = app_figures([_record(0), _record(1, ok=False)], LabConfig())
    assert summary.app_errors == 1 and summary.ok == 1


def test_post_idle_is_every_request_after_the_first_when_the_gap_beats_the_timeout() -> None:
    long_gap, short_gap = LabConfig(gap_s=3, idle_timeout_s=2), LabConfig(gap_s=2, idle_timeout_s=2)
    assert [is_post_idle(_record(i), long_gap) for i in range(3)] == [False, True, True]
    assert not any(is_post_idle(_record(i), short_gap) for i in range(3))


def test_one_median_one_quantile_one_rounding() -> None:
    assert median([]) is None and quantile([], 0.95) is None
    assert median([3, 1, 2]) == 2 and median([4, 1, 3, 2]) == 2.5
    # Nearest rank: the p95 of a few values is one of them, the largest here.
    assert quantile([10, 30, 20], 0.95) == 30 and quantile([10, 30, 20], 0.5) == 20
    assert to_ms(1_234_567) == 1.235 and to_ms(None) is None


def test_retries_and_p95_of_post_idle_latency() -> None:
    records = [_record(0, ms=40), _record(1, dead=True, ms=6), _record(2, ms=9), _record(3, ms=7)]
    figures = app_figures(records, LabConfig(gap_s=3, idle_timeout_s=2))
    assert figures.app_retries == 1
    assert figures.p95_ms_post_idle == 9.0 and figures.median_ms_post_idle == 7.0
    assert figures.median_ms_warm == 40.0
