from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pytest

import tshark
from capture_bytes import Rec, eth, ext, ipv4, ipv6, pcap, tcp, udp, vxlan
from halfclose.analysis import ClosingRecord, Connection, ConnState, FindingKind, OrigBy, Side, analyze_batches
from halfclose.analysis.names import Service
from halfclose.analysis.tcp import TunnelParent, community_ids
from halfclose.analysis_io import analyze
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
        # Zeek's meanings: midstream closes, and a responder RST decides whoever reset first
        ("DdFf", ConnState.SF),
        ("DdF", ConnState.SH),
        ("Ddf", ConnState.SHR),
        ("DdR", ConnState.OTH),
        ("SHADdRr", ConnState.RSTR),
        ("SHADdRf", ConnState.RSTO),
        ("Sd", ConnState.OTH),
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
    assert conn.history.endswith("feR")  # "e": halfclose's FIN-retransmission letter (Zeek's "t" is payload)
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
    c.data(t + 20_000, True, 125, b"\x17\x03\x03\x00\x78" + bytes(120))  # a request's length
    c.data(t + second_after_us * 1000, False, len(TLS13_ALERT), TLS13_ALERT)
    c.fin(t + second_after_us * 1000 + 50_000, False)
    conn, _ = one(b)
    if closing_after_us is None:  # 30 us after the client's data: not after a silence
        assert conn.closing_record is None
        assert conn.idle_before_close_ns == 50_000
    else:
        assert conn.closing_record_ns == conn.ts_ns + t + closing_after_us * 1000
        assert conn.idle_before_close_ns == (closing_after_us - 20) * 1000  # from the client's record


WINDOW_UPDATE = b"\x17\x03\x03\x00\x1e" + bytes(30)  # an HTTP/2 WINDOW_UPDATE inside TLS 1.3


@pytest.mark.parametrize(
    ("answer_after_us", "client_close"),
    [(300, "fin"), (970_000, "fin"), (1_000_000, "rst")],  # Go's close_notify; curl's RST_STREAM; none
)
def test_the_servers_record_is_the_close_when_the_client_closes_first(answer_after_us: int, client_close: str
                                                                       ) -> None:  # fmt: skip
    # a server that sends its closing record at the timer and leaves the TCP close to the client
    # (uvicorn, Go's HTTP/2 server): the client's answer and its FIN or RST come first
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 3, b"\x16\x03\x01")
    c.data(30 * MS, False, 300, bytes(300))
    t = 30 * MS + 2 * S
    c.data(t, False, len(TLS13_ALERT), TLS13_ALERT)
    if client_close == "fin":
        c.data(t + answer_after_us * 1000, True, len(WINDOW_UPDATE), WINDOW_UPDATE)
        c.fin(t + answer_after_us * 1000 + 200_000, True)
    else:
        c.rst(t + answer_after_us * 1000, True)
    conn, a = one(b)
    assert conn.closed_first is Side.ORIG
    assert conn.closing_side is Side.RESP
    assert conn.closing_record is ClosingRecord.TLS_SHORT
    assert conn.closing_record_ns == t
    assert conn.idle_before_close_ns == 2 * S
    (srv,) = a.servers
    assert srv.idle_timeout_s == 2.0


@pytest.mark.parametrize("grace", [1 * S, 2 * S, 3 * S])  # Go's HTTP/2 server waits 1 s; as long as the timeout
@pytest.mark.parametrize(("from_client", "after_ms"), [(True, 2), (False, 8), (False, 200)])
def test_a_short_record_after_the_response_is_not_the_close(from_client: bool, after_ms: int, grace: int) -> None:
    # an HTTP/2 client's WINDOW_UPDATE, or the response's last empty DATA frame (Node), *after_ms*
    # after the response, then the server's GOAWAY at its timer and its close_notify and FIN *grace* later
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 3, b"\x16\x03\x01")
    c.data(30 * MS, False, 300, bytes(300))
    c.data((30 + after_ms) * MS, from_client, len(WINDOW_UPDATE), WINDOW_UPDATE)
    t = (30 + after_ms) * MS + 2 * S
    c.data(t, False, len(WINDOW_UPDATE) + 4, b"\x17\x03\x03\x00\x22" + bytes(34))  # the GOAWAY
    c.data(t + grace, False, len(TLS13_ALERT), TLS13_ALERT)
    c.fin(t + grace + 50_000, False)
    conn, a = one(b)
    assert conn.closing_side is Side.RESP
    assert conn.closing_record_ns == t
    assert conn.idle_before_close_ns == 2 * S
    assert a.servers[0].idle_timeout_s == 2.0


