from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from halfclose.analysis import analyze_batches
from halfclose.analysis.flows import FlowTable
from pktbuild import MS, Builder

OPS = "SHADdFfRrkKtx"


def scenario(ops: list[tuple[int, str]]) -> Builder:
    b = Builder()
    conns = [
        b.tcp((f"198.18.12.{2 + i}", 40000 + i), ("198.18.12.1", 80), isn_c=4_294_967_000 - i)
        for i in range(3)
    ]
    t = 0
    for which, op in ops:
        c = conns[which]
        t += 7 * MS
        if op == "S":
            c.syn(t)
        elif op == "H":
            c._send(t, False, 0x12)
        elif op == "A":
            c.ack(t, True)
        elif op in "Dd":
            c.data(t, op == "D", 50)
        elif op in "Ff":
            c.fin(t, op == "F")
        elif op in "Rr":
            c.rst(t, op == "R")
        elif op in "kK":
            c.keepalive(t, op == "K", one_byte=op == "k")
        elif op == "t":
            c.retransmit(t, False, 10)
        elif op == "x":
            c.fin_again(t, False)
    return b


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from(OPS)), min_size=1, max_size=40),
    st.integers(1, 9),
)
def test_batch_size_does_not_change_the_result(ops: list[tuple[int, str]], size: int) -> None:
    b = scenario(ops)
    whole = analyze_batches(b.batches(10_000))
    split = analyze_batches(b.batches(size))
    assert list(whole.connections) == list(split.connections)
    assert whole.summary == split.summary
    assert whole.findings == split.findings


def test_sequence_numbers_wrap_around() -> None:
    b = Builder()
    c = b.tcp(("198.18.12.2", 40000), ("198.18.12.1", 80), isn_c=2**32 - 60)
    c.handshake(0)
    c.data(20 * MS, True, 100)  # crosses 2**32
    c.data(30 * MS, True, 100)
    c.retransmit(40 * MS, True, 100)
    conn = analyze_batches(b.batches(2)).connections[0]
    assert conn.orig_retransmits == 1
    assert conn.orig_bytes == 300


def test_events_keep_only_the_packets_that_matter() -> None:
    b = Builder()
    c = b.tcp(("198.18.12.2", 40000), ("198.18.12.1", 80))
    c.handshake(0)
    for k in range(50):
        c.data((k + 1) * MS, k % 2 == 0, 100)
    c.fin(100 * MS, False)
    c.data(110 * MS, True, 10)  # after the FIN: kept
    c.rst(111 * MS, False)
    table = FlowTable()
    for batch in b.batches(8):
        table.feed(batch)
    state, events = table.finish()
    assert state.n == 1
    assert int(state.pkts.sum()) == len(b.rows)
    # SYN, SYN/ACK, FIN, the data after it, RST
    assert events.shape[0] == 5
    assert np.array_equal(events["flags"][[0, 1, 2, 4]] & 0x07, [0x02, 0x02, 0x01, 0x04])
