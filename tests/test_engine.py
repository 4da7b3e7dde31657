from __future__ import annotations

import dns.message
import dns.rrset
import pytest

from halfclose.analysis import (
    ConnState,
    Finding,
    FindingKind,
    HalfCloseEnd,
    Outcome,
    Side,
    StaleReuse,
    analyze_batches,
    headline,
)
from pktbuild import MS, Builder, S

CLIENT = "198.18.7.2"
SERVER = "198.18.7.1"
DNS = "198.18.7.53"
REQ = b"GET / HTTP/1.1\r\nHost: img.lab.test\r\n\r\n"


def dns_pair(b: Builder, ts: int, tid: int, *, ttl: int = 30, addr: str = SERVER, port: int = 5353) -> None:
    q = dns.message.make_query("img.lab.test", "A", id=tid)
    b.udp(ts, (CLIENT, port), (DNS, 53), q.to_wire())
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("img.lab.test.", ttl, "IN", "A", addr))
    b.udp(ts + 1 * MS, (DNS, 53), (CLIENT, port), r.to_wire())


def stale_scenario(keepalive: bool = True) -> Builder:
    b = Builder()
    dns_pair(b, 0, 1)
    c = b.tcp((CLIENT, 40000), (SERVER, 80))
    c.handshake(10 * MS)
    c.data(30 * MS, True, len(REQ), REQ)
    c.data(40 * MS, False, 200)
    c.ack(41 * MS, True)
    if keepalive:
        for k in range(1, 3):
            c.keepalive(k * S, True)
            c.ack(k * S + 1 * MS, False)
        c.keepalive(int(1.5 * S), True, one_byte=True)
    c.fin(2 * S + 40 * MS, False)  # idle 2.0 s after the response
    c.ack(2 * S + 80 * MS, True)
    c.data(3 * S, True, len(REQ), REQ)  # stale write
    c.rst(3 * S + 1 * MS, False)
    dns_pair(b, 3 * S + 2 * MS, 2)
    d = b.tcp((CLIENT, 40001), (SERVER, 80), isn_c=77, isn_s=88)
    d.handshake(3 * S + 10 * MS)
    d.data(3 * S + 21 * MS, True, len(REQ), REQ)
    d.data(3 * S + 31 * MS, False, 200)
    d.fin(3 * S + 40 * MS, True)
    d.fin(3 * S + 45 * MS, False)
    d.ack(3 * S + 50 * MS, True)
    return b


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_stale_reuse_found_whatever_the_batch_size(size: int) -> None:
    a = analyze_batches(stale_scenario().batches(size))
    assert a.summary.tcp_connections == 2
    first, second = a.connections
    assert first.conn_state is ConnState.RSTR
    assert first.closed_first is Side.RESP
    assert first.idle_before_close_ns == 2 * S
    assert first.orig_keepalives == 3
    assert first.orig_retransmits == 0
    assert first.stale_write_ns == 3 * S
    assert first.half_close_end is HalfCloseEnd.RST
    assert first.handshake_rtt_ns == 10 * MS
    assert first.server_name == "img.lab.test"
    h = first.history
    assert "f" in h and h.index("f") < h.rindex("D") < h.index("r")
    assert second.conn_state is ConnState.SF
    assert second.closed_first is Side.ORIG
    stale = [f for f in a.findings if f.kind is FindingKind.STALE_REUSE]
    assert len(stale) == 1
    ev = stale[0]
    assert ev.outcome == "rst"
    assert ev.replacement_uid == second.uid
    assert ev.wasted_ns == 10 * MS
    assert ev.wasted_rtts == 1.0
    assert ev.dns_lookups == 1
    assert a.summary.stale_reuse == 1
    assert a.summary.server_closed_first == 1
    assert a.summary.dns_queries == 2
    assert a.servers[0].server == "img.lab.test"
    assert a.servers[0].idle_timeout_s == 2.0
    assert a.summary.headline.startswith("1 request paid for a dead connection: 1 RTT and 1 DNS lookup each")


def test_uids_are_stable_and_distinct() -> None:
    a1 = analyze_batches(stale_scenario().batches(5))
    a2 = analyze_batches(stale_scenario().batches(1000))
    assert [c.uid for c in a1.connections] == [c.uid for c in a2.connections]
    assert len({c.uid for c in a1.connections}) == 2


def test_empty_input() -> None:
    a = analyze_batches([])
    assert a.summary.tcp_connections == 0 and len(a.connections) == 0
    assert a.summary.headline == "No request was written into a dead connection."


def _stale(wasted: int | None, rtts: float | None, lookups: int) -> Finding:
    return StaleReuse(
        ts_ns=0, uids=("C1",), server="s", server_fin_ns=0, stale_write_ns=0, write_after_fin_ns=0, stale_segments=1,
        outcome=Outcome.RST, replacement_uid=None if wasted is None else "C2", wasted_ns=wasted, wasted_rtts=rtts,
        rtt_ns=None, dns_lookups=lookups,
    )


def test_headline_wording() -> None:
    assert headline([], 0) == "No request was written into a dead connection."
    assert headline([], 2).endswith("servers closed 2 idle connection(s) first.")
    three = [_stale(50 * MS, 2.0, 1), _stale(52 * MS, 2.1, 1), _stale(50 * MS, 1.9, 2)]
    assert headline(three, 3) == "3 requests paid for a dead connection: 2 RTTs and 1 DNS lookup each, 152 ms in all."
    some = [_stale(20 * S, 40.0, 0), _stale(None, None, 0)]
    assert headline(some, 2) == (
        "2 requests went into dead connections; the 1 retried on a new connection paid 40 RTTs each, 20.0 s in all."
    )
    assert headline([_stale(None, None, 0)], 1) == "1 request went into a dead connection (no retry connection seen)."
