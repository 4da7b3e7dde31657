from __future__ import annotations

import dataclasses

import dns.message
import dns.name
import dns.rdata
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halfclose.analysis import Analysis, NameSource, analyze_batches
from halfclose.analysis.document import exchange_dicts, plain
from halfclose.analysis.records import plain_rows
from pktbuild import MS, Builder, S

CLIENT = ("198.18.9.2", 5353)
RESOLVER = ("198.18.9.53", 53)
SERVER = "198.18.9.1"


def query(b: Builder, ts: int, tid: int, *, answer: str | None = SERVER, ttl: int = 30,
          retransmit: bool = False, name: str = "img.lab.test") -> None:
    q = dns.message.make_query(name, "A", id=tid)
    b.udp(ts, CLIENT, RESOLVER, q.to_wire())
    if retransmit:
        b.udp(ts + 500 * MS, CLIENT, RESOLVER, q.to_wire())
    if answer is not None:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", answer))
        b.udp(ts + 600 * MS, RESOLVER, CLIENT, r.to_wire())


def test_pairs_retransmissions_and_counts_query_packets() -> None:
    b = Builder()
    query(b, 0, 0x0107, retransmit=True)
    a = analyze_batches(b.batches(2))
    assert a.summary.dns_queries == 2
    assert a.summary.dns_responses == 1
    (ex,) = a.dns.exchanges
    assert ex.queries == 2
    assert ex.qname == "img.lab.test" and ex.qtype == "A" and ex.rcode == "NOERROR"
    assert ex.addresses == (SERVER,) and ex.ttls == (30,)
    assert ex.rtt_ns == 600 * MS
    assert ex.client_h == CLIENT[0] and ex.server_p == 53
    assert ex.trans_id == 0x0107 and ex.client_p == CLIENT[1]


def test_redundant_within_ttl_and_ttl_floor_savings() -> None:
    b = Builder()
    query(b, 0, 1)  # answer at 0.6 s, expires at 30.6 s
    query(b, 10 * S, 2)  # still valid: within TTL
    query(b, 45 * S, 3)  # the 10 s answer expired 4.4 s before, same address: redundant
    query(b, 200 * S, 4)  # expired long ago: neither
    query(b, 210 * S, 5, answer="198.18.9.77")  # new address: neither
    a = analyze_batches(b.batches(3))
    flags = [(e.within_ttl, e.redundant) for e in a.dns.exchanges]
    assert flags == [(False, False), (True, False), (False, True), (False, False), (False, False)]
    assert a.summary.dns_redundant == 1 and a.summary.dns_within_ttl == 1
    # floor 60: 0 fetches (to 60.6), 10 and 45 saved, 200 fetches (to 260.6), 210 saved
    assert a.summary.dns_saved_by_ttl_floor == {"60": 3, "300": 4, "600": 4}


def test_redundancy_window_is_an_option() -> None:
    from halfclose.analysis import AnalysisOptions

    b = Builder()
    query(b, 0, 1)
    query(b, 40 * S, 3)
    a = analyze_batches(b.batches(10), AnalysisOptions(dns_redundant_window_s=5))
    assert a.summary.dns_redundant == 0


def test_cut_and_corrupt_payloads_are_issues_not_errors() -> None:
    b = Builder()
    q = dns.message.make_query("img.lab.test", "A", id=9).to_wire()
    b.add(0, CLIENT, RESOLVER, proto=17, payload=q[:20], length=len(q))  # cut by the snap length
    b.udp(1, CLIENT, RESOLVER, b"\x01\x02\x03")  # shorter than a header
    b.udp(2, CLIENT, RESOLVER, b"\x00\x05\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fxx")  # corrupt name
    a = analyze_batches(b.batches(10))
    kinds = sorted(i.kind for i in a.issues)
    assert kinds == ["dns_corrupt", "dns_short", "dns_truncated"]
    assert a.summary.issues == 3
    assert a.summary.dns_queries == 2  # the short one has no header to count


def test_connection_named_from_an_earlier_answer() -> None:
    b = Builder()
    query(b, 0, 1, name="cdn.lab.test")
    c = b.tcp(("198.18.9.2", 40000), (SERVER, 443))
    c.handshake(1 * S)
    c.data(1 * S + 20 * MS, True, 100)  # not TLS, not HTTP: no name in the payload
    (conn,) = analyze_batches(b.batches(4)).connections
    assert conn.server_name == "cdn.lab.test"
    assert conn.server_name_source is NameSource.DNS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=80)), max_size=20))
