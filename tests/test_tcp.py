from __future__ import annotations

import pytest

from halfclose.analysis import ClosingRecord, ConnState, FindingKind, OrigBy, Side, analyze_batches
from pktbuild import MS, Builder, S, Tcp

C = ("198.18.11.2", 40000)
SV = ("198.18.11.1", 443)


def one(b: Builder, size: int = 3):  # type: ignore[no-untyped-def]
    a = analyze_batches(b.batches(size))
    assert a.summary.tcp_connections == 1
    return a.connections[0], a


def build(steps: str) -> Builder:
    """Steps: S syn, s retransmitted syn, H syn/ack, A client ack, D client data, d server data,
    F client FIN, f server FIN, R client RST, r server RST."""
    b = Builder()
    c: Tcp = b.tcp(C, SV)
    t = 0
    for ch in steps:
        t += 10 * MS
        if ch == "S":
            c.syn(t)
        elif ch == "s":
            c.syn(t, retransmit=True)
        elif ch == "H":
            c._send(t, False, 0x12)
        elif ch in "Aa":
            c.ack(t, ch == "A")
        elif ch in "Dd":
            c.data(t, ch == "D", 100)
        elif ch in "Ff":
            c.fin(t, ch == "F")
        elif ch in "Rr":
            c.rst(t, ch == "R")
    return b


@pytest.mark.parametrize(
    ("steps", "state"),
    [
        ("Ss", ConnState.S0),
        ("Sr", ConnState.REJ),
        ("SR", ConnState.RSTOS0),
        ("SF", ConnState.SH),
        ("SHADdFfA", ConnState.SF),
        ("SHADdR", ConnState.RSTO),
        ("SHADdfr", ConnState.RSTR),
        ("SHADdF", ConnState.S2),
        ("SHADdf", ConnState.S3),
        ("SHADd", ConnState.S1),
        ("Dd", ConnState.OTH),
        ("Hr", ConnState.RSTRH),
        ("Hf", ConnState.SHR),
    ],
)
def test_conn_state(steps: str, state: ConnState) -> None:
    conn, _ = one(build(steps))
    assert conn.conn_state is state


def test_record_fields_of_a_normal_connection() -> None:
    conn, _ = one(build("SHADdFfA"), size=1)
    assert conn.history == "ShADdFf"
    assert (conn.orig_h, conn.orig_p, conn.resp_h, conn.resp_p) == (C[0], C[1], SV[0], SV[1])
    assert conn.orig_by is OrigBy.SYN
    assert conn.orig_pkts == 5 and conn.resp_pkts == 3
    assert conn.orig_bytes == 100 and conn.resp_bytes == 100
    assert conn.handshake_rtt_ns == 20 * MS
    assert conn.closed_first is Side.ORIG
    assert conn.idle_before_close_ns == 10 * MS
    assert conn.half_closed_ns == 10 * MS


def test_midstream_originator_is_the_higher_port() -> None:
    b = Builder()
    c = b.tcp(SV, C)  # the first packet comes from port 443
    c.data(0, True, 10)
    c.data(1 * MS, False, 10)
    conn, _ = one(b)
    assert conn.orig_by is OrigBy.PORT
    assert conn.orig_p == C[1] and conn.resp_p == SV[1]


def test_port_reuse_makes_a_new_connection_and_syn_retransmission_does_not() -> None:
    b = Builder()
    c = b.tcp(C, SV, isn_c=100)
    c.syn(0)
    c.syn(1 * S, retransmit=True)
    c._send(1 * S + 5 * MS, False, 0x12)
    c.ack(1 * S + 10 * MS, True)
    c.fin(2 * S, True)
    c.fin(2 * S + 1 * MS, False)
    d = b.tcp(C, SV, isn_c=999_999)
    d.handshake(5 * S)
    for size in (1, 2, 100):
        a = analyze_batches(b.batches(size))
        assert a.summary.tcp_connections == 2
        assert [x.conn_state for x in a.connections] == [ConnState.SF, ConnState.S1]
        assert a.connections[0].handshake_rtt_ns == 10 * MS  # from the retransmitted SYN