def test_a_client_that_closes_first_is_no_server_timeout() -> None:
    # the client's close_notify at its own timer, then the server's FIN answering it
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, 3, b"\x16\x03\x01")
    c.data(30 * MS, False, 300, bytes(300))
    c.data(30 * MS + 1 * S, True, len(TLS13_ALERT), TLS13_ALERT)
    c.data(30 * MS + 1 * S + 300_000, False, len(TLS13_ALERT), TLS13_ALERT)
    c.fin(30 * MS + 1 * S + 350_000, False)
    conn, a = one(b)
    assert conn.closed_first is Side.RESP
    assert conn.closing_side is Side.ORIG
    assert conn.idle_before_close_ns == 1 * S
    assert a.servers == ()


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


# --- reordered captures, with tshark as the oracle -------------------------------------------------

_T0 = 1_700_000_000 * S
_CI, _SI = 1000, 5000
_GET = b"GET / HTTP/1.1\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\n\r\n"


def _pk(ms: float, from_client: bool, flags: int, seq: int, ack: int, payload: bytes = b"") -> Rec:  # noqa: PLR0917
    src, dst = (C, SV) if from_client else (SV, C)
    seg = tcp(src[1], dst[1], seq=seq, ack=ack, flags=flags, payload=payload)
    return Rec(ts_ns=_T0 + int(ms * MS), data=eth(0x0800, ipv4(6, seg, src=src[0], dst=dst[0])))


def _handshake_and_request() -> list[Rec]:
    return [_pk(0, True, 0x02, _CI, 0), _pk(5, False, 0x12, _SI, _CI + 1), _pk(10, True, 0x10, _CI + 1, _SI + 1),
            _pk(20, True, 0x18, _CI + 1, _SI + 1, _GET), _pk(30, False, 0x18, _SI + 1, _CI + 19, _OK)]  # fmt: skip


def _both(tmp_path: Path, recs: list[Rec]) -> tuple[list[Connection], list[list[str]]]:
    """halfclose's records and tshark's per-frame stream, initial RTT, retransmission and
    out-of-order flags for the capture *recs*."""
    p = tmp_path / "reordered.pcap"
    p.write_bytes(pcap(recs))
    conns = list(analyze([p]).connections)
    rows = tshark.fields(p, ["tcp.stream", "tcp.analysis.initial_rtt", "tcp.analysis.retransmission",
                             "tcp.analysis.out_of_order"])  # fmt: skip
    return conns, rows


def test_synack_captured_before_its_syn_is_one_connection(tmp_path: Path) -> None:
    hs = _handshake_and_request()
    recs = [hs[1], hs[0], *hs[2:], _pk(40, True, 0x11, _CI + 19, _SI + 20), _pk(50, False, 0x11, _SI + 20, _CI + 20),
            _pk(60, True, 0x10, _CI + 20, _SI + 21)]  # fmt: skip
    conns, rows = _both(tmp_path, recs)
    assert {r[0] for r in rows} == {"0"}  # tshark: one stream
    assert len(conns) == 1
    (c,) = conns
    assert c.conn_state is ConnState.SF
    assert c.orig_by is OrigBy.SYN and c.orig_p == C[1]
    tshark_rtt = {r[1] for r in rows if r[1]}
    assert c.handshake_rtt_ns is not None and {f"{c.handshake_rtt_ns / S:.9f}"} == tshark_rtt


def test_rst_captured_before_its_syn_is_one_rejected_connection(tmp_path: Path) -> None:
    conns, rows = _both(tmp_path, [_pk(5, False, 0x14, 0, _CI + 1), _pk(0, True, 0x02, _CI, 0)])
    assert {r[0] for r in rows} == {"0"}
    assert len(conns) == 1
    assert conns[0].conn_state is ConnState.REJ
    assert conns[0].orig_pkts == 1 and conns[0].resp_pkts == 1


