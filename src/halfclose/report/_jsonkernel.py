"""The compiled inner loop of the JSON document's long lists: records written into a byte buffer.

Written in the subset of Python that numba compiles (integers and numpy arrays only), declared
with :func:`~halfclose.capture.compiling.kernel` as the capture and flow kernels are (compiled
ahead of time by scripts/setup, releasing the GIL). :func:`write_rows` knows nothing of JSON but
digits: the keys come pre-encoded as one template, every other value as pre-encoded entries
(:mod:`halfclose.report.analysis_files` encodes them with orjson).
"""

# Long positional signatures are what numba compiles best.
# ruff: noqa: PLR0917

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from halfclose.capture.compiling import kernel

__all__ = ["ENTRY", "INT", "OPTIONAL_INT", "SHARED", "write_rows", "write_spans"]

#: How :func:`write_rows` writes a column's values: as decimal integers; as decimal integers with
#: ``null`` for the int64 minimum; as the pre-encoded entry the value indexes, of the block's own
#: entries or of the shared ones (of tables every block uses).
INT, OPTIONAL_INT, ENTRY, SHARED = 0, 1, 2, 3

_NULL = np.int64(np.iinfo(np.int64).min)
_TEN = np.uint64(10)
_ONE = np.uint64(1)
_HUNDRED = np.uint64(100)
_DIGIT_0 = np.uint64(48)

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


@kernel()
def write_rows(
    out: U8, ends: I64, vals: I64, kinds: I64, template: U8, template_off: I64, entries: U8, entry_off: I64,
    shared: U8, shared_off: I64,
) -> int:
    """Write ``nrows`` records, separated by commas, into *out* (large enough); returns the bytes
    written, and, when *ends* is not empty (``nrows`` long), where each record ends in
    ``ends[r]`` (the next one starts one byte after). Record ``r`` is, for each column ``c`` of
    ``vals`` (shape ``(ncols, nrows)``), the
    template piece ``c`` (``template[template_off[c]:template_off[c + 1]]``, the key with its
    ``{`` or ``,`` before and ``:`` after) then the value ``vals[c, r]`` written as ``kinds[c]``
    says (an entry ``e`` is ``entries[entry_off[e]:entry_off[e + 1]]``, a shared one
    ``shared[shared_off[e]:shared_off[e + 1]]``), then the last piece."""
    ncols, nrows = vals.shape
    # "00" to "99", two digits written per division; 10 ** k, to count a number's digits first
    pairs = np.empty(200, np.uint8)
    for k in range(100):
        pairs[2 * k] = 48 + k // 10
        pairs[2 * k + 1] = 48 + k % 10
    powers = np.empty(20, np.uint64)
    powers[0] = _ONE
    for k in range(1, 20):
        powers[k] = powers[k - 1] * _TEN
    pos = 0
    for r in range(nrows):
        if r > 0:
            out[pos] = 44  # ,
            pos += 1
        for c in range(ncols + 1):
            for k in range(template_off[c], template_off[c + 1]):
                out[pos] = template[k]
                pos += 1
            if c == ncols:
                break
            v = vals[c, r]
            kind = kinds[c]
            if kind == ENTRY:
                for k in range(entry_off[v], entry_off[v + 1]):
                    out[pos] = entries[k]
                    pos += 1
            elif kind == SHARED:
                for k in range(shared_off[v], shared_off[v + 1]):
                    out[pos] = shared[k]
                    pos += 1
            elif kind == OPTIONAL_INT and v == _NULL:
                out[pos] = 110  # n
                out[pos + 1] = 117  # u
                out[pos + 2] = 108  # l
                out[pos + 3] = 108  # l
                pos += 4
            else:
                if v < 0:
                    out[pos] = 45  # -
                    pos += 1
                    u = np.uint64(-(v + 1)) + _ONE
                else:
                    u = np.uint64(v)
                n = 1
                while n < 20 and u >= powers[n]:
                    n += 1
                end = pos + n
                p = end
                while u >= _HUNDRED:
                    q = u // _HUNDRED
                    two = np.int64(u - q * _HUNDRED) * 2
                    out[p - 1] = pairs[two + 1]
                    out[p - 2] = pairs[two]
                    p -= 2
                    u = q
                if u >= _TEN:
                    two = np.int64(u) * 2
                    out[p - 1] = pairs[two + 1]
                    out[p - 2] = pairs[two]
                else:
                    out[p - 1] = np.uint8(_DIGIT_0 + u)
                pos = end
        if ends.shape[0] > 0:
            ends[r] = pos
    return pos


@kernel()
def write_spans(out: U8, src: U8, starts: I64, stops: I64) -> int:
    """Write ``src[starts[i]:stops[i]]`` for each ``i`` in order, separated by commas, into *out*
    (large enough); returns the bytes written."""
    pos = 0
    for i in range(starts.shape[0]):
        if i > 0:
            out[pos] = 44  # ,
            pos += 1
        for k in range(starts[i], stops[i]):
            out[pos] = src[k]
            pos += 1
    return pos