def test_retransmissions_and_keepalives_are_not_activity() -> None:
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 100)
    c.data(30 * MS, False, 1000)
    c.retransmit(300 * MS, False, 1000)
    for k in range(1, 5):
        c.keepalive(k * S, True)
    c.keepalive(int(4.5 * S), True, one_byte=True)
    c.fin(5 * S + 30 * MS, False)
    conn, _ = one(b, size=2)
    assert conn.resp_retransmits == 1
    assert conn.orig_keepalives == 5
    assert conn.idle_before_close_ns == 5 * S  # from the response, not the probes
    assert conn.is_server_closed_first()


def test_fin_retransmission_and_the_rst_that_answers_it() -> None:
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 100)
    c.data(30 * MS, False, 100)
    c.fin(2 * S, False)
    c.fin_again(2 * S + 200 * MS, False)
    c.rst(2 * S + 201 * MS, True)
    conn, a = one(b)
    assert conn.resp_fin_retransmits == 1
    assert conn.history.endswith("ftR")
    assert a.summary.fin_retransmits == 1
    (lost,) = [f for f in a.findings if f.kind is FindingKind.LOST_FIN_ACK]
    assert lost.answered_by_rst is True
    assert lost.fin_retransmits == 1


def test_silent_half_close_close_wait() -> None:
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 100)
    c.data(30 * MS, False, 100)
    c.fin(60 * S + 30 * MS, False)
    c.ack(60 * S + 70 * MS, True)
    c.fin(100 * S, True)
    _conn, a = one(b)
    (f,) = [f for f in a.findings if f.kind is FindingKind.SILENT_HALF_CLOSE]
    assert f.close_wait_ns == 100 * S - (60 * S + 30 * MS)
    assert f.ended_by == "client_fin"
    assert f.idle_ns == 60 * S
    assert a.servers[0].idle_timeout_s == 60.0
    assert a.servers[0].server == f"{SV[0]}:{SV[1]}"
    assert a.profile() == {f"{SV[0]}:{SV[1]}": 60.0}


def test_a_retransmitted_stale_write_counts_once() -> None:
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 100)
    c.data(30 * MS, False, 100)
    c.fin(2 * S, False)
    c.ack(2 * S + 40 * MS, True)
    c.data(3 * S, True, 100)  # the stale write
    c.retransmit(3 * S + 200 * MS, True, 100)  # sent again, nothing new
    c.rst(3 * S + 201 * MS, False)
    conn, a = one(b)
    assert conn.stale_writes == 1
    assert conn.stale_write_ns == 3 * S
    assert conn.orig_retransmits == 1
    assert a.summary.stale_reuse == 1


TLS13_ALERT = b"\x17\x03\x03\x00\x13" + bytes(19)  # close_notify under TLS 1.3: type 23 outside
TLS12_ALERT = b"\x15\x03\x03\x00\x1a" + bytes(26)
GOAWAY = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def closing(first_client: bytes, last_server: list[bytes], *, peer_between: bool = False) -> Builder:
    """A request, the response, 2 s idle, then *last_server* segments 50 us apart and the FIN."""
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, len(first_client), first_client)
    c.data(30 * MS, False, 300, bytes(300))
    t = 30 * MS + 2 * S
    for k, seg in enumerate(last_server):
        c.data(t + k * 50_000, False, len(seg), seg)
        if peer_between and k == 0:
            c.data(t + 20_000, True, 30, b"\x17\x03\x03\x00\x19" + bytes(25))
    c.fin(t + len(last_server) * 50_000, False)
    c.fin(t + 10 * MS, True)
    return b