def test_data_captured_before_its_syn_is_one_connection(tmp_path: Path) -> None:
    hs = _handshake_and_request()
    conns, rows = _both(tmp_path, [hs[3], *hs[:3], hs[4]])
    assert {r[0] for r in rows} == {"0"}
    assert len(conns) == 1
    assert conns[0].orig_bytes == len(_GET) and conns[0].orig_retransmits == 0


def test_out_of_order_data_after_a_higher_fin_is_no_retransmission(tmp_path: Path) -> None:
    """The client's last request and its FIN, the FIN captured 0.1 ms before the data: tshark
    flags the data out of order, not retransmitted; the idle time before the FIN runs from that
    data (0), not from the server's response 1.97 s earlier."""
    recs = [*_handshake_and_request(), _pk(2000, True, 0x11, _CI + 19 + 100, _SI + 20),
            _pk(2000.1, True, 0x18, _CI + 19, _SI + 20, b"x" * 100), _pk(2010, False, 0x11, _SI + 20, _CI + 121),
            _pk(2020, True, 0x10, _CI + 121, _SI + 21)]  # fmt: skip
    conns, rows = _both(tmp_path, recs)
    assert [r[3] for r in rows].count("1") == 1 and not any(r[2] for r in rows)  # tshark: out of order
    (c,) = conns
    assert c.orig_retransmits == 0
    assert c.orig_bytes == len(_GET) + 100
    assert c.idle_before_close_ns == 0
    assert c.conn_state is ConnState.SF


def test_out_of_order_stale_write_keeps_its_letter(tmp_path: Path) -> None:
    """A request written after the server's FIN, its FIN captured first: still a stale write
    (``D`` after the responder's ``f``), no retransmission."""
    recs = [*_handshake_and_request(), _pk(5000, False, 0x11, _SI + 20, _CI + 19),
            _pk(5010, True, 0x10, _CI + 19, _SI + 21),
            _pk(9000, True, 0x11, _CI + 19 + len(_GET), _SI + 21), _pk(9000.1, True, 0x18, _CI + 19, _SI + 21, _GET),
            _pk(9010, False, 0x04, _SI + 21, 0)]  # fmt: skip
    conns, rows = _both(tmp_path, recs)
    assert rows[8][3] == "1" and not rows[8][2]  # tshark: frame 9 out of order
    (c,) = conns
    assert c.orig_retransmits == 0
    assert c.stale_writes == 1
    assert "fFDr" in c.history


def test_port_reuse_after_a_closed_connection_follows_tshark(tmp_path: Path) -> None:
    recs = [*_handshake_and_request()[:3], _pk(40, True, 0x11, _CI + 1, _SI + 1),
            _pk(50, False, 0x11, _SI + 1, _CI + 2),
            _pk(60, True, 0x10, _CI + 2, _SI + 2), _pk(1000, True, 0x02, _CI + 7777, 0),
            _pk(1005, False, 0x12, _SI + 999, _CI + 7778), _pk(1010, True, 0x10, _CI + 7778, _SI + 1000),
            _pk(1011, True, 0x02, _CI + 7777, 0)]  # fmt: skip
    conns, rows = _both(tmp_path, recs)
    assert [r[0] for r in rows] == ["0"] * 6 + ["1"] * 4
    assert [(c.orig_pkts + c.resp_pkts, c.conn_state) for c in conns] == [(6, ConnState.SF), (4, ConnState.S1)]


# --- Zeek's conn.log fields -------------------------------------------------------------------------