def test_arbitrary_port_53_payloads_never_break_the_analysis(payloads: list[tuple[bool, bytes]]) -> None:
    b = Builder()
    for k, (to_server, data) in enumerate(payloads):
        src, dst = (CLIENT, RESOLVER) if to_server else (RESOLVER, CLIENT)
        b.udp(k * MS, src, dst, data)
    a = analyze_batches(b.batches(3))
    assert a.summary.dns_queries + a.summary.dns_responses <= len(payloads)
    assert len(a.dns.exchanges) <= len(payloads)
    for ex in a.dns.exchanges:
        assert ex.queries >= 0
    assert_blocks_are_the_records(a)


def assert_blocks_are_the_records(a: Analysis) -> None:
    """The exchanges column-wise (whole and in blocks) give the records' values."""
    records = [plain(e) for e in a.dns.exchanges]
    assert exchange_dicts(a) == records
    n = len(records)
    assert exchange_dicts(a, slice(1, n - 1)) == records[1 : n - 1]
    assert [list(d) for d in records[:1]] == [list(d) for d in exchange_dicts(a)[:1]]  # the field order
    as_list = dataclasses.replace(a.dns, exchanges=list(a.dns.exchanges))
    assert plain_rows(as_list.exchange_block(slice(1, None))) == records[1:]
    queries, by_record = a.dns.queries(), as_list.queries()
    assert queries == by_record and list(queries.by_client) == list(by_record.by_client)
    said = sorted((g.address, t, g.name) for g in a.dns.answers().groups for t in g.times.tolist())
    assert said == sorted((x.address, *x.times.tolist(), x.name) for x in as_list.answers().groups)


def test_queries_per_client_are_those_of_the_records() -> None:
    """Two clients interleaved, one answer without its query: the queries column-wise, per client
    in the order of their first query, are the records' (and an unknown client has none)."""
    b = Builder()
    query(b, 0, 1, name="b.lab.test")
    r = dns.message.make_response(dns.message.make_query("orphan.lab.test", "A", id=9))
    b.udp(1 * S, RESOLVER, ("198.18.9.3", 5353), r.to_wire())
    q = dns.message.make_query("a.lab.test", "AAAA", id=2)
    b.udp(2 * S, ("198.18.9.4", 5000), RESOLVER, q.to_wire())
    query(b, 3 * S, 3, name="c.lab.test")
    a = analyze_batches(b.batches(2))
    assert_blocks_are_the_records(a)
    queries = a.dns.queries()
    assert list(queries.by_client) == [CLIENT[0], "198.18.9.4"]
    assert queries.of(CLIENT[0]).names == ["b.lab.test", "c.lab.test"]
    assert queries.of(CLIENT[0]).times == [0, 3 * S]
    assert queries.every.names == ["b.lab.test", "a.lab.test", "c.lab.test"]
    assert queries.of("198.18.9.3").times == []


def test_exchange_blocks_give_the_records_values() -> None:
    b = Builder()
    query(b, 0, 1, retransmit=True)
    query(b, 10 * S, 2)  # within the TTL
    query(b, 20 * S, 3, answer=None)  # never answered
    query(b, 45 * S, 4, name="cdn.lab.test", ttl=5)
    r = dns.message.make_response(dns.message.make_query("late.lab.test", "AAAA", id=5))
    r.answer.append(dns.rrset.from_text("late.lab.test.", 7, "IN", "CNAME", "edge.lab.test."))
    r.answer.append(dns.rrset.from_text("edge.lab.test.", 9, "IN", "AAAA", "fd00::2", "fd00::1"))
    b.udp(50 * S, RESOLVER, CLIENT, r.to_wire())  # a response without its query
    a = analyze_batches(b.batches(3))
    assert len(a.dns.exchanges) == 5
    late = exchange_dicts(a)[-1]
    assert late["queries"] == 0 and late["rtt_ns"] is None and late["addresses"] == ["fd00::1", "fd00::2"]
    assert exchange_dicts(a)[2]["rcode"] is None and exchange_dicts(a)[2]["answers"] == []
    assert_blocks_are_the_records(a)


