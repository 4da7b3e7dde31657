"""DNS over UDP port 53: queries paired with answers, TTLs, and lookups that a cache would save.

Column-wise like the rest: :class:`DnsCollector` takes the port-53 rows of each batch, keys
every message by its bytes after the transaction id, and parses each distinct message once (the
common shapes by a small reader of its own, anything else with dnspython, which is imported only
then; both give the same values); pairing, redundancy and the per-address names are numpy over those columns. A payload
that dnspython cannot parse (cut by the snap length, or corrupt) still yields what its header and
question give, and an :class:`AnalysisIssue`.

Rules:

* A query and a response pair when client address and port, server address and port, transaction
  id, name and type agree; a query repeated before its answer (same id) counts as a retransmission
  of the same exchange. A response with no query seen gets an exchange of its own.
* ``redundant``: the previous answer to this client for the same name and type (NOERROR, with
  addresses) had expired less than ``window`` before the new query, and the new answer carries
  the same set of addresses. ``within_ttl``: the previous answer had not even expired yet.
* TTL floor savings: a cache per client keeping every answer for ``max(TTL, floor)`` seconds
  would have answered the queries counted in ``saved_by_ttl_floor[floor]`` itself (an answered
  query does not refresh the cache).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from halfclose.analysis import _flowkernel as fk
from halfclose.analysis._common import MISSING_CODE, MISSING_INT, format_address, mix64
from halfclose.analysis.names import AddressAnswers, AnswerGroup
from halfclose.analysis.records import Block, Coded, Ints
from halfclose.analysis.schema import FieldSpec, Kind, column, fields_of
from halfclose.capture.columns import PacketBatch

__all__ = [
    "DEFAULT_TTL_FLOORS",
    "DNS_EXCHANGE_FIELDS",
    "AnalysisIssue",
    "DnsCollector",
    "DnsExchange",
    "DnsQueries",
    "DnsResult",
    "QueryTimes",
]

DEFAULT_TTL_FLOORS: tuple[int, ...] = (60, 300, 600)
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisIssue:
    """Something in the input that analysis could not use fully (the capture's fault).

    Fields: kind (short code), file_index and frame (where; frame 1-based), message (one line).
    """

    kind: str
    file_index: int
    frame: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsExchange:
    """A DNS query and its response (either may be missing from the capture); every field is
    declared with its doc line (:data:`DNS_EXCHANGE_FIELDS`)."""

    ts_ns: int = column("the query's time (the response's when no query was seen)", unit="ns")
    client_h: str = column("the client's address")
    client_p: int = column("the client's port")
    server_h: str = column("the DNS server's address")
    server_p: int = column("the DNS server's port")
    trans_id: int = column("the DNS transaction id")
    qname: str = column("the question name (lower case, no trailing dot)")
    qtype: str = column('its type ("A", "AAAA", ...)')
    queries: int = column("query packets seen (1 + retransmissions); 0 when only the response was seen")
    response_ns: int | None = column("the response's time", unit="ns")
    rtt_ns: int | None = column("response minus first query", unit="ns")
    rcode: str | None = column('response code name ("NOERROR", "NXDOMAIN", ...); empty without a response')
    answers: tuple[str, ...] = column("answer data in order (addresses, CNAME targets, ...)")
    ttls: tuple[int, ...] = column("their TTLs", unit="s")
    addresses: tuple[str, ...] = column("the A/AAAA addresses among the answers, sorted")
    min_ttl_s: int | None = column("the smallest TTL of the answers", unit="s")
    redundant: bool = column(
        "the previous answer to this client for the same name and type had expired less than the window "
        "before, and the new answer carries the same addresses"
    )
    within_ttl: bool = column("the same, but the previous answer had not even expired yet")
    since_expiry_ns: int | None = column(
        "the query time minus the previous answer's expiry (negative while it was still valid); empty "
        "without a previous answer", unit="ns",
    )  # fmt: skip
    complete: bool = column("false when the payload was cut short or corrupt (answers may be missing)")


#: The declared fields of :class:`DnsExchange`.
DNS_EXCHANGE_FIELDS: tuple[FieldSpec, ...] = fields_of(DnsExchange)


@dataclass(frozen=True, slots=True)
class QueryTimes:
    """DNS queries by time: their times (ns) and question names."""

    times: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsQueries:
    """The exchanges that had a query, by time: per client address, and of all clients together."""

    by_client: dict[str, QueryTimes]
    every: QueryTimes

    def of(self, client: str) -> QueryTimes:
        """The queries of one client address (none: empty)."""
        return self.by_client.get(client, QueryTimes())


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsResult:
    """All DNS exchanges (by query time) and the counts derived from them.

    ``issues`` holds the first few issues of each kind, ``issue_counts`` how many there were.
    """

    exchanges: Sequence[DnsExchange]
    query_packets: int
    response_packets: int
    redundant: int
    within_ttl: int
    saved_by_ttl_floor: dict[int, int]
    issues: tuple[AnalysisIssue, ...]
    issue_counts: dict[str, int]

    def exchange_block(self, rows: slice = slice(None)) -> Block:
        """The exchanges *rows* (a slice with step 1) column-wise (see :mod:`halfclose.analysis.records`)."""
        ex = self.exchanges
        if isinstance(ex, _Exchanges):
            return ex.block(rows)
        records = list(ex[rows])
        index = np.arange(len(records), dtype=np.int64)
        return {
            s.name: Coded(index, [getattr(e, s.name) for e in records], tuples=s.kind in (Kind.INTS, Kind.STRS))
            for s in DNS_EXCHANGE_FIELDS
        }

    def queries(self) -> DnsQueries:
        """The exchanges with a query, by time, per client and in all."""
        ex = self.exchanges
        if isinstance(ex, _Exchanges):
            return ex.queries()
        out = DnsQueries(by_client={}, every=QueryTimes())
        for e in ex:
            if e.queries:
                for qt in (out.by_client.setdefault(e.client_h, QueryTimes()), out.every):
                    qt.times.append(e.ts_ns)
                    qt.names.append(e.qname)
        return out

    def answers(self) -> AddressAnswers:
        """Every address an answer carried, with the answer's time and question name."""
        ex = self.exchanges
        if isinstance(ex, _Exchanges):
            return ex.answers()
        rows = [(a, e.response_ns, e.qname) for e in ex if e.response_ns is not None and e.qname for a in e.addresses]
        return AddressAnswers.of(rows)


@dataclass(slots=True)
class _Parsed:
    is_response: bool
    trans_id: int
    qname: str
    qtype: str
    rcode: str | None = None
    answers: list[str] = field(default_factory=list)
    ttls: list[int] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    complete: bool = True


_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
           64: "SVCB", 65: "HTTPS", 255: "ANY"}  # fmt: skip
