"""Server names from the first bytes a client sends: TLS SNI and the HTTP Host header.

Pure functions over bytes; a payload that is neither, or is cut short by the snap length, gives
``None`` (never an exception).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from halfclose.analysis._common import MISSING_CODE
from halfclose.analysis.schema import CodedEnum

__all__ = [
    "PREFIX_BYTES",
    "AddressAnswers",
    "AnswerGroup",
    "NameSource",
    "NamedPayloads",
    "PayloadNames",
    "Service",
    "host_header",
    "name_from_payload",
    "names_from_payloads",
    "services_from_payloads",
    "tls_sni",
]


class NameSource(CodedEnum):
    """Where a connection's server name came from."""

    TLS_SNI = "tls_sni"
    HTTP_HOST = "http_host"
    DNS = "dns"


class Service(CodedEnum):
    """The application protocol a connection's first payload bytes show (Zeek's ``service``)."""

    HTTP = "http"  # an HTTP/1.x request method and a space, or ``HTTP/1.`` (a response)
    TLS = "tls"  # a TLS handshake record header: 0x16 0x03 0x00-0x04
    SSH = "ssh"  # the ``SSH-`` version banner
    DNS = "dns"  # DNS over TCP: a 2-byte length equal to the rest of the segment, one question
    H2C = "h2c"  # the HTTP/2 connection preface in the clear (``PRI * HTTP/2.0``)


_HTTP_STARTS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ", b"PATCH ", b"TRACE ",
                b"HTTP/1.")  # fmt: skip


