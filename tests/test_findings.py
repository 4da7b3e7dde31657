from __future__ import annotations

import numpy as np

from halfclose.analysis import AnalysisOptions, FindingKind, analyze_batches
from pktbuild import MS, Builder, S

SV = ("198.18.13.1", 80)


def idle_closes(idles_ms: list[int]) -> Builder:
    b = Builder()
    t = 0
    for k, idle in enumerate(idles_ms):
        c = b.tcp(("198.18.13.2", 41000 + k), SV, isn_c=1000 + k)
        c.handshake(t)
        c.data(t + 20 * MS, True, 50)
        c.data(t + 30 * MS, False, 50)
        c.fin(t + 30 * MS + idle * MS, False)
        c.fin(t + 40 * MS + idle * MS, True)
        t += 20 * S
    return b


def test_server_timeout_statistics() -> None:
    idles = [1000, 2000, 3000, 4000, 10000, 50]  # the 50 ms close is not an idle timeout
    (srv,) = analyze_batches(idle_closes(idles).batches(7)).servers
    v = np.array(idles[:-1]) / 1000
    q10, q25, q50, q75, q90 = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    assert srv.samples == 5
    assert (srv.idle_timeout_s, srv.p10_s, srv.p90_s) == (round(q50, 3), round(q10, 3), round(q90, 3))
    assert srv.spread_s == round(q75 - q25, 3)
    assert (srv.min_s, srv.max_s) == (1.0, 10.0)
    assert srv.address == f"{SV[0]}:{SV[1]}"


def test_min_idle_option() -> None:
    a = analyze_batches(idle_closes([50, 60]).batches(7), AnalysisOptions(min_idle_s=0.01))
    assert a.servers[0].samples == 2


def test_replacement_must_start_within_the_window() -> None:
    b = Builder()
    c = b.tcp(("198.18.13.2", 40000), SV)
    c.handshake(0)
    c.data(20 * MS, True, 50)
    c.data(30 * MS, False, 50)
    c.fin(2 * S, False)
    c.data(3 * S, True, 50)
    c.rst(3 * S + 1 * MS, False)
    d = b.tcp(("198.18.13.2", 40001), SV, isn_c=5)
    d.handshake(9 * S)  # 6 s after the stale write
    stale = [f for f in analyze_batches(b.batches(5)).findings if f.kind is FindingKind.STALE_REUSE]
    assert stale[0].replacement_uid is None
    opts = AnalysisOptions(replacement_window_s=7)
    stale = [f for f in analyze_batches(b.batches(5), opts).findings if f.kind is FindingKind.STALE_REUSE]
    assert stale[0].wasted_ns == 6 * S


def test_lost_fin_ack_is_dated_at_the_fin_retransmission() -> None:
    b = Builder()
    c = b.tcp(("198.18.13.2", 40000), SV)
    c.handshake(0)
    c.data(20 * MS, True, 50)
    c.data(30 * MS, False, 50)
    fin_ns = 5 * S
    c.fin(fin_ns, False)
    c.fin_again(fin_ns + 200 * MS, False)
    c.fin_again(fin_ns + 600 * MS, False)
    c.rst(fin_ns + 700 * MS, True)
    (lost,) = [f for f in analyze_batches(b.batches(3)).findings if f.kind is FindingKind.LOST_FIN_ACK]
    t0 = analyze_batches(b.batches(3)).connections[0].ts_ns
    assert lost.ts_ns == t0 + fin_ns + 200 * MS
    assert lost.first_retransmit_ns == t0 + fin_ns + 200 * MS
    assert lost.fin_ns == t0 + fin_ns
    assert lost.fin_retransmits == 2
    assert lost.answered_by_rst is True


def fin_then(b: Builder, port: int, *, ack_before_retransmit: bool, ack_after: bool, after_ms: int = 6) -> None:
    c = b.tcp(("198.18.13.2", port), SV, isn_c=port)
    c.handshake(0)
    c.data(20 * MS, True, 50)
    c.data(30 * MS, False, 50)
    c.fin(2 * S, False)
    if ack_before_retransmit:
        c.ack(2 * S + 1 * MS, True)  # seen here, lost after the capture point
    c.fin_again(2 * S + after_ms * MS, False)
    if ack_after:
        c.ack(2 * S + (after_ms + 35) * MS, True)  # the client's late delayed ACK


def test_a_fin_tail_loss_probe_then_acknowledged_is_no_lost_ack() -> None:
    b = Builder()
    fin_then(b, 40000, ack_before_retransmit=False, ack_after=True)
    a = analyze_batches(b.batches(4))
    (conn,) = a.connections
    assert conn.resp_fin_retransmits == 1
    assert conn.resp_fin_acked_ns == conn.resp_fin_ns + 41 * MS
    assert a.summary.fin_retransmits == 1
    assert [f for f in a.findings if f.kind is FindingKind.LOST_FIN_ACK] == []
    assert a.summary.lost_fin_ack == 0


def test_a_fin_acknowledged_before_its_retransmission_is_a_lost_ack() -> None:
    b = Builder()
    fin_then(b, 40000, ack_before_retransmit=True, ack_after=True)
    fin_then(b, 40001, ack_before_retransmit=False, ack_after=False)
    fin_then(b, 40002, ack_before_retransmit=False, ack_after=True, after_ms=200)  # a timeout, not a probe
    a = analyze_batches(b.batches(4))
    lost = [f for f in a.findings if f.kind is FindingKind.LOST_FIN_ACK]
    assert len(lost) == 3
    first = next(c for c in a.connections if c.orig_p == 40000)
    assert first.resp_fin_acked_ns == first.resp_fin_ns + 1 * MS