_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
#: Label bytes that dnspython prints as they are (anything else takes the dnspython path).
_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_-]+")
_T_A, _T_NS, _T_CNAME, _T_SOA, _T_AAAA, _T_OPT = 1, 2, 5, 6, 28, 41


def _name(buf: bytes, off: int) -> tuple[str, int] | None:
    """A plain (non-root) domain name at *off*, as dnspython prints it without the final dot, and
    the offset after it; None for anything dnspython might read or print differently."""
    labels: list[bytes] = []
    pos = off
    after = -1
    biggest = off  # compression pointers must point strictly backwards, as dnspython requires
    total = 1
    n = len(buf)
    while True:
        if pos >= n:
            return None
        c = buf[pos]
        if c == 0:
            pos += 1
            break
        if c < 64:
            label = buf[pos + 1 : pos + 1 + c]
            if len(label) != c or not _PLAIN_LABEL.fullmatch(label):
                return None
            labels.append(label)
            total += c + 1
            pos += 1 + c
        elif c >= 192 and pos + 1 < n:
            ptr = ((c & 63) << 8) | buf[pos + 1]
            if ptr >= biggest:
                return None
            biggest = ptr
            if after < 0:
                after = pos + 2
            pos = ptr
        else:
            return None
    if not labels or total > 255:
        return None
    return b".".join(labels).decode("ascii"), (after if after >= 0 else pos)


def _parse_fast(payload: bytes) -> _Parsed | None:
    """Queries, and responses whose answers are A, AAAA and CNAME records (authority and
    additional sections of NS, SOA, A, AAAA and an empty OPT), read directly; None for anything
    else, which :func:`_parse_dnspython` reads."""
    tid = int.from_bytes(payload[0:2], "big")
    flags = int.from_bytes(payload[2:4], "big")
    qd, an, ns, ar = (int.from_bytes(payload[i : i + 2], "big") for i in (4, 6, 8, 10))
    if qd != 1:
        return None
    q = _name(payload, 12)
    if q is None:
        return None
    qname, at = q
    if not flags & 0x8000:
        if len(payload) < at + 2:
            return None
        qtype = _QTYPES.get(int.from_bytes(payload[at : at + 2], "big"))
        if qtype is None:
            return None
        return _Parsed(is_response=False, trans_id=tid, qname=qname.lower(), qtype=qtype,
                       complete=len(payload) >= at + 4)  # fmt: skip
    if len(payload) < at + 4 or (flags & 0xF) >= len(_RCODES):
        return None
    qtype = _QTYPES.get(int.from_bytes(payload[at : at + 2], "big"))
    if qtype is None:
        return None
    at += 4
    groups: dict[tuple[str, int], tuple[list[str], list[int]]] = {}
    for k in range(an + ns + ar):
        o = _name(payload, at)
        if o is None:
            return None
        owner, at = o
        if len(payload) < at + 10:
            return None
        rtype = int.from_bytes(payload[at : at + 2], "big")
        rclass = int.from_bytes(payload[at + 2 : at + 4], "big")
        ttl = int.from_bytes(payload[at + 4 : at + 8], "big")
        rdlen = int.from_bytes(payload[at + 8 : at + 10], "big")
        rd = at + 10
        at = rd + rdlen
        if at > len(payload) or ttl >= 1 << 31:
            return None
        if rtype == _T_OPT:  # dnspython reads the OPT owner as the root name: never plain here
            return None
        if rclass != 1:
            return None
        if rtype == _T_A and rdlen == 4:
            text = ".".join(str(b) for b in payload[rd:at])
        elif rtype == _T_AAAA and rdlen == 16 and any(payload[rd : rd + 10]):
            text = ipaddress.IPv6Address(payload[rd:at]).compressed
        elif rtype in (_T_CNAME, _T_NS):
            t = _name(payload, rd)
            if t is None or t[1] != at:
                return None
            text = t[0]
        elif rtype == _T_SOA and k >= an:
            m = _name(payload, rd)
            r = _name(payload, m[1]) if m is not None else None
            if r is None or r[1] + 20 != at:
                return None
            continue
        else:
            return None
        if k >= an:
            continue
        if rtype == _T_NS:
            return None
        g = groups.setdefault((owner.lower(), rtype), ([], []))
        if text in g[0]:
            return None  # dnspython keeps a set: leave duplicates to it
        g[0].append(text)
        g[1].append(ttl)
    p = _Parsed(is_response=True, trans_id=tid, qname=qname.lower(), qtype=qtype, rcode=_RCODES[flags & 0xF])
    for (_, rtype), (texts, ttls) in groups.items():
        ttl = min(ttls)
        for text in texts:
            p.answers.append(text)
            p.ttls.append(ttl)
            if rtype != _T_CNAME:
                p.addresses.append(text)
    return p