def _wire_messages() -> list[bytes]:
    """Responses and queries of many shapes, built with dnspython."""
    import dns.edns
    import dns.rcode
    import dns.rdatatype

    out: list[bytes] = []
    for qname, rdtype, answers, rcode, edns in [
        ("api.example.com", "A", [("api.example.com", 300, "A", "198.51.100.7"),
                                  ("api.example.com", 60, "A", "198.51.100.8")], 0, False),
        ("WWW.Example.COM", "AAAA", [("www.example.com", 30, "AAAA", "2001:db8::1")], 0, False),
        ("www.example.com", "A", [("www.example.com", 30, "CNAME", "Edge.Example.NET."),
                                  ("edge.example.net", 20, "A", "203.0.113.5"),
                                  ("edge.example.net", 10, "A", "203.0.113.6")], 0, False),
        ("v6.example", "AAAA", [("v6.example", 5, "AAAA", "::ffff:1.2.3.4")], 0, False),
        ("v6.example", "AAAA", [("v6.example", 5, "AAAA", "::1.2.3.4")], 0, False),
        ("v6.example", "AAAA", [("v6.example", 5, "AAAA", "2001:db8:0:0:1:0:0:1")], 0, False),
        ("mx.example", "MX", [("mx.example", 5, "MX", "10 mail.example.")], 0, False),
        ("gone.example", "A", [], 3, False),
        ("edns.example", "A", [("edns.example", 7, "A", "192.0.2.1")], 0, True),
        ("odd\\032name.example", "A", [("odd\\032name.example", 7, "A", "192.0.2.2")], 0, False),
        ("svc.example", "HTTPS", [], 0, False),
        ("x.example", "TYPE4000", [], 2, False),
    ]:  # fmt: skip
        q = dns.message.make_query(qname, rdtype, use_edns=edns)
        out.append(q.to_wire())
        r = dns.message.make_response(q)
        r.set_rcode(dns.rcode.Rcode(rcode))
        for owner, ttl, t, text in answers:
            rr = r.find_rrset(r.answer, dns.name.from_text(owner), 1, dns.rdatatype.from_text(t), create=True)
            rr.add(dns.rdata.from_text(1, t, text), ttl)
        if rcode == 3:
            soa = dns.rrset.from_text("example.", 60, "IN", "SOA", "ns.example. host.example. 1 2 3 4 5")
            r.authority.append(soa)
        out.append(r.to_wire())
    return out


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_direct_reading_gives_what_dnspython_gives(data: st.DataObject) -> None:
    """Every message the direct reader accepts reads the same as with dnspython, also when cut
    short or with a byte changed; the shapes it leaves alone go to dnspython."""
    from halfclose.analysis import dns as d

    messages = _wire_messages()
    wire = bytearray(data.draw(st.sampled_from(messages)))
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(12, len(wire)))
    payload = bytes(wire[:cut])
    fast = d._parse_fast(payload)
    if fast is not None:
        assert fast == d._parse_dnspython(payload)


def test_direct_reading_covers_the_common_shapes() -> None:
    from halfclose.analysis import dns as d

    messages = _wire_messages()
    read = [d._parse_fast(m) for m in messages]
    assert sum(p is not None for p in read) >= 14
    for m, p in zip(messages, read, strict=True):
        if p is not None:
            assert p == d._parse_dnspython(m)