def _prefix_groups(prefixes: tuple[bytes, ...]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Prefixes of up to 8 bytes by length: (length, their big-endian values)."""
    lengths = sorted({len(p) for p in prefixes})
    return tuple((n, tuple(int.from_bytes(p, "big") for p in prefixes if len(p) == n)) for n in lengths)


_HTTP_GROUPS = _prefix_groups(_HTTP_STARTS)
_SSH = int.from_bytes(b"SSH-", "big")
_H2C = b"PRI * HTTP/2.0"
_H2C_HEAD, _H2C_TAIL = int.from_bytes(_H2C[:8], "big"), int.from_bytes(_H2C[8:], "big")


def services_from_payloads(data: U8, off: I64, caplen: I64, plen: I64) -> I64:
    """Per payload (``data[off[r]:off[r]+caplen[r]]``, *plen* bytes on the wire): the
    :class:`Service` code its first bytes show, MISSING_CODE for none (column-wise: the first 16
    bytes as two big-endian words, each prefix compared as a number)."""
    m = int(off.shape[0])
    width = 16
    head = np.zeros((m, width), dtype=np.uint8)
    if m and data.shape[0]:
        k = np.arange(width)
        ok = k[None, :] < np.minimum(caplen, width)[:, None]
        idx = np.where(ok, off[:, None] + k[None, :], 0)
        head = np.where(ok, data[idx], 0).astype(np.uint8)
    words = np.ascontiguousarray(head).view(">u8").astype(np.uint64)
    w0 = words[:, 0] if m else np.empty(0, np.uint64)
    w1 = words[:, 1] if m else np.empty(0, np.uint64)
    out = np.full(m, MISSING_CODE, dtype=np.int64)

    def first(n: int) -> npt.NDArray[np.uint64]:
        shifted: npt.NDArray[np.uint64] = w0 >> np.uint64(64 - 8 * n)
        return shifted

    http = np.zeros(m, dtype=bool)
    # (the head is zero past the captured bytes and no start holds a zero byte: a cut start never matches)
    for n, values in _HTTP_GROUPS:
        start = first(n)
        for value in values:
            http |= start == value
    out[http] = Service.HTTP.code
    out[(caplen >= 4) & (first(4) == _SSH)] = Service.SSH.code
    out[(caplen >= 3) & (head[:, 0] == 0x16) & (head[:, 1] == 3) & (head[:, 2] <= 4)] = Service.TLS.code
    length = head[:, 0].astype(np.int64) * 256 + head[:, 1]
    qd = head[:, 6].astype(np.int64) * 256 + head[:, 7]
    out[(caplen >= 14) & (length == plen - 2) & (qd == 1) & (out == MISSING_CODE)] = Service.DNS.code
    h2c = (caplen >= len(_H2C)) & (w0 == _H2C_HEAD) & ((w1 >> np.uint64(16)) == _H2C_TAIL)
    out[h2c] = Service.H2C.code
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadNames:
    """Names read from first data segments, one row per segment that gave one.

    Fields: flow_dir (connection * 2 + direction), name (index into names), source
    (:attr:`NameSource.code`), names.
    """

    flow_dir: npt.NDArray[np.int64]
    name: npt.NDArray[np.int64]
    source: npt.NDArray[np.int64]
    names: tuple[str, ...]


_METHOD = re.compile(rb"^(GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|CONNECT|TRACE) \S+ HTTP/1\.[01]\r\n")
_HOST = re.compile(rb"\r\nhost:[ \t]*([^\r\n]+)", re.IGNORECASE)


def host_header(data: bytes) -> str | None:
    """The Host header of an HTTP/1.x request at the start of *data*, without a port."""
    if not _METHOD.match(data):
        return None
    head = data.split(b"\r\n\r\n", 1)[0]
    m = _HOST.search(head)
    if m is None:
        return None
    host = m.group(1).strip().decode("ascii", "replace")
    if host.startswith("["):  # [v6]:port
        return host[1:].split("]", 1)[0] or None
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.lower() or None


def tls_sni(data: bytes) -> str | None:
    """The server_name (RFC 6066 section 3) of a TLS ClientHello at the start of *data*."""
    try:
        if len(data) < 5 or data[0] != 0x16 or data[5] != 0x01:
            return None
        p = 5 + 4 + 2 + 32  # record header, handshake header, client_version, random
        p += 1 + data[p]  # session id
        p += 2 + int.from_bytes(data[p : p + 2], "big")  # cipher suites
        p += 1 + data[p]  # compression methods
        ext_end = p + 2 + int.from_bytes(data[p : p + 2], "big")
        p += 2
        while p + 4 <= min(ext_end, len(data)):
            etype = int.from_bytes(data[p : p + 2], "big")
            elen = int.from_bytes(data[p + 2 : p + 4], "big")
            p += 4
            if etype == 0:
                q = p + 2
                while q + 3 <= p + elen:
                    ntype = data[q]
                    nlen = int.from_bytes(data[q + 1 : q + 3], "big")
                    name = data[q + 3 : q + 3 + nlen]
                    if ntype == 0 and len(name) == nlen:
                        return name.decode("ascii", "replace").lower().rstrip(".") or None
                    q += 3 + nlen
                return None
            p += elen
    except IndexError:
        return None
    return None


def name_from_payload(data: bytes) -> tuple[str, NameSource] | None:
    """A server name from a client's first bytes: SNI first, then the Host header."""
    sni = tls_sni(data)
    if sni is not None:
        return sni, NameSource.TLS_SNI
    host = host_header(data)
    if host is not None:
        return host, NameSource.HTTP_HOST
    return None


PREFIX_BYTES = 320
_NAME_BYTES = 96
_HOST_PAT = np.frombuffer(bytes(c | 0x20 for c in b"\nhost:"), dtype=np.uint8)

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
B = npt.NDArray[np.bool_]


class _Payloads:
    """Byte access into many payloads at once: payload *r* is data[off[r] : off[r] + cap[r]]."""

    def __init__(self, data: U8, off: I64, cap: I64) -> None:
        self.data, self.off, self.cap = data, off, cap
        self.last = max(int(data.shape[0]) - 1, 0)

    def byte(self, pos: I64) -> I64:
        idx = np.clip(self.off + pos, 0, self.last)
        return self.data[idx].astype(np.int64) if self.data.shape[0] else np.zeros_like(pos)

    def u16(self, pos: I64) -> I64:
        return self.byte(pos) * 256 + self.byte(pos + 1)

    def window(self, rows: I64, pos: I64, width: int) -> U8:
        idx = np.clip(self.off[rows, None] + pos[:, None] + np.arange(width)[None, :], 0, self.last)
        return self.data[idx] if self.data.shape[0] else np.zeros((rows.size, width), np.uint8)


def _intern(raw: U8, length: I64, clean: Callable[[str], str | None]) -> tuple[I64, list[str]]:
    """Name index per row of *raw* (its first *length* bytes), each distinct name decoded once."""
    out = np.full(raw.shape[0], -1, dtype=np.int64)
    if not raw.shape[0]:
        return out, []
    width = raw.shape[1]
    masked = np.where(np.arange(width)[None, :] < length[:, None], raw, 0).astype(np.uint8)
    keyed = np.ascontiguousarray(masked).view(f"V{width}").reshape(-1)
    uniq, inv = np.unique(keyed, return_inverse=True)
    names: list[str] = []
    index: dict[str, int] = {}
    map_u = np.full(uniq.shape[0], -1, dtype=np.int64)
    for k, u in enumerate(uniq.tolist()):
        text = clean(bytes(u).rstrip(b"\0").decode("ascii", "replace"))
        if text:
            if text not in index:
                index[text] = len(names)
                names.append(text)
            map_u[k] = index[text]
    return map_u[inv.reshape(-1)], names


def _clean_host(text: str) -> str | None:
    host = text.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower() or None
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.lower() or None


def _clean_sni(text: str) -> str | None:
    return text.lower().rstrip(".") or None


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedPayloads:
    """Per payload: the index of its name (-1: none) and the :class:`NameSource` code; the names."""

    name: I64
    source: I64
    names: tuple[str, ...]


def names_from_payloads(data: U8, off: I64, caplen: I64) -> NamedPayloads:
    """Column-wise :func:`name_from_payload` over many payloads (``data[off[r]:off[r]+caplen[r]]``).

    Only the first :data:`PREFIX_BYTES` bytes are searched for a Host header.
    """
    m = int(off.shape[0])
    idx = np.full(m, -1, dtype=np.int64)
    src = np.full(m, -1, dtype=np.int64)
    if m == 0:
        return NamedPayloads(name=idx, source=src, names=())
    pl = _Payloads(data, off.astype(np.int64), caplen.astype(np.int64))
    cap = pl.cap
    zero = np.zeros(m, dtype=np.int64)
    b0 = pl.byte(zero)
    # TLS ClientHello: walk to the extensions, then extension by extension to server_name (0)
    tls = (cap >= 44) & (b0 == 0x16) & (pl.byte(zero + 5) == 0x01)
    found = np.full(m, -1, dtype=np.int64)
    t_rows = np.flatnonzero(tls)
    if t_rows.size:
        sub = _Payloads(data, pl.off[t_rows], cap[t_rows])
        z = np.zeros(t_rows.size, dtype=np.int64)
        p = 44 + sub.byte(z + 43)
        p = p + 2 + sub.u16(p)
        p = p + 1 + sub.byte(p)
        ext_end = np.minimum(p + 2 + sub.u16(p), sub.cap)
        p = p + 2
        f = np.full(t_rows.size, -1, dtype=np.int64)
        active = np.ones(t_rows.size, dtype=bool)
        for _ in range(64):
            active &= (p + 4 <= ext_end) & (f < 0)
            if not active.any():
                break
            etype = sub.u16(p)
            hit = active & (etype == 0)
            f[hit] = p[hit] + 4
            p = np.where(active & ~hit, p + 4 + sub.u16(p + 2), p)
        found[t_rows] = f
    q = found
    nlen = pl.u16(q + 3)
    sni_ok = (q >= 0) & (pl.byte(q + 2) == 0) & (q + 5 + nlen <= cap) & (nlen > 0) & (nlen <= _NAME_BYTES)
    s_rows = np.flatnonzero(sni_ok)
    s_sub, s_names = _intern(pl.window(s_rows, q[s_rows] + 5, _NAME_BYTES), nlen[s_rows], _clean_sni)
    # HTTP/1.x request with a Host header among its first bytes
    http = ~tls & (b0 >= ord("A")) & (b0 <= ord("Z")) & (cap >= 16)
    h_rows = np.flatnonzero(http)
    h_names: list[str] = []
    h_sub = np.empty(0, dtype=np.int64)
    h_ok_rows = np.empty(0, dtype=np.int64)
    if h_rows.size:
        width = PREFIX_BYTES
        low = pl.window(h_rows, np.zeros(h_rows.size, np.int64), width) | 0x20
        k = _HOST_PAT.size
        match = np.ones((h_rows.size, width - k + 1), dtype=bool)
        for j in range(k):
            match &= low[:, j : width - k + 1 + j] == _HOST_PAT[j]
        has = match.any(axis=1)
        start = (match.argmax(axis=1) + k).astype(np.int64)
        win = pl.window(h_rows, start, _NAME_BYTES)
        cr = win == 13
        length = cr.argmax(axis=1).astype(np.int64)
        ok = has & cr.any(axis=1) & (start + length <= cap[h_rows])
        h_ok_rows = h_rows[ok]
        h_sub, h_names = _intern(win[ok], length[ok], _clean_host)
    names = list(s_names)
    final = {n: i for i, n in enumerate(names)}
    for n in h_names:
        if n not in final:
            final[n] = len(names)
            names.append(n)
    remap = np.array([final[n] for n in h_names], dtype=np.int64)
    good = s_sub >= 0
    idx[s_rows[good]] = s_sub[good]
    src[s_rows[good]] = NameSource.TLS_SNI.code
    good = h_sub >= 0
    idx[h_ok_rows[good]] = remap[h_sub[good]]
    src[h_ok_rows[good]] = NameSource.HTTP_HOST.code
    return NamedPayloads(name=idx, source=src, names=tuple(names))


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerGroup:
    """An address that DNS answers for one question name carried, and the answers' times (ns)."""

    address: str
    times: npt.NDArray[np.int64]
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressAnswers:
    """What DNS answers said about addresses, in answer order: the input of the DNS names of
    servers (a connection's DNS name is the question whose answer most recently, at or before its
    first packet, carried the responder's address)."""

    groups: tuple[AnswerGroup, ...]

    @staticmethod
    def of(rows: list[tuple[str, int, str]]) -> AddressAnswers:
        """From (address, answer time, question name) rows."""
        return AddressAnswers(
            groups=tuple(AnswerGroup(address=a, times=np.array([t], np.int64), name=q) for a, t, q in rows)
        )

    def names_at(self, addresses: tuple[str, ...], addr_idx: I64, ts: I64) -> tuple[I64, tuple[str, ...]]:
        """Per row (an index into *addresses* and a time): the index of its name, -1 for none,
        and the names."""
        out = np.full(addr_idx.shape[0], -1, dtype=np.int64)
        where = {a: i for i, a in enumerate(addresses)}
        names: dict[str, int] = {}
        group_addr: list[int] = []
        group_name: list[int] = []
        parts_t: list[I64] = []
        for g in self.groups:
            i = where.get(g.address)
            if i is None:
                continue
            group_addr.append(i)
            group_name.append(names.setdefault(g.name, len(names)))
            parts_t.append(g.times)
        if not parts_t:
            return out, ()
        sizes = [t.size for t in parts_t]
        a_addr = np.repeat(np.array(group_addr, np.int64), sizes)
        a_ts = np.concatenate(parts_t).astype(np.int64)
        a_name = np.repeat(np.array(group_name, np.int64), sizes)
        hit = _last_answer(a_addr, a_ts, addr_idx, ts)
        ok = hit >= 0
        out[ok] = a_name[hit[ok]]
        return out, tuple(names)


def _last_answer(a_addr: I64, a_ts: I64, q_addr: I64, q_ts: I64) -> I64:
    """Per query (address, time): the answer row of the same address at or before it (the last
    in row order among answers at one time), -1 for none. One sort of the answers by a combined
    key where (address, time) fits in 63 bits, else one sort of answers and queries together."""
    if not q_addr.size or not a_addr.size:
        return np.full(q_addr.size, -1, np.int64)
    low = min(int(a_ts.min()), int(q_ts.min()))
    span = max(int(a_ts.max()), int(q_ts.max())) - low + 1
    top = max(int(a_addr.max()), int(q_addr.max())) + 1
    if top < np.iinfo(np.int64).max // span:
        a_key = a_addr * span + (a_ts - low)
        o = np.argsort(a_key, kind="stable")
        at = np.searchsorted(a_key[o], q_addr * span + (q_ts - low), side="right") - 1
        row = o[np.maximum(at, 0)]
        found: I64 = np.where((at >= 0) & (a_addr[row] == q_addr), row, -1)
        return found
    n_a = a_addr.size
    addr = np.concatenate([a_addr, q_addr])
    tt = np.concatenate([a_ts, q_ts])
    kind = np.concatenate([np.zeros(n_a, np.int64), np.ones(q_addr.size, np.int64)])  # answers first on ties
    o = np.lexsort((kind, tt, addr))
    is_ans = kind[o] == 0
    src = np.where(is_ans, np.arange(o.size), -1)
    last = np.maximum.accumulate(src)
    ok = (last >= 0) & ~is_ans
    ok[ok] = addr[o][last[ok]] == addr[o][ok]
    out = np.full(q_addr.size, -1, np.int64)
    out[o[ok] - n_a] = o[last[ok]]
    return out