def _parse(payload: bytes) -> _Parsed | None:
    if len(payload) < 12:
        return None
    return _parse_fast(payload) or _parse_dnspython(payload)


def _parse_dnspython(payload: bytes) -> _Parsed:
    import dns.exception
    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdatatype

    tid = int.from_bytes(payload[0:2], "big")
    flags = int.from_bytes(payload[2:4], "big")
    is_resp = bool(flags & 0x8000)
    msg = None
    if is_resp:  # a query needs only its question (read below, much cheaper)
        try:
            msg = dns.message.from_wire(payload, ignore_trailing=True)
        except (dns.exception.DNSException, ValueError, IndexError):
            msg = None
    if msg is not None:
        if not msg.question:
            return _Parsed(is_response=is_resp, trans_id=tid, qname="", qtype="")
        q = msg.question[0]
        p = _Parsed(
            is_response=is_resp,
            trans_id=tid,
            qname=q.name.to_text(omit_final_dot=True).lower(),
            qtype=dns.rdatatype.to_text(q.rdtype),
        )
        if is_resp:
            p.rcode = dns.rcode.to_text(msg.rcode())
            for rrset in msg.answer:
                for rd in rrset:
                    text = rd.to_text()
                    p.answers.append(text.rstrip(".") if rrset.rdtype == dns.rdatatype.CNAME else text)
                    p.ttls.append(int(rrset.ttl))
                    if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                        p.addresses.append(text)
        return p
    # header and question only (a query; or a response cut short or corrupt)
    qdcount = int.from_bytes(payload[4:6], "big")
    try:
        name, used = dns.name.from_wire(payload, 12)
        whole = len(payload) >= 16 + used
        qtype = int.from_bytes(payload[12 + used : 14 + used], "big") if len(payload) >= 14 + used else 0
    except (dns.exception.DNSException, ValueError, IndexError):
        return _Parsed(is_response=is_resp, trans_id=tid, qname="", qtype="", complete=False)
    return _Parsed(
        is_response=is_resp,
        trans_id=tid,
        qname=name.to_text(omit_final_dot=True).lower() if qdcount else "",
        qtype=dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype)) if qtype and qdcount else "",
        rcode=dns.rcode.to_text(dns.rcode.Rcode.make(flags & 0xF)) if is_resp else None,
        complete=not is_resp and whole and qdcount == 1,
    )


_MAX_ISSUES_PER_KIND = 10
_WIDTH = 512