def test_distinct_rows_numbered_by_first_appearance_also_when_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows with repeats (some differing in one byte only, some in the padding's place): each
    distinct row once, in row order, every row pointing at its own value; with every hash equal
    (forced) the exact comparison gives the same answer."""
    import numpy as np

    from halfclose.analysis import dns as dns_mod

    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (6, 13)).astype(np.uint8)
    base[1] = base[0]
    base[1, 12] ^= 1  # one byte apart
    pick = rng.integers(0, 6, 200)
    mat = base[pick]
    want = list(dict.fromkeys(pick.tolist()))  # the distinct rows by first appearance
    for forced in (False, True):
        if forced:
            monkeypatch.setattr(dns_mod, "mix64", np.zeros_like)
        first, inv = dns_mod._distinct_rows(mat)
        assert pick[first].tolist() == want
        assert first.tolist() == sorted(first.tolist())
        assert (mat[first[inv]] == mat).all()


def big_txt(b: Builder, ts: int, tid: int) -> None:
    """A response longer than the small messages, and the same cut by the snap length."""
    big = dns.message.make_response(dns.message.make_query("big.lab.test", "TXT", id=tid))
    big.answer.append(dns.rrset.from_text("big.lab.test.", 30, "IN", "TXT", '"' + "x" * 250 + '" "' + "y" * 250 + '"'))
    b.udp(ts, RESOLVER, CLIENT, big.to_wire())
    b.udp(ts + S, RESOLVER, CLIENT, big.to_wire()[:40])  # cut


@pytest.mark.parametrize("waiting", [1, 3, 10_000])
def test_messages_told_apart_across_batches_as_within_one(monkeypatch: pytest.MonkeyPatch, waiting: int) -> None:
    """Repeated, new and cut messages, and one longer than the small ones, over batches of 2
    packets: the exchanges are the same whether a few or all of the waiting messages are told
    apart together, and each distinct message is parsed once."""
    from halfclose.analysis import dns as dns_mod

    b = Builder()
    for k in range(12):
        query(b, k * S, 100 + k, name=f"n{k % 4}.lab.test", answer=f"198.18.9.{k % 3 + 1}")
    big_txt(b, 13 * S, 7)
    whole = [plain(e) for e in analyze_batches(b.batches(10_000)).dns.exchanges]
    monkeypatch.setattr(dns_mod, "_PENDING_ROWS", waiting)
    parsed: list[bytes] = []
    real = dns_mod._parse
    monkeypatch.setattr(dns_mod, "_parse", lambda payload: parsed.append(payload) or real(payload))
    a = analyze_batches(b.batches(2))
    assert [plain(e) for e in a.dns.exchanges] == whole
    assert len(parsed) == len(set(parsed)) and len(whole) == 13  # the two answers of id 7 are one


def test_address_ids_as_an_address_book_interning_each_feed() -> None:
    """The addresses are numbered at the end as an address book interning each feed's sources,
    then its destinations, would have numbered them (new ones by address order; IPv4 and IPv6,
    halves above 2**63 among them)."""
    import numpy as np

    from halfclose.analysis import _flowkernel as fk
    from halfclose.analysis import dns as dns_mod
    from halfclose.analysis._common import AddressBook

    rng = np.random.default_rng(11)
    pool_hi = np.array([0, 0, 0, 0xFD00 << 48, 0xFD00 << 48, 0xFE80 << 48], dtype=np.uint64)
    pool_lo = np.array([0xFFFF_C612_0902, 0xFFFF_C612_0935, 0xFFFF_C612_0901, 0x10, 0x53, 0xFFFF_FFFF_FFFF_FFFF],
                       dtype=np.uint64)  # fmt: skip
    pool_ver = np.array([4, 4, 4, 6, 6, 6])
    # (a packet's two addresses are of one family: the first three IPv4, the last three IPv6)
    feeds = [rng.integers(0, 3, (int(rng.integers(1, 6)), 2)) + 3 * rng.integers(0, 2, (1, 1)) for _ in range(9)]
    book = AddressBook()
    want: list[np.ndarray] = []
    for pick in feeds:
        for side in (0, 1):
            want.append(book.intern(pool_ver[pick[:, side]], pool_hi[pick[:, side]], pool_lo[pick[:, side]]))
    picks = np.concatenate(feeds)
    cols = np.zeros((picks.shape[0], fk.DNS_COLUMNS), np.int64)
    cols[:, fk.DNS_VERSION] = pool_ver[picks[:, 0]]
    cols[:, fk.DNS_SRC_HI] = pool_hi[picks[:, 0]].view(np.int64)
    cols[:, fk.DNS_SRC_LO] = pool_lo[picks[:, 0]].view(np.int64)
    cols[:, fk.DNS_DST_HI] = pool_hi[picks[:, 1]].view(np.int64)
    cols[:, fk.DNS_DST_LO] = pool_lo[picks[:, 1]].view(np.int64)
    feed = np.repeat(np.arange(len(feeds)), [f.shape[0] for f in feeds])
    ids, texts = dns_mod._address_ids(feed, cols)
    n = picks.shape[0]
    assert texts == tuple(book.texts)
    assert ids[:n].tolist() == np.concatenate(want[0::2]).tolist()
    assert ids[n:].tolist() == np.concatenate(want[1::2]).tolist()
    assert len(texts) >= 5 and "fe80::ffff:ffff:ffff:ffff" in texts


def test_compiled_dns_copy_matches_plain_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled copy of the DNS rows gives the exchanges the plain Python one gives (small,
    long and cut messages, IPv6)."""
    from halfclose.analysis import _flowkernel as fk
    from halfclose.analysis import dns as dns_mod
    from halfclose.capture.compiling import use_compiled

    if not use_compiled():
        pytest.skip("numba is not installed or disabled: the kernels are plain Python already")
    b = Builder()
    for k in range(40):
        query(b, k * S, 200 + k, name=f"n{k % 6}.lab.test", answer=f"198.18.9.{k % 4 + 1}")
    big_txt(b, 50 * S, 9)
    b.udp(52 * S, ("fd09::2", 5353), ("fd09::53", 53), dns.message.make_query("six.lab.test", "AAAA").to_wire())
    compiled = [plain(e) for e in analyze_batches(b.batches(7)).dns.exchanges]
    monkeypatch.setattr(dns_mod.fk, "dns_take", fk.plain(fk.dns_take.py_func))  # type: ignore[attr-defined]
    assert [plain(e) for e in analyze_batches(b.batches(7)).dns.exchanges] == compiled
    assert len(compiled) == 42  # (the two answers of id 9 are one exchange)
