"""Prometheus metrics: histogram buckets, address parsing, what a scrape of the collectors shows."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from halfclose.errors import UsageError
from halfclose.reap.agent import Counters
from halfclose.reap.metrics import (
    LatencyHistogram,
    MetricsAddress,
    ReaperCollector,
    WatchCollector,
    parse_address,
    watch_figures,
)
from halfclose.reap.watch import Row


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    h = LatencyHistogram(buckets=(0.001, 0.01))
    for v in (0.0005, 0.001, 0.002, 5.0):
        h.observe(v)
    assert h.cumulative() == [("0.001", 2.0), ("0.01", 3.0), ("+Inf", 4.0)]
    assert h.count == 4 and h.total == pytest.approx(5.0035)


def test_metrics_addresses() -> None:
    assert parse_address("9101") == MetricsAddress(host="", port=9101)
    assert parse_address("127.0.0.1:9101") == MetricsAddress(host="127.0.0.1", port=9101)
    assert parse_address("[::1]:9101") == MetricsAddress(host="::1", port=9101)
    assert str(parse_address("[::1]:9101")) == "[::1]:9101" and str(parse_address("80")) == "0.0.0.0:80"
    for bad in ("", "x", "0", "65536", "host:80", "1.2.3.4:"):
        with pytest.raises(UsageError):
            parse_address(bad)


def _scrape(collector: object) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def test_reaper_collector_names_follow_prometheus_conventions() -> None:
    c = Counters(fins_seen=5, vanished=1, overruns=2, reloads=1)
    c.destroyed_by_uid[10400] = 3
    c.skip("unread-data", 10400)
    c.skip("unread-data", 10400)
    h = LatencyHistogram()
    h.observe(0.0003)
    got = _scrape(ReaperCollector(counters=lambda: c, latency=lambda: h, close_wait=lambda: {10401: 2},
                                  info=lambda: {"version": "0.1.0", "trigger": "nflog", "backend": "nft"}))
    assert got["halfclose_reap_fins_seen_total[]"] == 5
    assert got["halfclose_sockets_destroyed_total[('uid', '10400')]"] == 3
    assert got["halfclose_sockets_skipped_total[('reason', 'unread-data'), ('uid', '10400')]"] == 2
    assert got["halfclose_sockets_vanished_total[]"] == 1
    assert got["halfclose_nflog_overruns_total[]"] == 2
    assert got["halfclose_reap_reloads_total[]"] == 1
    assert got["halfclose_close_wait_sockets[('uid', '10401')]"] == 2
    assert got["halfclose_fin_to_destroy_seconds_count[]"] == 1
    assert got["halfclose_fin_to_destroy_seconds_bucket[('le', '0.0005')]"] == 1
    assert got["halfclose_fin_to_destroy_seconds_bucket[('le', '0.00025')]"] == 0
    assert got["halfclose_reap_info[('backend', 'nft'), ('trigger', 'nflog'), ('version', '0.1.0')]"] == 1


def test_watch_collector_sums_rows_per_uid() -> None:
    rows = [Row(uid=1, pid=5, comm="a", total=4, established=1, close_wait=3, close_wait_unread=1,
                oldest_close_wait=2.5, other=0),
            Row(uid=1, pid=6, comm="b", total=1, established=0, close_wait=1, close_wait_unread=0,
                oldest_close_wait=9.0, other=0)]
    figures = watch_figures(rows)
    got = _scrape(WatchCollector(figures=lambda: figures, info={"version": "0.1.0", "netns": "x"}))
    assert got["halfclose_close_wait_sockets[('uid', '1')]"] == 4
    assert got["halfclose_close_wait_unread_sockets[('uid', '1')]"] == 1
    assert got["halfclose_close_wait_oldest_seconds[('uid', '1')]"] == 9.0
    assert got["halfclose_tcp_sockets[('uid', '1')]"] == 5
    assert got["halfclose_watch_info[('netns', 'x'), ('version', '0.1.0')]"] == 1