def _distinct_rows(mat: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Distinct rows of a byte matrix: (first row of each distinct value, in row order; distinct
    index per row).

    Rows are hashed to 64 bits column-wise; equal hashes are then checked byte for byte, and a
    collision falls back to an exact (slower) comparison.
    """
    m, width = mat.shape
    pad = (-width) % 8
    if pad:
        mat = np.concatenate([mat, np.zeros((m, pad), np.uint8)], axis=1)
    words = np.ascontiguousarray(mat).view(np.uint64)
    # each word mixed with its position's constant, all at once, then summed (wrapping) per row
    salt = np.uint64(0x243F6A8885A308D3) * np.arange(1, words.shape[1] + 1, dtype=np.uint64)
    h = mix64(mix64(words ^ salt[None, :]).sum(axis=1, dtype=np.uint64))
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if not np.array_equal(words, words[first[inv]]):
        view = np.ascontiguousarray(words).view(f"V{words.shape[1] * 8}").reshape(-1)
        _, first, inv = np.unique(view, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
    # numbered by first appearance (whatever order the hash or the bytes sorted them in)
    o = np.argsort(first, kind="stable")
    rank = np.empty(o.size, dtype=np.int64)
    rank[o] = np.arange(o.size)
    return first[o].astype(np.int64), rank[inv]


@dataclass(frozen=True, slots=True)
class _Columns:
    ts: npt.NDArray[np.int64]
    file: npt.NDArray[np.int64]
    frame: npt.NDArray[np.int64]
    src: npt.NDArray[np.int64]
    dst: npt.NDArray[np.int64]
    sport: npt.NDArray[np.int64]
    dport: npt.NDArray[np.int64]
    txid: npt.NDArray[np.int64]
    parse: npt.NDArray[np.int64]


#: The small messages of several batches are told apart together (each distinct one looked up
#: once): at most about this many wait.
_PENDING_ROWS = 4096


class DnsCollector:
    """Collects DNS packets batch by batch, column-wise: each distinct DNS message body (all but
    the transaction id) is parsed once, addresses are formatted once.

    :meth:`feed` copies what it needs of each DNS packet in one compiled pass (the columns, and
    the bodies of the small messages until they are told apart); nothing of a batch is kept."""

    def __init__(self) -> None:
        self._parsed: list[_Parsed | None] = []
        self._parse_ids: dict[bytes, int] = {}
        self._parse_cut: list[bool] = []
        self._n = 0
        # (room for some 30,000 packets from the start: untouched room costs no memory, growing
        # leaves the old buffer's pages behind in the heap)
        self._cols: npt.NDArray[np.int64] = np.empty((1 << 15, fk.DNS_COLUMNS), np.int64)  # fk.DNS_* per packet
        self._parse: npt.NDArray[np.int64] = np.empty(1 << 15, np.int64)  # parse id per packet
        self._batch: npt.NDArray[np.int64] = np.empty(1 << 15, np.int64)  # which feed it came in
        self._feeds = 0
        self._raw: npt.NDArray[np.uint8] = np.zeros((0, _WIDTH), np.uint8)  # the waiting small bodies, zero past them
        self._raw_rows: npt.NDArray[np.int64] = np.empty(0, np.int64)  # ... their packets
        self._pending_rows = 0
        self._result: tuple[tuple[float, tuple[int, ...]], DnsResult] | None = None

    def _parse_id(self, body: bytes, cut: bool) -> int:
        key = body + (b"\1" if cut else b"\0")
        i = self._parse_ids.get(key)
        if i is None:
            i = self._parse_ids[key] = len(self._parsed)
            self._parsed.append(_parse(b"\0\0" + body) if len(body) >= 10 else None)
            self._parse_cut.append(cut)
        return i

    def feed(self, batch: PacketBatch, rows: npt.NDArray[np.int64]) -> None:
        """Take the DNS packets at *rows* of *batch*."""
        if self._result is not None:
            raise RuntimeError("the DNS collector is done: it takes no more packets")
        m = int(rows.size)
        if not m:
            return
        at = self._n
        if at + m > self._cols.shape[0]:
            size = max(at + m, self._cols.shape[0] * 2)
            self._cols = _grown(self._cols, size)
            self._parse = _grown(self._parse, size)
            self._batch = _grown(self._batch, size)
        if self._pending_rows + m > self._raw.shape[0]:
            size = max(self._pending_rows + m, _PENDING_ROWS + m, self._raw.shape[0] * 2)
            raw = np.zeros((size, _WIDTH), np.uint8)  # (zero past each body: the kernel copies bodies only)
            raw[: self._pending_rows] = self._raw[: self._pending_rows]
            self._raw = raw
            self._raw_rows = _grown(self._raw_rows, size)
        small = fk.dns_take(
            rows, at, batch.ts_ns, batch.file_index, batch.frame, batch.ip_version, batch.src_hi, batch.src_lo,
            batch.dst_hi, batch.dst_lo, batch.sport, batch.dport, batch.payload_len, batch.payload_off,
            batch.payload_caplen, batch.data, self._cols, self._raw, self._pending_rows, self._raw_rows,
        )  # fmt: skip
        self._n = at + m
        self._batch[at : at + m] = self._feeds
        self._feeds += 1
        self._pending_rows += small
        if small < m:  # bodies longer than the small ones: read as they come
            cols = self._cols[at : at + m]
            for j in np.flatnonzero(cols[:, fk.DNS_BODY_LEN] > _WIDTH).tolist():
                body = batch.payload(int(rows[j]))[2:]
                self._parse[at + j] = self._parse_id(body, bool(cols[j, fk.DNS_CUT]))
        if self._pending_rows >= _PENDING_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Give the waiting small messages their parse ids: the distinct ones among them all
        (numbered by first appearance), each looked up or parsed once."""
        total = self._pending_rows
        if not total:
            return
        waiting = self._raw_rows[:total]
        length = self._cols[waiting, fk.DNS_BODY_LEN]
        cut = self._cols[waiting, fk.DNS_CUT].astype(bool)
        width = max(int(length.max()), 1)
        key = np.zeros((total, width + 3), dtype=np.uint8)
        key[:, :width] = self._raw[:total, :width]
        key[:, width] = (length >> 8).astype(np.uint8)
        key[:, width + 1] = (length & 0xFF).astype(np.uint8)
        key[:, width + 2] = cut
        first, inv = _distinct_rows(key)
        # the distinct bodies as bytes in one go (each row whole, then cut to its length)
        bodies = np.ascontiguousarray(key[first, :width]).view(f"V{width}").reshape(-1).tolist()
        lens, cuts = length[first].tolist(), cut[first].tolist()
        ids = np.array([self._parse_id(b[:n], c) for b, n, c in zip(bodies, lens, cuts, strict=True)], dtype=np.int64)
        self._parse[waiting] = ids[inv]
        self._raw[:total, :width] = 0  # (free for the next bodies)
        self._pending_rows = 0

    def result(self, *, window_s: float = 60.0, floors: Sequence[int] = DEFAULT_TTL_FLOORS) -> DnsResult:
        """Pair, count and work out redundancy (see the module docstring). The collector takes
        no packets after it (its buffers are let go); calling it again with the same arguments
        gives the same."""
        args = (window_s, tuple(floors))
        if self._result is not None:
            if self._result[0] != args:
                raise RuntimeError("the DNS collector is done: its result was made with other arguments")
            return self._result[1]
        self._flush()
        n = self._n
        c = self._cols[:n]
        ids, texts = _address_ids(self._batch[:n], c)
        cols = _Columns(
            ts=c[:, fk.DNS_TS], file=c[:, fk.DNS_FILE], frame=c[:, fk.DNS_FRAME], src=ids[:n], dst=ids[n:],
            sport=c[:, fk.DNS_SPORT], dport=c[:, fk.DNS_DPORT], txid=c[:, fk.DNS_TXID], parse=self._parse[:n],
        )  # fmt: skip
        out = _pair([cols] if n else [], self._parsed, self._parse_cut, texts, window_s=window_s, floors=floors)
        del c, cols
        self._cols = self._raw_rows = self._parse = self._batch = np.empty((0,), np.int64)
        self._raw = np.zeros((0, _WIDTH), np.uint8)
        self._result = (args, out)
        return out


def _grown(arr: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """*arr* with room for *size* rows (its rows kept, the new ones uninitialised)."""
    out = np.empty((size, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def _address_ids(
    feed: npt.NDArray[np.int64], c: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], tuple[str, ...]]:
    """The ids of the packets' source addresses, then of their destination addresses, and the
    addresses' texts by id: numbered as an :class:`~halfclose.analysis._common.AddressBook`
    interning each feed's sources, then its destinations, would number them (new addresses of
    each by address order), each formatted once."""
    n = c.shape[0]
    if not n:
        return np.empty(0, np.int64), ()
    ver = np.concatenate([c[:, fk.DNS_VERSION], c[:, fk.DNS_VERSION]])
    hi = np.concatenate([c[:, fk.DNS_SRC_HI], c[:, fk.DNS_DST_HI]]).view(np.uint64)
    lo = np.concatenate([c[:, fk.DNS_SRC_LO], c[:, fk.DNS_DST_LO]]).view(np.uint64)
    side = np.repeat(np.arange(2), n)
    # where each occurrence comes in the interning order: by feed, side, then address (stable)
    visit = np.empty(2 * n, np.int64)
    visit[np.lexsort((lo, hi, side, np.concatenate([feed, feed])))] = np.arange(2 * n)
    by_address = np.lexsort((visit, lo, hi))
    new = np.ones(2 * n, dtype=bool)
    new[1:] = (hi[by_address][1:] != hi[by_address][:-1]) | (lo[by_address][1:] != lo[by_address][:-1])
    first = by_address[new]  # each address's first occurrence in interning order
    rank = np.empty(first.size, np.int64)
    order = np.argsort(visit[first], kind="stable")
    rank[order] = np.arange(first.size)
    ids = np.empty(2 * n, np.int64)
    ids[by_address] = rank[np.cumsum(new) - 1]
    u = first[order]
    vs, his, los = ver[u].tolist(), hi[u].tolist(), lo[u].tolist()
    texts = tuple(format_address(v, h, x) for v, h, x in zip(vs, his, los, strict=True))
    return ids, texts


def _cat(chunks: list[_Columns], name: str) -> npt.NDArray[np.int64]:
    if not chunks:
        return np.empty(0, np.int64)
    return np.concatenate([getattr(c, name) for c in chunks])


def _pair(ch: list[_Columns], parsed: list[_Parsed | None], parse_cut: list[bool], addresses: tuple[str, ...], *,
          window_s: float, floors: Sequence[int]) -> DnsResult:  # fmt: skip
    ts, fil, frame = _cat(ch, "ts"), _cat(ch, "file"), _cat(ch, "frame")
    src, dst, sport, dport = _cat(ch, "src"), _cat(ch, "dst"), _cat(ch, "sport"), _cat(ch, "dport")
    txid, parse = _cat(ch, "txid"), _cat(ch, "parse")
    np_ = len(parsed)
    # per distinct message
    p_ok = np.array([p is not None for p in parsed], dtype=bool) if np_ else np.empty(0, bool)
    p_resp = np.array([p is not None and p.is_response for p in parsed], dtype=bool)
    q_ids: dict[tuple[str, str], int] = {}
    p_q = np.array(
        [q_ids.setdefault((p.qname, p.qtype), len(q_ids)) if p is not None else -1 for p in parsed],
        dtype=np.int64,
    )
    a_ids: dict[tuple[str, ...], int] = {}
    p_aset = np.array(
        [a_ids.setdefault(tuple(sorted(p.addresses)), len(a_ids)) if p is not None else -1 for p in parsed],
        dtype=np.int64,
    )
    p_valid = np.array(
        [p is not None and p.rcode == "NOERROR" and bool(p.addresses) and bool(p.ttls) for p in parsed],
        dtype=bool,
    )
    p_cache = np.array(
        [p is not None and p.rcode == "NOERROR" and bool(p.ttls) for p in parsed], dtype=bool
    )
    p_ttl = np.array([min(p.ttls) if p is not None and p.ttls else -1 for p in parsed], dtype=np.int64)
    p_complete = np.array([p is not None and p.complete for p in parsed], dtype=bool)
    if np_ == 0:
        p_ok = p_resp = p_valid = p_cache = p_complete = np.empty(0, bool)
        p_q = p_aset = p_ttl = np.empty(0, np.int64)

    # issues (the first few of each kind, and counts)
    issues: list[AnalysisIssue] = []
    counts: dict[str, int] = {}
    bad = ~p_ok[parse] | ~p_complete[parse] if parse.size else np.empty(0, bool)
    for r in np.flatnonzero(bad).tolist():
        pid = int(parse[r])
        cut = parse_cut[pid]
        if not p_ok[pid]:
            kind, msg = "dns_short", "DNS payload is shorter than a DNS header"
        elif cut:
            kind = "dns_truncated"
            msg = "DNS message cut by the snap length: capture port 53 with a larger snap length (-s 0)"
        else:
            kind, msg = "dns_corrupt", "DNS message could not be parsed past its question"
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] <= _MAX_ISSUES_PER_KIND:
            issues.append(AnalysisIssue(kind=kind, file_index=int(fil[r]), frame=int(frame[r]), message=msg))

    keep = np.flatnonzero(p_ok[parse]) if parse.size else np.empty(0, np.int64)
    is_resp = p_resp[parse[keep]]
    nq = int(np.count_nonzero(~is_resp))
    nr = int(np.count_nonzero(is_resp))
    client = np.where(is_resp, dst[keep], src[keep])
    cport = np.where(is_resp, dport[keep], sport[keep])
    server = np.where(is_resp, src[keep], dst[keep])
    sp = np.where(is_resp, sport[keep], dport[keep])
    qid = p_q[parse[keep]]
    tid = txid[keep]
    k_ts = ts[keep]
    # by (client, client port, server, server port, id, question), then capture position (keep is
    # ascending and lexsort stable): two fields per key (address book ids and question ids are far
    # below 2**47 and 2**31; ports and ids are 16-bit)
    k_client, k_server, k_query = (client << 16) | cport, (server << 16) | sp, (tid << 32) | qid
    o = np.lexsort((k_query, k_server, k_client))
    if o.size == 0:
        return DnsResult(
            exchanges=_Exchanges.empty(), query_packets=nq, response_packets=nr, redundant=0, within_ttl=0,
            saved_by_ttl_floor=dict.fromkeys(floors, 0), issues=tuple(issues), issue_counts=counts,
        )
    keys = np.stack([k_client[o], k_server[o], k_query[o]], axis=1)
    r_sorted = is_resp[o]
    new = np.ones(o.size, dtype=bool)
    new[1:] = np.any(keys[1:] != keys[:-1], axis=1) | (~r_sorted[1:] & r_sorted[:-1])
    starts = np.flatnonzero(new)
    ex_id = np.cumsum(new) - 1
    n_ex = starts.size
    t_sorted = k_ts[o]
    big = np.iinfo(np.int64).max
    queries = np.add.reduceat((~r_sorted).astype(np.int64), starts)
    q_ts = np.minimum.reduceat(np.where(~r_sorted, t_sorted, big), starts)
    resp_row = np.full(n_ex, -1, dtype=np.int64)
    rr = np.flatnonzero(r_sorted)
    if rr.size:
        u, first = np.unique(ex_id[rr], return_index=True)
        resp_row[u] = rr[first]
    has_resp = resp_row >= 0
    resp_ts = np.where(has_resp, t_sorted[np.maximum(resp_row, 0)], -1)
    ex_ts = np.where(queries > 0, q_ts, resp_ts)
    ex_parse_q = parse[keep][o][starts]
    ex_parse_r = np.where(has_resp, parse[keep][o][np.maximum(resp_row, 0)], -1)
    ex_client, ex_cport = client[o][starts], cport[o][starts]
    ex_server, ex_sport = server[o][starts], sp[o][starts]
    ex_tid, ex_qid = tid[o][starts], qid[o][starts]
    pr = np.maximum(ex_parse_r, 0)
    valid = has_resp & p_valid[pr]
    cacheable = has_resp & p_cache[pr]
    ttl = np.where(has_resp, p_ttl[pr], -1)
    aset = np.where(has_resp, p_aset[pr], -1)
    complete = p_complete[ex_parse_q] & np.where(has_resp, p_complete[pr], True)

    # redundancy per (client address, name+type), by time
    g = np.lexsort((ex_ts, ex_qid, ex_client))
    gk = np.stack([ex_client[g], ex_qid[g]], axis=1)
    gnew = np.ones(g.size, dtype=bool)
    gnew[1:] = np.any(gk[1:] != gk[:-1], axis=1)
    gid = np.cumsum(gnew) - 1
    vidx = np.where(valid[g], np.arange(g.size), -1)
    last_valid = np.maximum.accumulate(vidx)
    prev = np.full(g.size, -1, dtype=np.int64)
    prev[1:] = last_valid[:-1]
    okp = prev >= 0
    okp[okp] = gid[prev[okp]] == gid[okp]
    pv = g[np.maximum(prev, 0)]
    expiry = resp_ts[pv] + ttl[pv] * _NS
    since_g = np.where(okp, ex_ts[g] - expiry, MISSING_INT)
    asked = queries[g] > 0
    same = okp & asked & has_resp[g] & (aset[g] == aset[pv])
    window_ns = int(window_s * _NS)
    red_g = same & (since_g >= 0) & (since_g < window_ns)
    within_g = same & (since_g < 0)
    redundant = np.zeros(n_ex, dtype=bool)
    within = np.zeros(n_ex, dtype=bool)
    since = np.full(n_ex, MISSING_INT, dtype=np.int64)
    redundant[g] = red_g
    within[g] = within_g
    since[g] = np.where(asked, since_g, MISSING_INT)

    # TTL floors: a per-client cache simulation (sequential by nature, over exchanges only)
    saved = dict.fromkeys(floors, 0)
    asked_g = g[queries[g] > 0]  # by group, then time: the exchanges with a query
    gid_l = gid[queries[g] > 0].tolist()
    ts_l = ex_ts[asked_g].tolist()
    c_l = cacheable[asked_g].tolist()
    for fl in floors:
        # when an answer fetched by this exchange would expire from a cache with this floor
        until_l = (resp_ts[asked_g] + np.maximum(ttl[asked_g] * _NS, fl * _NS)).tolist()
        until = -1
        cur = -1
        n_saved = 0
        for gi, t, c, u in zip(gid_l, ts_l, c_l, until_l, strict=True):
            if gi != cur:
                cur, until = gi, -1
            if t < until:
                n_saved += 1
            elif c:
                until = u
        saved[fl] = n_saved

    by_time = np.argsort(ex_ts, kind="stable")
    exchanges = _Exchanges(
        parsed=tuple(parsed),
        addresses=addresses,
        cols={
            "ts": ex_ts[by_time], "client": ex_client[by_time], "cport": ex_cport[by_time],
            "server": ex_server[by_time], "sport": ex_sport[by_time], "tid": ex_tid[by_time],
            "queries": queries[by_time], "resp_ts": resp_ts[by_time], "pq": ex_parse_q[by_time],
            "pr": ex_parse_r[by_time], "redundant": redundant[by_time].astype(np.int64),
            "within": within[by_time].astype(np.int64), "since": since[by_time],
            "complete": complete[by_time].astype(np.int64),
        },
    )
    return DnsResult(
        exchanges=exchanges,
        query_packets=nq,
        response_packets=nr,
        redundant=int(redundant.sum()),
        within_ttl=int(within.sum()),
        saved_by_ttl_floor=saved,
        issues=tuple(issues),
        issue_counts=counts,
    )



@dataclass(frozen=True, slots=True)
class _Exchanges(Sequence[DnsExchange]):
    """DNS exchanges as columns; records are made on demand."""

    parsed: tuple[_Parsed | None, ...]
    addresses: tuple[str, ...]
    cols: dict[str, npt.NDArray[np.int64]]

    @staticmethod
    def empty() -> _Exchanges:
        z = np.empty(0, np.int64)
        names = ("ts", "client", "cport", "server", "sport", "tid", "queries", "resp_ts", "pq", "pr",
                 "redundant", "within", "since", "complete")
        return _Exchanges(parsed=(), addresses=(), cols=dict.fromkeys(names, z))

    def __len__(self) -> int:
        return int(self.cols["ts"].shape[0])

    def __getitem__(self, i: int) -> DnsExchange:  # type: ignore[override]
        c = self.cols
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        q = self.parsed[int(c["pq"][i])]
        pr = int(c["pr"][i])
        r = self.parsed[pr] if pr >= 0 else None
        assert q is not None
        queries = int(c["queries"][i])
        rts = int(c["resp_ts"][i])
        since = int(c["since"][i])
        return DnsExchange(
            ts_ns=int(c["ts"][i]),
            client_h=self.addresses[int(c["client"][i])],
            client_p=int(c["cport"][i]),
            server_h=self.addresses[int(c["server"][i])],
            server_p=int(c["sport"][i]),
            trans_id=int(c["tid"][i]),
            qname=q.qname,
            qtype=q.qtype,
            queries=queries,
            response_ns=rts if r is not None else None,
            rtt_ns=rts - int(c["ts"][i]) if r is not None and queries else None,
            rcode=r.rcode if r is not None else None,
            answers=tuple(r.answers) if r is not None else (),
            ttls=tuple(r.ttls) if r is not None else (),
            addresses=tuple(sorted(r.addresses)) if r is not None else (),
            min_ttl_s=min(r.ttls) if r is not None and r.ttls else None,
            redundant=bool(c["redundant"][i]),
            within_ttl=bool(c["within"][i]),
            since_expiry_ns=None if since == MISSING_INT else since,
            complete=bool(c["complete"][i]),
        )

    def block(self, rows: slice = slice(None)) -> Block:
        """The exchanges *rows* (a slice with step 1) column-wise, the fields of
        :class:`DnsExchange` in order (the same values as ``self[i]``)."""
        c = {k: v[rows] for k, v in self.cols.items()}
        ts, pq, pr, queries, resp_ts = c["ts"], c["pq"], c["pr"], c["queries"], c["resp_ts"]
        has_r = pr >= 0
        parsed = self.parsed

        def messages(codes: npt.NDArray[np.int64]) -> tuple[list[_Parsed | None], npt.NDArray[np.int64]]:
            # each distinct message of the block once (None for none), and each row's
            used, inv = np.unique(codes, return_inverse=True)
            return [parsed[k] if k >= 0 else None for k in used.tolist()], inv.reshape(-1)

        queries_of, q_inv = messages(pq)
        answers_of, r_inv = messages(pr)
        q_codes = np.where(pq >= 0, q_inv, MISSING_CODE)
        r_codes = np.where(pr >= 0, r_inv, MISSING_CODE)

        def per_message(msgs: list[_Parsed | None], codes: npt.NDArray[np.int64], value: Callable[[_Parsed], Any],
                        missing: Any = None) -> Coded:  # fmt: skip
            table = [value(p) if p is not None else missing for p in msgs]
            return Coded(codes, table, missing, tuples=isinstance(missing, tuple))

        def few(inv: npt.NDArray[np.int64], values: list[Any]) -> Coded:
            # a value with few distinct ones (a type, a code, a TTL) per message: each distinct one once
            table = list(dict.fromkeys(values))
            index = {v: k for k, v in enumerate(table)}
            return Coded(np.fromiter(map(index.__getitem__, values), np.int64, len(values))[inv], table)

        def flag(values: npt.NDArray[np.int64]) -> Coded:
            return Coded(values.astype(bool).astype(np.int64), (False, True))

        qtypes = [p.qtype if p is not None else None for p in queries_of]
        rcodes = [p.rcode if p is not None else None for p in answers_of]
        min_ttls = [min(p.ttls) if p is not None and p.ttls else None for p in answers_of]

        block: Block = {
            "ts_ns": Ints(ts),
            "client_h": Coded(c["client"], self.addresses),
            "client_p": Ints(c["cport"]),
            "server_h": Coded(c["server"], self.addresses),
            "server_p": Ints(c["sport"]),
            "trans_id": Ints(c["tid"]),
            "qname": per_message(queries_of, q_codes, lambda p: p.qname),
            "qtype": few(q_inv, qtypes),
            "queries": Ints(queries),
            "response_ns": Ints(np.where(has_r, resp_ts, MISSING_INT), optional=True),
            "rtt_ns": Ints(np.where(has_r & (queries != 0), resp_ts - ts, MISSING_INT), optional=True),
            "rcode": few(r_inv, rcodes),
            "answers": per_message(answers_of, r_codes, lambda p: tuple(p.answers), ()),
            "ttls": per_message(answers_of, r_codes, lambda p: tuple(p.ttls), ()),
            "addresses": per_message(answers_of, r_codes, lambda p: tuple(sorted(p.addresses)), ()),
            "min_ttl_s": few(r_inv, min_ttls),
            "redundant": flag(c["redundant"]),
            "within_ttl": flag(c["within"]),
            "since_expiry_ns": Ints(c["since"], optional=True),
            "complete": flag(c["complete"]),
        }
        assert list(block) == [s.name for s in DNS_EXCHANGE_FIELDS]
        return block

    def queries(self) -> DnsQueries:
        """The exchanges with a query, by time, per client and in all (column-wise: the clients
        in the order of their first query)."""
        c = self.cols
        rows = np.flatnonzero(c["queries"] != 0)
        qnames = np.empty(len(self.parsed), dtype=object)
        qnames[:] = [p.qname if p is not None else "" for p in self.parsed]
        ts, names, client = c["ts"][rows], qnames[c["pq"][rows]], c["client"][rows]
        by_client: dict[str, QueryTimes] = {}
        o = np.argsort(client, kind="stable")
        starts = np.flatnonzero(np.concatenate([[True], client[o][1:] != client[o][:-1]])) if o.size else o
        stops = np.append(starts[1:], o.size)
        for k in np.argsort(o[starts], kind="stable").tolist():  # by first query
            sel = o[starts[k] : stops[k]]
            times = QueryTimes(times=ts[sel].tolist(), names=names[sel].tolist())
            by_client[self.addresses[int(client[sel[0]])]] = times
        return DnsQueries(by_client=by_client, every=QueryTimes(times=ts.tolist(), names=names.tolist()))

    def answers(self) -> AddressAnswers:
        """Every address an answer carried, with the answers' times and question name (each
        distinct answer message read once)."""
        c = self.cols
        have = np.flatnonzero(c["pr"] >= 0)
        pr, rts = c["pr"][have], c["resp_ts"][have]
        # the exchanges of each answer message (in exchange order), the messages by first exchange
        o = np.argsort(pr, kind="stable")
        starts = np.flatnonzero(np.concatenate([[True], pr[o][1:] != pr[o][:-1]])) if o.size else o
        stops = np.append(starts[1:], o.size)
        groups: list[AnswerGroup] = []
        for k in np.argsort(o[starts], kind="stable").tolist():
            msg = self.parsed[int(pr[o[starts[k]]])]
            if msg is None or not msg.qname or not msg.addresses:
                continue
            times = rts[o[starts[k] : stops[k]]]
            groups.extend(AnswerGroup(address=a, times=times, name=msg.qname) for a in msg.addresses)
        return AddressAnswers(groups=tuple(groups))