@pytest.mark.parametrize(
    ("first", "segments", "kind"),
    [
        (b"\x16\x03\x01", [TLS13_ALERT], ClosingRecord.TLS_SHORT),
        (b"\x16\x03\x01", [TLS12_ALERT], ClosingRecord.TLS_ALERT),
        (b"\x16\x03\x01", [b"\x17\x03\x03\x00\x22" + bytes(34), TLS13_ALERT], ClosingRecord.TLS_SHORT),
        (b"\x16\x03\x01", [TLS13_ALERT + TLS13_ALERT], ClosingRecord.TLS_SHORT),
        (PREFACE, [GOAWAY], ClosingRecord.H2_GOAWAY),
    ],
)
def test_idle_runs_to_the_first_closing_record(first: bytes, segments: list[bytes], kind: ClosingRecord) -> None:
    conn, a = one(closing(first, segments))
    assert conn.closing_record is kind
    assert conn.closing_record_ns == conn.ts_ns + 30 * MS + 2 * S
    assert conn.idle_before_close_ns == 2 * S
    assert conn.resp_fin_ns == conn.closing_record_ns + len(segments) * 50_000
    (srv,) = a.servers
    assert srv.idle_timeout_s == 2.0


@pytest.mark.parametrize(
    ("first", "segments"),
    [
        (b"GET / HTTP/1.1\r\n", [GOAWAY]),  # GOAWAY's bytes, but not an HTTP/2 connection
        (b"\x16\x03\x01", [b"\x17\x03\x03\x00\x60" + bytes(96)]),  # a record too long for an alert
        (b"\x16\x03\x01", [TLS13_ALERT[:-1]]),  # a record that does not fill the segment
        (b"\x16\x03\x01", [b"\x16\x03\x03\x00\x13" + bytes(19)]),  # a handshake record
    ],
)
def test_other_last_data_is_activity(first: bytes, segments: list[bytes]) -> None:
    conn, _ = one(closing(first, segments))
    assert conn.closing_record is None and conn.closing_record_ns is None
    assert conn.idle_before_close_ns == 50_000


@pytest.mark.parametrize(("second_after_us", "closing_after_us"), [(2020, 2020), (50, None)])
def test_peer_data_after_a_short_record_starts_over(second_after_us: int, closing_after_us: int | None) -> None:
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 3, b"\x16\x03\x01")
    c.data(30 * MS, False, 300, bytes(300))
    t = 30 * MS + 2 * S
    c.data(t, False, len(TLS13_ALERT), TLS13_ALERT)  # a short record, then the client's data
    c.data(t + 20_000, True, 30, b"\x17\x03\x03\x00\x19" + bytes(25))
    c.data(t + second_after_us * 1000, False, len(TLS13_ALERT), TLS13_ALERT)
    c.fin(t + second_after_us * 1000 + 50_000, False)
    conn, _ = one(b)
    if closing_after_us is None:  # 30 us after the client's data: not after a silence
        assert conn.closing_record is None
        assert conn.idle_before_close_ns == 50_000
    else:
        assert conn.closing_record_ns == conn.ts_ns + t + closing_after_us * 1000
        assert conn.idle_before_close_ns == (closing_after_us - 20) * 1000  # from the client's record


def test_a_record_right_after_data_is_no_closing_record() -> None:
    # a short record 0.5 ms after the response (less than CLOSING_AFTER_NS): part of the exchange
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 3, b"\x16\x03\x01")
    c.data(30 * MS, False, 300, bytes(300))
    c.data(30 * MS + 500_000, False, len(TLS13_ALERT), TLS13_ALERT)
    c.fin(30 * MS + 550_000, False)
    conn, _ = one(b)
    assert conn.closing_record is None
    assert conn.idle_before_close_ns == 50_000


def test_h2c_goaway_and_fin_acknowledgement_recorded() -> None:
    conn, _ = one(closing(PREFACE, [GOAWAY]))
    assert conn.resp_goaway_ns == conn.closing_record_ns
    assert conn.orig_goaway_ns is None
    assert conn.orig_fin_acked_ns is None  # the server sent no ACK after the client's FIN
    assert conn.resp_fin_acked_ns == conn.orig_fin_ns  # the client's FIN acknowledges the server's
