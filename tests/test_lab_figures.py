"""A run's figures from the app's records: the post-idle rule, medians, quantiles, the sentences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from halfclose.lab.app import RequestRecord
from halfclose.lab.config import LabConfig
from halfclose.lab.figures import app_figures, is_post_idle, median, quantile, run_figures, waits_ns
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


def _fast_open_capture(path: Path, t: int) -> None:
    """A connection from port 40001 whose SYN carries the GET, 50 ms round trip, closed by the client."""
    from capture_bytes import ETH_IPV4, Rec, eth, ipv4, pcap, tcp

    get, reply = b"GET /img.png HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def out(ts: int, **kw: Any) -> Rec:
        return Rec(ts_ns=ts, data=eth(ETH_IPV4, ipv4(6, tcp(40001, 80, **kw))))

    def back(ts: int, **kw: Any) -> Rec:
        return Rec(ts_ns=ts, data=eth(ETH_IPV4, ipv4(6, tcp(80, 40001, **kw),
                                                     src="198.18.0.2", dst="198.18.0.1")))

    c, s = 1000, 5000
    path.write_bytes(pcap([
        out(t, seq=c, flags=0x02, payload=get),
        back(t + 50_000_000, seq=s, ack=c + 1 + len(get), flags=0x12),
        out(t + 50_100_000, seq=c + 1 + len(get), ack=s + 1, flags=0x10),
        back(t + 50_200_000, seq=s + 1, ack=c + 1 + len(get), flags=0x18, payload=reply),
        out(t + 50_300_000, seq=c + 1 + len(get), ack=s + 1 + len(reply), flags=0x11),
        back(t + 100_000_000, seq=s + 1 + len(reply), ack=c + 2 + len(get), flags=0x11),
        out(t + 100_100_000, seq=c + 2 + len(get), ack=s + 2 + len(reply), flags=0x10),
    ]))


def test_a_request_that_rode_in_the_syn_waited_until_the_syn_not_a_round_trip_later(tmp_path: Path) -> None:
    from halfclose.analysis_io import analyze
    from halfclose.lab.syndata import syn_data_by_port

    t = 1_700_000_000_000_000_000
    path = tmp_path / "tfo.pcap"
    _fast_open_capture(path, t)
    analysis = analyze([path])
    (conn,) = analysis.connections
    assert conn.handshake_rtt_ns is not None and conn.handshake_rtt_ns >= 50_000_000
    record = RequestRecord(index=1, start_ns=t - 2_000_000, latency_ns=53_000_000, ok=True, status=200,
                           body_bytes=0, reused=False, reused_dead=False, attempts=1, error="",
                           local_port=40001, dns_lookups=0)
    # Without Fast Open the request's first byte could leave only after the handshake.
    assert waits_ns([record], analysis) == {1: 2_000_000 + conn.handshake_rtt_ns}
    syn_data = syn_data_by_port(path)
    assert waits_ns([record], analysis, syn_data) == {1: 2_000_000}
    figures = run_figures([record], analysis, LabConfig(gap_s=3, idle_timeout_s=2), link_mode="bridge",
                          syn_data=syn_data)
    assert figures.syn_data_conns == 1
    assert figures.post_idle_wait_ms == 2.0
    rtt_ms = figures.wire.rtt_ms_median
    assert rtt_ms is not None
    assert figures.post_idle_beyond_rtt_ms == round(53.0 - rtt_ms, 3)
    plain = run_figures([record], analysis, LabConfig(gap_s=3, idle_timeout_s=2), link_mode="bridge")
    assert plain.syn_data_conns == 0
