"""DNS over UDP port 53: queries paired with answers, TTLs, and lookups that a cache would save.

DNS packets are few, so this part works per packet in Python, with dnspython for the wire
format. A payload that dnspython cannot parse (cut by the snap length, or corrupt) still yields
what its header and question give, and an :class:`AnalysisIssue`.

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

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_TTL_FLOORS",
    "AddressNames",
    "AnalysisIssue",
    "DnsExchange",
    "DnsPacket",
    "DnsResult",
    "analyze_dns",
    "dns_name_lookup",
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
class DnsPacket:
    """One UDP packet to or from port 53, as handed over by the packet columns."""

    ts_ns: int
    file_index: int
    frame: int
    src_h: str
    src_p: int
    dst_h: str
    dst_p: int
    payload: bytes
    payload_len: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsExchange:
    """A DNS query and its response (either may be missing from the capture).

    Fields:
        ts_ns: the query's time (the response's when no query was seen).
        client_h, client_p, server_h, server_p: who asked whom.
        trans_id: the DNS transaction id.
        qname: the question name (lower case, no trailing dot); qtype: its type ("A", "AAAA", ...).
        queries: query packets seen (1 + retransmissions); 0 when only the response was seen.
        response_ns: the response's time, or None.
        rtt_ns: response minus first query, or None.
        rcode: response code name ("NOERROR", "NXDOMAIN", ...), or None without a response.
        answers: answer data in order (addresses, CNAME targets, ...); ttls: their TTLs (s).
        addresses: the A/AAAA addresses among the answers, sorted.
        min_ttl_s: the smallest TTL of the answers, or None.
        redundant, within_ttl, since_expiry_ns: see the module docstring; since_expiry_ns is the
            query time minus the previous answer's expiry (negative while it was still valid),
            None without a previous answer.
        complete: False when the payload was cut short or corrupt (answers may be missing).
    """

    ts_ns: int
    client_h: str
    client_p: int
    server_h: str
    server_p: int
    trans_id: int
    qname: str
    qtype: str
    queries: int
    response_ns: int | None
    rtt_ns: int | None
    rcode: str | None
    answers: tuple[str, ...]
    ttls: tuple[int, ...]
    addresses: tuple[str, ...]
    min_ttl_s: int | None
    redundant: bool
    within_ttl: bool
    since_expiry_ns: int | None
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsResult:
    """All DNS exchanges (by query time) and the counts derived from them."""

    exchanges: tuple[DnsExchange, ...]
    query_packets: int
    response_packets: int
    redundant: int
    within_ttl: int
    saved_by_ttl_floor: dict[int, int]
    issues: tuple[AnalysisIssue, ...]


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


def _parse(payload: bytes) -> _Parsed | None:
    if len(payload) < 12:
        return None
    tid = int.from_bytes(payload[0:2], "big")
    flags = int.from_bytes(payload[2:4], "big")
    is_resp = bool(flags & 0x8000)
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
    # header and question only
    try:
        name, used = dns.name.from_wire(payload, 12)
        qtype = int.from_bytes(payload[12 + used : 14 + used], "big") if len(payload) >= 14 + used else 0
    except (dns.exception.DNSException, ValueError, IndexError):
        return _Parsed(is_response=is_resp, trans_id=tid, qname="", qtype="", complete=False)
    return _Parsed(
        is_response=is_resp,
        trans_id=tid,
        qname=name.to_text(omit_final_dot=True).lower(),
        qtype=dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype)) if qtype else "",
        rcode=dns.rcode.to_text(dns.rcode.Rcode.make(flags & 0xF)) if is_resp else None,
        complete=False,
    )


@dataclass(slots=True)
class _Open:
    ts: int
    client: tuple[str, int]
    server: tuple[str, int]
    tid: int
    qname: str
    qtype: str
    queries: int
    complete: bool
    resp: _Parsed | None = None
    resp_ts: int | None = None


def analyze_dns(
    packets: Iterable[DnsPacket], *, window_s: float = 60.0, floors: Sequence[int] = DEFAULT_TTL_FLOORS
) -> DnsResult:
    """Pair queries and responses and work out redundancy; *packets* in capture order."""
    issues: list[AnalysisIssue] = []
    exchanges: list[_Open] = []
    pending: dict[tuple[object, ...], _Open] = {}
    nq = nr = 0
    for pkt in packets:
        parsed = _parse(pkt.payload)
        if parsed is None:
            issues.append(
                AnalysisIssue(
                    kind="dns_short",
                    file_index=pkt.file_index,
                    frame=pkt.frame,
                    message=f"DNS payload of {len(pkt.payload)} bytes is shorter than a DNS header",
                )
            )
            continue
        if not parsed.complete:
            cut = len(pkt.payload) < pkt.payload_len
            issues.append(
                AnalysisIssue(
                    kind="dns_truncated" if cut else "dns_corrupt",
                    file_index=pkt.file_index,
                    frame=pkt.frame,
                    message=(
                        f"DNS message cut to {len(pkt.payload)} of {pkt.payload_len} bytes "
                        "by the snap length: "
                        "capture port 53 with a larger snap length (-s 0)"
                        if cut
                        else "DNS message could not be parsed past its question"
                    ),
                )
            )
        if parsed.is_response:
            nr += 1
            client, server = (pkt.dst_h, pkt.dst_p), (pkt.src_h, pkt.src_p)
        else:
            nq += 1
            client, server = (pkt.src_h, pkt.src_p), (pkt.dst_h, pkt.dst_p)
        key = (client, server, parsed.trans_id, parsed.qname, parsed.qtype)
        if not parsed.is_response:
            cur = pending.get(key)
            if cur is not None and cur.resp is None:
                cur.queries += 1
                continue
            ex = _Open(
                ts=pkt.ts_ns, client=client, server=server, tid=parsed.trans_id, qname=parsed.qname,
                qtype=parsed.qtype, queries=1, complete=parsed.complete,
            )
            pending[key] = ex
            exchanges.append(ex)
            continue
        cur = pending.get(key)
        if cur is None or cur.resp is not None:
            cur = _Open(
                ts=pkt.ts_ns, client=client, server=server, tid=parsed.trans_id, qname=parsed.qname,
                qtype=parsed.qtype, queries=0, complete=parsed.complete,
            )
            exchanges.append(cur)
            pending[key] = cur
        cur.resp, cur.resp_ts = parsed, pkt.ts_ns
        cur.complete = cur.complete and parsed.complete

    # redundancy and cache simulation, per (client address, name, type)
    window_ns = int(window_s * _NS)
    by_key: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, ex in enumerate(exchanges):
        by_key[(ex.client[0], ex.qname, ex.qtype)].append(i)
    redundant = [False] * len(exchanges)
    within = [False] * len(exchanges)
    since: list[int | None] = [None] * len(exchanges)
    saved = dict.fromkeys(floors, 0)
    for idxs in by_key.values():
        prev: _Open | None = None
        cache_until = dict.fromkeys(floors, -1)
        for i in idxs:
            ex = exchanges[i]
            if ex.queries == 0:
                continue
            if prev is not None and prev.resp is not None and prev.resp_ts is not None and prev.resp.ttls:
                expiry = prev.resp_ts + min(prev.resp.ttls) * _NS
                since[i] = ex.ts - expiry
                same = ex.resp is not None and sorted(ex.resp.addresses) == sorted(prev.resp.addresses)
                if same and 0 <= ex.ts - expiry < window_ns:
                    redundant[i] = True
                if same and ex.ts < expiry:
                    within[i] = True
            for fl in floors:
                if ex.ts < cache_until[fl]:
                    saved[fl] += 1
                elif (
                    ex.resp is not None and ex.resp_ts is not None and ex.resp.rcode == "NOERROR"
                    and ex.resp.ttls
                ):
                    cache_until[fl] = ex.resp_ts + max(min(ex.resp.ttls), fl) * _NS
            if ex.resp is not None and ex.resp.rcode == "NOERROR" and ex.resp.addresses:
                prev = ex
    out: list[DnsExchange] = []
    for i, ex in enumerate(exchanges):
        r = ex.resp
        out.append(
            DnsExchange(
                ts_ns=ex.ts,
                client_h=ex.client[0],
                client_p=ex.client[1],
                server_h=ex.server[0],
                server_p=ex.server[1],
                trans_id=ex.tid,
                qname=ex.qname,
                qtype=ex.qtype,
                queries=ex.queries,
                response_ns=ex.resp_ts,
                rtt_ns=(ex.resp_ts - ex.ts) if ex.resp_ts is not None and ex.queries else None,
                rcode=r.rcode if r is not None else None,
                answers=tuple(r.answers) if r is not None else (),
                ttls=tuple(r.ttls) if r is not None else (),
                addresses=tuple(sorted(r.addresses)) if r is not None else (),
                min_ttl_s=min(r.ttls) if r is not None and r.ttls else None,
                redundant=redundant[i],
                within_ttl=within[i],
                since_expiry_ns=since[i],
                complete=ex.complete,
            )
        )
    out.sort(key=lambda e: e.ts_ns)
    return DnsResult(
        exchanges=tuple(out),
        query_packets=nq,
        response_packets=nr,
        redundant=sum(redundant),
        within_ttl=sum(within),
        saved_by_ttl_floor=saved,
        issues=tuple(issues),
    )


class AddressNames:
    """Address -> name, from DNS answers: the name whose answer most recently (before a given
    time) carried the address."""

    def __init__(self, exchanges: Iterable[DnsExchange]) -> None:
        table: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for ex in exchanges:
            if ex.response_ns is None or not ex.qname:
                continue
            for a in ex.addresses:
                table[a].append((ex.response_ns, ex.qname))
        self._times: dict[str, list[int]] = {}
        self._names: dict[str, list[str]] = {}
        for a, rows in table.items():
            rows.sort()
            self._times[a] = [t for t, _ in rows]
            self._names[a] = [n for _, n in rows]

    def __call__(self, address: str, ts_ns: int) -> str | None:
        times = self._times.get(address)
        if times is None:
            return None
        i = bisect.bisect_right(times, ts_ns)
        return self._names[address][i - 1] if i else None


def dns_name_lookup(
    exchanges: Iterable[DnsExchange],
) -> Callable[[list[str], npt.NDArray[np.int64], npt.NDArray[np.int64]], tuple[npt.NDArray[np.int64], tuple[str, ...]]]:
    """A column-wise :class:`AddressNames`: (addresses, address index per row, time per row) ->
    (name index per row or -1, names)."""
    rows: list[tuple[str, int, str]] = []
    for ex in exchanges:
        if ex.response_ns is None or not ex.qname:
            continue
        rows.extend((a, ex.response_ns, ex.qname) for a in ex.addresses)

    def lookup(
        addresses: list[str], addr_idx: npt.NDArray[np.int64], ts: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], tuple[str, ...]]:
        out = np.full(addr_idx.shape[0], -1, dtype=np.int64)
        where = {a: i for i, a in enumerate(addresses)}
        known = [(where[a], t, q) for a, t, q in rows if a in where]
        if not known:
            return out, ()
        names: dict[str, int] = {}
        a_addr = np.array([k[0] for k in known], dtype=np.int64)
        a_ts = np.array([k[1] for k in known], dtype=np.int64)
        a_name = np.array([names.setdefault(k[2], len(names)) for k in known], dtype=np.int64)
        n_a, n_q = a_addr.size, addr_idx.size
        addr = np.concatenate([a_addr, addr_idx])
        tt = np.concatenate([a_ts, ts])
        kind = np.concatenate([np.zeros(n_a, np.int64), np.ones(n_q, np.int64)])  # answers first on ties
        o = np.lexsort((kind, tt, addr))
        is_ans = kind[o] == 0
        src = np.where(is_ans, np.arange(o.size), -1)
        last = np.maximum.accumulate(src)
        ok = (last >= 0) & ~is_ans
        ok[ok] = addr[o][last[ok]] == addr[o][ok]
        q_rows = o[ok] - n_a
        out[q_rows] = a_name[o[last[ok]]]
        return out, tuple(names)

    return lookup
