from __future__ import annotations

import contextlib
import ssl

import numpy as np
import pytest

from halfclose.analysis.names import NameSource, host_header, name_from_payload, names_from_payloads, tls_sni


def client_hello(name: str) -> bytes:
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_sni_from_a_real_client_hello() -> None:
    hello = client_hello("img.lab.test")
    assert tls_sni(hello) == "img.lab.test"
    assert name_from_payload(hello) == ("img.lab.test", NameSource.TLS_SNI)


def test_cut_client_hello_gives_nothing() -> None:
    hello = client_hello("img.lab.test")
    assert tls_sni(hello[:60]) is None


def test_host_header() -> None:
    req = b"GET /a HTTP/1.1\r\nUser-Agent: x\r\nHOST: Img.Lab.Test:8080\r\n\r\n"
    assert host_header(req) == "img.lab.test"
    assert host_header(b"GET / HTTP/1.1\r\nHost: [fd00::1]:80\r\n\r\n") == "fd00::1"
    assert host_header(b"HTTP/1.1 200 OK\r\nHost: x\r\n\r\n") is None


def test_column_wise_agrees_with_the_scalar_parsers() -> None:
    payloads = [
        client_hello("a.example.test"),
        b"GET / HTTP/1.1\r\nHost: b.example.test\r\n\r\n",
        b"\x17\x03\x03\x00\x10" + b"\0" * 16,
        client_hello("a.example.test")[:70],
        b"POST /x HTTP/1.1\r\nhost: B.example.test:81\r\nContent-Length: 0\r\n\r\n",
        b"",
        client_hello("c.example.test"),
    ]
    data = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    off = np.cumsum([0] + [len(p) for p in payloads[:-1]]).astype(np.int64)
    cap = np.array([len(p) for p in payloads], dtype=np.int64)
    got_names = names_from_payloads(data, off, cap)
    idx, src, names = got_names.name, got_names.source, got_names.names
    got = [(names[i], ("tls_sni", "http_host")[s]) if i >= 0 else None for i, s in zip(idx, src, strict=True)]
    want = [name_from_payload(p) for p in payloads]
    assert got == [(n, s.value) if w else None for w in want for n, s in [w or ("", NameSource.DNS)]]
    assert len(names) == 3


def test_services_of_many_payloads_each_prefix_whole_or_cut() -> None:
    """Every HTTP/1.x start, SSH, TLS, DNS over TCP and the h2c preface, whole and cut one byte short
    by the snap length (then none), among payloads of other bytes."""
    from halfclose.analysis._common import MISSING_CODE
    from halfclose.analysis.names import _HTTP_STARTS, Service, services_from_payloads

    dns_tcp = b"\x00\x1e" + b"\x12\x34\x01\x00\x00\x01" + bytes(24)
    cases = [(p + b"/ x", Service.HTTP, len(p)) for p in _HTTP_STARTS] + [
        (b"SSH-2.0-OpenSSH", Service.SSH, 4), (b"\x16\x03\x04\x00\x10", Service.TLS, 3),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Service.H2C, 14), (dns_tcp, Service.DNS, 14),
    ]  # fmt: skip
    payloads, want, plen = [], [], []
    for data, service, needed in cases:
        payloads += [data, data[: needed - 1], b"x" + data]
        want += [service.code, MISSING_CODE, MISSING_CODE]
        plen += [len(data)] * 3
    buf = np.frombuffer(b"".join(payloads), np.uint8)
    sizes = np.array([len(p) for p in payloads], np.int64)
    off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    got = services_from_payloads(buf, off, sizes, np.array(plen, np.int64))
    assert got.tolist() == want


@pytest.mark.parametrize("spread", [10**6, 2**61])
def test_the_last_answer_at_or_before_each_query(spread: int) -> None:
    """Per query, the answer of its address at or before it: the latest, the last in row order
    among answers at one time (short times by one sort of a combined key, times too far apart
    for it by one sort of everything)."""
    from halfclose.analysis.names import _last_answer

    rng = np.random.default_rng(4)
    a_addr, q_addr = rng.integers(0, 6, 400), rng.integers(0, 7, 300)
    a_ts, q_ts = rng.integers(-4, 4, 400) * (spread // 4), rng.integers(-4, 4, 300) * (spread // 4)
    want = []
    for qa, qt in zip(q_addr.tolist(), q_ts.tolist(), strict=True):
        rows = [r for r in range(400) if a_addr[r] == qa and a_ts[r] <= qt]
        want.append(max(rows, key=lambda r: (a_ts[r], r)) if rows else -1)
    assert _last_answer(a_addr, a_ts, q_addr, q_ts).tolist() == want
    assert -1 in want and len(set(want)) > 20
    assert _last_answer(a_addr[:0], a_ts[:0], q_addr, q_ts).tolist() == [-1] * 300
