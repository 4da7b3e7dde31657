"""The analysis on real TLS 1.3, TLS 1.2, HTTP/2 and h2c captures of nginx, checked against tshark
(which reads the TLS records with the clients' key log)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from halfclose.analysis import Analysis, ClosingRecord, Connection, FindingKind, NameSource
from halfclose.analysis_io import analyze
from halfclose.netns import Claim
from realcap import tshark_counts, workdir
from tlscap import SITES, TlsCapture, make_tls_capture
from tshark import fields

pytestmark = pytest.mark.root

US = 1000


@pytest.fixture(scope="module")
def capture() -> Iterator[TlsCapture]:
    with Claim() as claim:
        yield make_tls_capture(claim, workdir(claim))


@dataclass
class Stream:
    """One TCP stream as tshark shows it (times in ns)."""

    client_port: int
    server_port: int
    sni: str = ""
    payload: list[tuple[int, bool]] | None = None  # (time, from server) of new payload
    closing_ns: int | None = None  # the server's first close_notify alert or GOAWAY
    goaway_ns: int | None = None
    alert_visible: bool = False  # the close_notify's record type 21 is on the wire
    server_fin_ns: int | None = None
    server_fin_retransmits: int = 0
    fin_retransmit_ns: int | None = None
    client_ack_of_fin_ns: int | None = None
    server_fin_seq: int | None = None
    client_rst_ns: int | None = None


def tshark_streams(cap: TlsCapture) -> dict[int, Stream]:
    ports = {s.port for s in SITES}
    rows = fields(
        cap.pcap,
        ["frame.number", "tcp.stream", "frame.time_epoch", "tcp.srcport", "tcp.dstport", "tcp.len", "tcp.flags.fin",
         "tcp.flags.reset", "tcp.flags.ack", "tcp.seq", "tcp.ack", "tcp.analysis.retransmission",
         "tls.handshake.extensions_server_name", "tls.alert_message.desc", "http2.type", "tls.record.content_type"],
        "tcp",
    )
    # the key log lets tshark decrypt; the records' outer types are read without it
    decrypted = {r[0]: r for r in _decrypted(cap)}
    out: dict[int, Stream] = {}
    for row in rows:
        frame, stream, t_s, sport, dport, length, fin, rst, ack, seq, ackno, retx, sni, _, _, ctype = row
        t = round(float(t_s) * 1e9)
        from_server = int(sport) in ports
        s = out.setdefault(int(stream), Stream(client_port=int(dport if from_server else sport),
                                               server_port=int(sport if from_server else dport), payload=[]))
        assert s.payload is not None
        if sni:
            s.sni = sni
        if int(length or 0) > 0 and not retx:
            s.payload.append((t, from_server))
        _, alerts, h2_types = decrypted[frame]
        close_notify, goaway = "0" in alerts.split(","), "7" in h2_types.split(",")
        if from_server and s.closing_ns is None and (close_notify or goaway):
            s.closing_ns = t
        if from_server and goaway and s.goaway_ns is None and s.server_port == 8080:
            s.goaway_ns = t  # in the clear (h2c)
        if from_server and "21" in ctype.split(","):
            s.alert_visible = s.alert_visible or s.closing_ns == t
        is_fin = fin in ("1", "True")
        if from_server and is_fin:
            if s.server_fin_ns is None:
                s.server_fin_ns, s.server_fin_seq = t, int(seq) + int(length or 0) + 1
            elif retx:
                s.server_fin_retransmits += 1
                s.fin_retransmit_ns = s.fin_retransmit_ns or t
        if (not from_server and ack in ("1", "True") and s.server_fin_seq is not None
                and s.client_ack_of_fin_ns is None and int(ackno) >= s.server_fin_seq):
            s.client_ack_of_fin_ns = t
        if not from_server and rst in ("1", "True") and s.client_rst_ns is None:
            s.client_rst_ns = t
    return out


def _decrypted(cap: TlsCapture) -> list[list[str]]:
    import subprocess

    argv = ["tshark", "-n", "-r", str(cap.pcap), "-o", f"tls.keylog_file:{cap.keylog}", "-T", "fields",
            "-E", "separator=\t", "-Y", "tcp"]
    for name in ("frame.number", "tls.alert_message.desc", "http2.type"):
        argv += ["-e", name]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.fixture(scope="module")
def streams(capture: TlsCapture) -> dict[int, Stream]:
    return tshark_streams(capture)


def by_port(capture: TlsCapture) -> tuple[Analysis, dict[int, Connection]]:
    result = analyze([capture.pcap])
    return result, {c.orig_p: c for c in result.connections}


def test_idle_timeouts_measured_to_the_first_closing_record(capture: TlsCapture, streams: dict[int, Stream]) -> None:
    result, conns = by_port(capture)
    timeouts = {s.server: s for s in result.servers}
    for site in SITES:
        assert abs(timeouts[site.name].idle_timeout_s - site.idle_s) <= 0.15, (site, timeouts[site.name])
        assert timeouts[site.name].samples >= 2
    checked = 0
    for st in streams.values():
        conn = conns[st.client_port]
        assert st.payload
        if st.closing_ns is None:
            continue  # the client closed first
        last = max(t for t, _ in st.payload if t < st.closing_ns)
        assert conn.closing_record_ns is not None
        assert abs(conn.closing_record_ns - st.closing_ns) <= US
        assert conn.idle_before_close_ns is not None
        assert abs(conn.idle_before_close_ns - (st.closing_ns - last)) <= 2 * US
        tls = {s.port: s.tls for s in SITES}[st.server_port]
        if tls is None:
            assert conn.closing_record is ClosingRecord.H2_GOAWAY
        elif st.alert_visible:
            assert conn.closing_record is ClosingRecord.TLS_ALERT
        else:
            assert conn.closing_record is ClosingRecord.TLS_SHORT
        checked += 1
    assert checked >= 10
    kinds = {c.closing_record for c in result.connections}
    assert {ClosingRecord.TLS_ALERT, ClosingRecord.TLS_SHORT, ClosingRecord.H2_GOAWAY} <= kinds


def test_h2c_goaway_recorded_per_connection(capture: TlsCapture, streams: dict[int, Stream]) -> None:
    _, conns = by_port(capture)
    h2c = [st for st in streams.values() if st.server_port == 8080]
    assert len(h2c) == 2
    for st in streams.values():
        conn = conns[st.client_port]
        if st.goaway_ns is None:
            assert conn.resp_goaway_ns is None
        else:
            assert conn.resp_goaway_ns is not None and abs(conn.resp_goaway_ns - st.goaway_ns) <= US
        assert conn.orig_goaway_ns is None
    assert all(st.goaway_ns is not None for st in h2c)


def test_tail_loss_probe_of_the_fin_is_no_lost_ack(capture: TlsCapture, streams: dict[int, Stream]) -> None:
    result, conns = by_port(capture)
    lost = {f.uids[0] for f in result.findings if f.kind is FindingKind.LOST_FIN_ACK}
    expected = set()
    for st in streams.values():
        conn = conns[st.client_port]
        assert conn.resp_fin_retransmits == st.server_fin_retransmits
        if st.client_ack_of_fin_ns is not None:
            assert conn.resp_fin_acked_ns is not None and abs(conn.resp_fin_acked_ns - st.client_ack_of_fin_ns) <= US
        probe = (
            st.server_fin_retransmits == 1 and st.client_ack_of_fin_ns is not None
            and st.fin_retransmit_ns is not None and st.server_fin_ns is not None
            and st.fin_retransmit_ns - st.server_fin_ns < 200_000_000
            and st.client_ack_of_fin_ns > st.fin_retransmit_ns
            and (st.client_rst_ns is None or st.client_rst_ns > st.client_ack_of_fin_ns)
        )
        if st.server_fin_retransmits and not probe:
            expected.add(conn.uid)
    assert lost == expected
    assert result.summary.lost_fin_ack == len(expected)
    assert result.summary.fin_retransmits == tshark_counts(capture.pcap).fin_retransmits


def test_stale_reuse_found_on_tls(capture: TlsCapture) -> None:
    result, _ = by_port(capture)
    oracle = tshark_counts(capture.pcap)
    assert result.summary.stale_reuse == oracle.client_data_after_server_fin == 1
    (stale,) = [f for f in result.findings if f.kind is FindingKind.STALE_REUSE]
    assert stale.server == "a.lab.test"
    assert stale.outcome == "rst"
    assert stale.replacement_uid is not None


def test_server_names_from_sni_and_dns(capture: TlsCapture, streams: dict[int, Stream]) -> None:
    _, conns = by_port(capture)
    # the DNS name: the question of the last answer carrying the server's address before the SYN
    answers = [(round(float(t) * 1e9), q) for t, q, a in fields(
        capture.pcap, ["frame.time_epoch", "dns.qry.name", "dns.a"], "dns.flags.response == 1") if a == capture.server]
    assert len(answers) >= 11
    for st in streams.values():
        conn = conns[st.client_port]
        dns_name = [q for t, q in answers if t <= conn.ts_ns][-1]
        assert conn.dns_name == dns_name
        if st.sni:
            assert (conn.server_name, conn.server_name_source) == (st.sni, NameSource.TLS_SNI)
        else:
            assert (conn.server_name, conn.server_name_source) == (dns_name, NameSource.DNS)
    assert sum(1 for st in streams.values() if st.sni) >= 9
