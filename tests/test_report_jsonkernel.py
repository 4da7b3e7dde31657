"""The JSON records kernel: plain Python and compiled by numba, the bytes Python's own formatting writes."""

from __future__ import annotations

import numpy as np
import pytest

from halfclose.report._jsonkernel import ENTRY, INT, OPTIONAL_INT, SHARED, write_rows, write_spans

_MIN, _MAX = -(2**63), 2**63 - 1


def _case() -> tuple[tuple[np.ndarray, ...], bytes]:
    """Four columns (an int, an optional int, an entry of the block's, a shared one) over edge and
    random values, and the bytes they must give."""
    rng = np.random.default_rng(5)
    ints = np.array([0, -1, 9, 10, -10, _MIN, _MAX, *rng.integers(_MIN, _MAX, 50, dtype=np.int64)], dtype=np.int64)
    optional = np.roll(ints, 3)
    words = [b'"a"', b"null", b"", b'["x","y"]', b"true"]
    codes = np.arange(ints.shape[0], dtype=np.int64) % len(words)
    names = [b'"n%d"' % k for k in range(7)]
    shared = (codes * 3) % len(names)
    pieces = [b'{"i":', b',"o":', b',"e":', b',"s":', b"}"]
    expected = b",".join(
        b'{"i":%d,"o":%s,"e":%s,"s":%s}' % (i, b"null" if o == _MIN else b"%d" % o, words[e], names[k])
        for i, o, e, k in zip(ints.tolist(), optional.tolist(), codes.tolist(), shared.tolist(), strict=True)
    )
    args = (
        np.stack([ints, optional, codes, shared]),
        np.array([INT, OPTIONAL_INT, ENTRY, SHARED], dtype=np.int64),
        np.frombuffer(b"".join(pieces), dtype=np.uint8),
        np.cumsum([0] + [len(p) for p in pieces], dtype=np.int64),
        np.frombuffer(b"".join(words), dtype=np.uint8),
        np.cumsum([0] + [len(w) for w in words], dtype=np.int64),
        np.frombuffer(b"".join(names), dtype=np.uint8),
        np.cumsum([0] + [len(w) for w in names], dtype=np.int64),
    )
    return args, expected


@pytest.mark.parametrize("form", ["python", "numba"])
def test_records_are_written_as_python_formats_them(form: str) -> None:
    """Every int64 (its minimum too: ``null`` only where the column is optional), entries of every
    length (an empty one too), keys and separators: byte for byte; where each record ends, when
    asked."""
    args, expected = _case()
    f = write_rows.py_func  # type: ignore[attr-defined]
    if form == "numba":
        numba = pytest.importorskip("numba")
        f = numba.njit(nogil=True)(f)
    out = np.zeros(len(expected) + 64, dtype=np.uint8)
    none = np.empty(0, dtype=np.int64)
    n = f(out, none, *args)
    assert out[:n].tobytes() == expected
    ends = np.full(args[0].shape[1], -1, dtype=np.int64)
    assert f(out, ends, *args) == n
    records = expected.split(b"},{")
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert [out[a:b].tobytes() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)] == [
        (b"" if i == 0 else b"{") + r + (b"" if i == len(records) - 1 else b"}") for i, r in enumerate(records)
    ]
    assert f(out, none, args[0][:, :0], *args[1:]) == 0


@pytest.mark.parametrize("form", ["python", "numba"])
def test_spans_are_written_in_order_separated_by_commas(form: str) -> None:
    """Spans of any length (an empty one too), in any order, repeated: byte for byte."""
    f = write_spans.py_func  # type: ignore[attr-defined]
    if form == "numba":
        numba = pytest.importorskip("numba")
        f = numba.njit(nogil=True)(f)
    src = b'{"a":1}{"bb":[2]}{}"x"'
    spans = [(7, 17), (0, 7), (17, 19), (19, 19), (19, 22), (0, 7)]
    out = np.zeros(64, dtype=np.uint8)
    starts, stops = (np.array(s, dtype=np.int64) for s in zip(*spans, strict=True))
    n = f(out, np.frombuffer(src, dtype=np.uint8), starts, stops)
    assert out[:n].tobytes() == b",".join(src[a:b] for a, b in spans)
    assert f(out, np.frombuffer(src, dtype=np.uint8), starts[:0], stops[:0]) == 0