# Community ID v1 vectors of the reference implementations: Zeek's btest of community_id_v1
# (zeek/zeek, testing/btest/bifs) and the spec's baseline (corelight/community-id-spec), also
# used by pycommunityid's tests: 1.2.3.4:1122 -> 5.6.7.8:3344.
_CID_VECTORS = [
    (6, 0, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (17, 0, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (6, 1, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (17, 1, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
]


@pytest.mark.parametrize(("proto", "seed", "expected"), _CID_VECTORS)
@pytest.mark.parametrize("reverse", [False, True])
def test_community_id_matches_the_reference_vectors(proto: int, seed: int, expected: str, reverse: bool) -> None:
    def hl(text: str) -> tuple[np.ndarray, np.ndarray]:
        v = (0xFFFF << 32) | int(ipaddress.ip_address(text))
        return np.array([v >> 64], np.uint64), np.array([v & (2**64 - 1)], np.uint64)

    (ah, al), (bh, bl) = hl("1.2.3.4"), hl("5.6.7.8")
    ap, bp = np.array([1122]), np.array([3344])
    if reverse:
        (ah, al, ap), (bh, bl, bp) = (bh, bl, bp), (ah, al, ap)
    assert community_ids(np.array([4]), ah, al, bh, rb=bl, op=ap, rp=bp, proto=proto, seed=seed) == (expected,)


def test_community_ids_of_many_rows_are_the_spec_s_hash_of_each_tuple() -> None:
    """IPv4 and IPv6 rows mixed, equal addresses told apart by port, equal endpoints: each row is
    the spec's SHA-1 over its tuple packed field by field (struct, independently of the table)."""
    import base64
    import hashlib
    import struct

    rng = np.random.default_rng(7)
    n = 300
    ver = np.where(rng.random(n) < 0.4, 6, 4)

    def address(version: int) -> int:  # IPv4 as IPv4-mapped, as the table holds it
        if version == 4:
            return (0xFFFF << 32) | int(rng.integers(0, 2**32))
        return int(rng.integers(0, 2**62)) << 64 | int(rng.integers(0, 2**62))

    addrs = [address(v) for v in ver.tolist()]
    # every 7th peer the same address (the ports decide), every 14th the same endpoint
    peers = [a if k % 7 == 0 else address(v) for k, (a, v) in enumerate(zip(addrs, ver.tolist(), strict=True))]
    op, rp = rng.integers(0, 65536, n), rng.integers(0, 65536, n)
    rp[::14] = op[::14]

    def split(values: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([v >> 64 for v in values], np.uint64), np.array([v & (2**64 - 1) for v in values], np.uint64)

    (oh, ol), (rh, rl) = split(addrs), split(peers)
    got = community_ids(ver, oh, ol, rh, rb=rl, op=op, rp=rp)
    for k in range(n):
        size = 4 if ver[k] == 4 else 16
        a = (addrs[k] & (2**32 - 1) if size == 4 else addrs[k]).to_bytes(size, "big")
        b = (peers[k] & (2**32 - 1) if size == 4 else peers[k]).to_bytes(size, "big")
        ends = sorted([(a, int(op[k])), (b, int(rp[k]))])
        raw = struct.pack("!H", 0) + ends[0][0] + ends[1][0] + struct.pack("!BBHH", 6, 0, ends[0][1], ends[1][1])
        assert got[k] == "1:" + base64.b64encode(hashlib.sha1(raw).digest()).decode(), k
    assert community_ids(ver[:0], oh[:0], ol[:0], rh[:0], rb=rl[:0], op=op[:0], rp=rp[:0]) == ()


def test_community_id_of_a_record() -> None:
    b = Builder()
    c = b.tcp(("1.2.3.4", 1122), ("5.6.7.8", 3344))
    c.handshake(0)
    conn, _ = one(b)
    assert conn.community_id == "1:wCb3OG7yAFWelaUydu0D+125CLM="


def test_missed_bytes_is_the_hole_tshark_reports(tmp_path: Path) -> None:
    """A 100-byte segment the capture lost: tshark flags the next one (previous segment not
    captured); the record counts the 100 bytes as missed."""
    hs = _handshake_and_request()
    recs = [*hs[:3], _pk(20, True, 0x18, _CI + 1 + 100, _SI + 1, _GET), _pk(30, False, 0x10, _SI + 1, _CI + 119)]
    p = tmp_path / "lost.pcap"
    p.write_bytes(pcap(recs))
    rows = tshark.fields(p, ["frame.number"], "tcp.analysis.lost_segment")
    assert rows == [["4"]]
    (c,) = analyze([p]).connections
    assert c.missed_bytes == 100
    assert c.orig_retransmits == 0


def test_ip_bytes_are_the_ip_lengths_tshark_reads(tmp_path: Path) -> None:
    """orig_ip_bytes / resp_ip_bytes are the IP lengths per direction, summed (Zeek's meaning):
    IPv4 options and TCP options counted, IPv6 as 40 + the payload length (extension headers
    included), the innermost header of a tunnel, the header's length also for a packet the snap
    length cut; tshark's ``ip.len`` and ``ipv6.plen`` per stream are the oracle."""
    v6c, v6s = bytes.fromhex("fd000000000000000000000000000010"), bytes.fromhex("fd000000000000010000000000000001")
    opts = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP timestamps

    def v4(ms: float, from_client: bool, flags: int, payload: bytes = b"", *, options: bytes = b"") -> Rec:
        src, dst = (C, SV) if from_client else (SV, C)
        seg = tcp(src[1], dst[1], seq=7, ack=9, flags=flags, payload=payload, options=opts)
        return Rec(ts_ns=_T0 + int(ms * MS), data=eth(0x0800, ipv4(6, seg, src=src[0], dst=dst[0], options=options)))

    def v6(ms: float, from_client: bool, flags: int, payload: bytes = b"") -> Rec:
        src, dst, sp, dp = (v6c, v6s, 41000, 80) if from_client else (v6s, v6c, 80, 41000)
        seg = ext(6, 1) + tcp(sp, dp, seq=7, ack=9, flags=flags, payload=payload)  # a hop-by-hop header first
        return Rec(ts_ns=_T0 + int(ms * MS), data=eth(0x86DD, ipv6(0, seg, src=src, dst=dst)))

    def tunneled(ms: float, from_client: bool, flags: int, payload: bytes = b"") -> Rec:
        src, dst = (("198.18.12.2", 42000), ("198.18.12.1", 80)) if from_client else (
            ("198.18.12.1", 80), ("198.18.12.2", 42000))
        inner = eth(0x0800, ipv4(6, tcp(src[1], dst[1], flags=flags, payload=payload), src=src[0], dst=dst[0]))
        outer = ipv4(17, udp(50000, 4789, vxlan(inner)), src="198.18.99.1", dst="198.18.99.2")
        return Rec(ts_ns=_T0 + int(ms * MS), data=eth(0x0800, outer))

    big = v4(40, False, 0x18, bytes(900))
    cut = Rec(ts_ns=big.ts_ns, data=big.data[:96], origlen=len(big.data))  # snap length 96
    recs = [v4(0, True, 0x02, options=b"\x01" * 8), v4(5, False, 0x12), v4(10, True, 0x10), v4(20, True, 0x18, _GET),
            cut, v6(50, True, 0x02), v6(55, False, 0x12), v6(60, True, 0x18, _GET + _GET), v6(70, False, 0x18, _OK),
            tunneled(80, True, 0x02), tunneled(85, False, 0x12), tunneled(90, True, 0x18, _GET)]  # fmt: skip
    p = tmp_path / "ip_bytes.pcap"
    p.write_bytes(pcap(recs))
    expected: dict[tuple[int, bool], int] = {}
    for stream, sport, ip_len, ip6_plen in tshark.fields(p, ["tcp.stream", "tcp.srcport", "ip.len", "ipv6.plen"]):
        length = int(ip_len.split(",")[-1]) if ip_len else 40 + int(ip6_plen)  # the innermost header
        key = (int(stream), int(sport) not in (443, 80))
        expected[key] = expected.get(key, 0) + length
    conns = sorted(analyze([p]).connections, key=lambda c: c.ts_ns)
    assert len(conns) == 3
    got = {(i, o): c.orig_ip_bytes if o else c.resp_ip_bytes for i, c in enumerate(conns) for o in (True, False)}
    assert got == expected
    assert conns[0].resp_ip_bytes == 900 + 2 * (20 + 32)  # the cut packet counts with its header's length


@pytest.mark.parametrize(
    ("first", "service"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Service.HTTP),
        (bytes([0x16, 3, 1, 0, 40]) + bytes(40), Service.TLS),
        (b"SSH-2.0-OpenSSH_9.2\r\n", Service.SSH),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Service.H2C),
        (bytes([0, 17, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, ord("a"), 0, 0, 1]), Service.DNS),
        (b"\x00\x01hello", None),
    ],
)
def test_service_from_the_first_payload_bytes(first: bytes, service: Service | None) -> None:
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, True, len(first), payload=first)
    conn, _ = one(b)
    assert conn.service is service


def test_ssh_service_from_the_server_banner() -> None:
    b = Builder()
    c = b.tcp(C, SV)
    c.handshake(0)
    c.data(20 * MS, False, 21, payload=b"SSH-2.0-OpenSSH_9.2\r\n")
    conn, _ = one(b)
    assert conn.service is Service.SSH


def test_tunnel_parents_from_the_capture(tmp_path: Path) -> None:
    """A connection inside VXLAN names it; tshark decodes the same inner stream."""
    def wrap(rec: Rec) -> Rec:
        outer = eth(0x0800, ipv4(17, udp(50000, 4789, vxlan(rec.data)), src="198.18.0.10", dst="198.18.0.11"))
        return Rec(ts_ns=rec.ts_ns, data=outer)

    p = tmp_path / "vxlan.pcap"
    p.write_bytes(pcap([wrap(r) for r in _handshake_and_request()]))
    assert {r[0] for r in tshark.fields(p, ["tcp.stream"])} == {"0"}
    (c,) = analyze([p]).connections
    assert c.tunnel_parents is TunnelParent.VXLAN
    assert c.service is Service.HTTP
    plain = tmp_path / "plain.pcap"
    plain.write_bytes(pcap(_handshake_and_request()))
    assert analyze([plain]).connections[0].tunnel_parents is None


def test_history_letters_follow_zeek() -> None:
    """Zeek's letters: ``t`` retransmitted payload (1st and 10th), ``q`` SYN+FIN, ``i`` FIN+RST,
    ``^`` a flipped direction (the SYN/ACK's receiver is the originator, the first packet came
    from the responder)."""
    b = Builder()
    c = b.tcp(C, SV)
    c._send(0, False, 0x12)  # SYN/ACK first: midstream handshake, direction flipped
    c.ack(1 * MS, True)
    c.data(2 * MS, True, 100)
    for k in range(10):
        c._send((3 + k) * MS, True, 0x18, length=100, seq=c.c_seq - 100)
    c._send(20 * MS, False, 0x13)  # SYN+FIN(+ACK) from the responder
    c._send(21 * MS, True, 0x15)  # FIN+RST from the originator
    conn, _ = one(b)
    h = conn.history
    assert h.startswith("^h")
    assert h.count("T") == 2  # 1st and 10th retransmission
    assert "q" in h and "I" in h
    assert conn.orig_retransmits == 10


def test_blocks_and_columns_give_the_records_values() -> None:
    from halfclose.analysis.document import plain
    from halfclose.analysis.records import plain_rows
    from test_engine import stale_scenario

    table = analyze_batches(stale_scenario().batches(4)).connections
    records = [plain(c) for c in table]
    assert len(records) == 2 and all(r["server_name"] for r in records)
    assert any(v is None for r in records for v in r.values())
    assert plain_rows(table.block()) == records
    assert plain_rows(table.block(slice(1, 2))) == records[1:2]
    assert plain_rows(table.block(slice(2, 2))) == []
    assert table.columns(slice(1, None)) == {k: [r[k] for r in records[1:]] for k in records[0]}


def test_servers_and_uids_of_many_rows_are_those_of_the_records() -> None:
    """A named server, unnamed IPv4 and IPv6 ones (the same one twice): the table's column-wise
    answers are each record's ``server`` and ``uid``."""
    b = Builder()
    ends = [(("198.18.0.10", 40000), ("198.19.0.1", 80), b"GET / HTTP/1.1\r\nHost: Named.Test:8080\r\n\r\n"),
            (("198.18.0.10", 40001), ("198.19.0.2", 443), b""), (("198.18.0.10", 40002), ("198.19.0.2", 443), b""),
            (("fd00::10", 40003), ("fd00::2", 8443), b"")]  # fmt: skip
    for k, (client, server, payload) in enumerate(ends):
        c = b.tcp(client, server)
        c.handshake(k * S)
        c.data(k * S + 20 * MS, True, len(payload) or 10, payload=payload)
    table = analyze_batches(b.batches(64)).connections
    rows = np.array([3, 0, 2, 1, 2], dtype=np.int64)
    assert table.servers(rows) == [table[i].server for i in rows.tolist()]
    assert table.servers(rows)[:2] == ["[fd00::2]:8443", "named.test"]
    assert table.uid_texts(rows) == [table[i].uid for i in rows.tolist()]
    assert table.servers(rows[:0]) == [] and table.uid_texts(rows[:0]) == []
