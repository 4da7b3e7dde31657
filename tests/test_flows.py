from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halfclose.analysis import analyze_batches
from halfclose.analysis import flows as flows_mod
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
    done = table.finish()
    state, events = done.state, done.events
    assert state.n == 1
    assert int(state.pkts.sum()) == len(b.rows)
    # SYN, SYN/ACK, FIN, the data after it, RST
    assert events.shape[0] == 5
    assert np.array_equal(events["flags"][[0, 1, 2, 4]] & 0x07, [0x02, 0x02, 0x01, 0x04])


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # endpoint pair
            st.booleans(),  # direction
            st.integers(0, 255),  # flags
            st.integers(0, 2**32 - 1),  # seq
            st.integers(0, 3000),  # payload length
            st.integers(0, 10**10),  # time (not monotonic)
        ),
        max_size=60,
    ),
    st.integers(1, 17),
)
def test_arbitrary_tcp_headers_never_break_the_analysis(
    pkts: list[tuple[int, bool, int, int, int, int]], size: int
) -> None:
    b = Builder()
    pairs = [
        (("198.18.14.2", 40000), ("198.18.14.1", 80)),
        (("198.18.14.3", 40000), ("198.18.14.1", 80)),
        (("fd14::2", 50000), ("fd14::1", 443)),
        (("198.18.14.1", 80), ("198.18.14.1", 80)),  # both ends the same
    ]
    for pair, fwd, flags, seq, length, ts in pkts:
        src, dst = pairs[pair] if fwd else pairs[pair][::-1]
        b.add(ts, src, dst, flags=flags, seq=seq, length=length)
    rows = b.rows
    a = analyze_batches([b.batch(rows[i : i + size], i) for i in range(0, len(rows), size)])
    conns = list(a.connections)
    assert sum(c.orig_pkts + c.resp_pkts for c in conns) == len(pkts)
    assert a.summary.tcp_connections == len(conns)
    for c in conns:
        assert c.conn_state.value in {s.value for s in type(c.conn_state)}
        assert c.duration_ns == c.end_ns - c.ts_ns


def test_compiled_flow_kernels_match_plain_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without numba the flow kernels run as plain Python: same counters, same events."""
    from halfclose.analysis import _flowkernel as fk
    from halfclose.analysis import flows
    from halfclose.capture.compiling import use_compiled

    if not use_compiled():  # (a few thousand rows alone would run as plain Python)
        pytest.skip("numba is not installed or disabled: the kernels are plain Python already")
    b = scenario([(i % 3, op) for i, op in enumerate("SSHADdkKtDFdfDxRrSHADDfF" * 2)])
    # many connections, so that the key table and the connection arrays grow mid-batch
    for k in range(3000):
        c = b.tcp((f"198.18.{20 + k // 250}.{1 + k % 250}", 41000 + k), ("198.18.12.1", 443))
        c.syn(k * MS)
        c.data(k * MS + 1, True, 10)
    compiled_table = FlowTable()
    for batch in b.batches(2500):
        compiled_table.feed(batch)
    monkeypatch.setattr(fk, "_mix", fk._mix.py_func)  # type: ignore[attr-defined]
    monkeypatch.setattr(flows, "flow_pass", fk.plain(fk.flow_pass.py_func))  # type: ignore[attr-defined]
    monkeypatch.setattr(flows, "rehash", fk.plain(fk.rehash.py_func))  # type: ignore[attr-defined]
    plain_table = FlowTable()
    for batch in b.batches(2500):
        plain_table.feed(batch)
    cf, pf = compiled_table.finish(), plain_table.finish()
    (cs, ce), (ps, pe) = (cf.state, cf.events), (pf.state, pf.events)
    assert cs.n == ps.n > 3000
    for name in cs.__dataclass_fields__:
        assert np.array_equal(getattr(cs, name), getattr(ps, name)), name
    assert ce.shape[0] > 3000
    assert ce.tobytes() == pe.tobytes()


def assert_same_flows(a: flows_mod.Flows, b: flows_mod.Flows) -> None:
    """Two finished flow tables hold the same counters, events and first-data names."""
    for name in a.state.__dataclass_fields__:
        assert np.array_equal(getattr(a.state, name), getattr(b.state, name)), name
    assert a.events.tobytes() == b.events.tobytes()
    for field in ("flow_dir", "name", "source"):
        assert np.array_equal(getattr(a.names, field), getattr(b.names, field)), field
    assert a.names.names == b.names.names


@pytest.mark.parametrize("waiting", [1, 7])
def test_first_data_read_together_across_batches_as_batch_by_batch(
    monkeypatch: pytest.MonkeyPatch, waiting: int
) -> None:
    """The first data segments' names and services are read once enough of them wait (their
    payloads copied aside, over batches whose buffers are gone by then): the same counters,
    events, names and services as when each batch's are read at once."""
    from halfclose.analysis import flows

    b = scenario([(i % 3, op) for i, op in enumerate("SSHADdkKtDFdfDxRrSHADDfF" * 2)])
    hello = b"\x16\x03\x01\x00\x40\x01" + bytes(38)  # a TLS ClientHello's start: a TLS service
    for k in range(1500):
        c = b.tcp((f"198.18.{30 + k // 250}.{1 + k % 250}", 42000 + k), ("198.18.12.1", 443))
        c.syn(k * MS)
        c.data(k * MS + 1, True, 0, b"GET / HTTP/1.1\r\nHost: s%d.lab.test\r\n\r\n" % k if k % 2 else hello)
        c.fin(k * MS + 2, False)
        c.data(k * MS + 3, True, 0, b"\x15\x03\x03\x00\x02\x01\x00")  # a close_notify after the FIN
    batches = b.batches(700)
    ahead = FlowTable()  # all names read at the end (fewer than the default wait)
    for batch in batches:
        ahead.feed(batch)
    monkeypatch.setattr(flows, "_NAME_ROWS", waiting)
    step = FlowTable()
    for batch in b.batches(700):
        step.feed(batch)
    sf, af = step.finish(), ahead.finish()
    assert sf.state.n == af.state.n > 1500
    assert_same_flows(sf, af)
    assert (sf.events["closing"] > 0).sum() >= 1500
    assert len(sf.names.names) >= 750
    assert (sf.state.service >= 0).sum() >= 1500


def test_buffers_grown_mid_batch_give_the_same_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled pass stops where the event, first-data or payload buffer is full and goes on
    once it is grown: starting from room for one row (and one byte) gives what the default room
    gives, closing-record codes (read once the batch is done) included."""
    from halfclose.analysis import flows

    b = scenario([(i % 3, op) for i, op in enumerate("SSHADdkKtDFdfDxRrSHADDfF" * 2)])
    for k in range(300):
        c = b.tcp((f"198.18.40.{1 + k % 250}", 43000 + k), ("198.18.12.1", 443))
        c.syn(k * MS)
        c.data(k * MS + 1, True, 0, b"GET / HTTP/1.1\r\nHost: g%d.lab.test\r\n\r\n" % k)
        c.fin(k * MS + 2, False)
        c.data(k * MS + 3, True, 0, b"\x15\x03\x03\x00\x02\x01\x00")  # a close_notify after the FIN
    roomy = FlowTable()
    for batch in b.batches(400):
        roomy.feed(batch)
    monkeypatch.setattr(flows, "_FIRST_ROWS", (1, 1, 1))
    tight = FlowTable()
    for batch in b.batches(400):
        tight.feed(batch)
    rf, tf = roomy.finish(), tight.finish()
    assert_same_flows(rf, tf)
    assert (rf.events["closing"] > 0).sum() >= 300
    assert len(rf.names.names) >= 300
