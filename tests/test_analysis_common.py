"""The analysis stages' shared helpers: distinct address pairs (plain Python and compiled), the
address book's ids, records made column-wise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from halfclose.analysis import _flowkernel as fk
from halfclose.analysis._common import MISSING_INT, AddressBook, optional_ints, records, unique_pairs
from halfclose.analysis.findings import EndedBy, LostFinAck, SilentHalfClose


def _pairs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs drawn from a few values each, so that many repeat, some with an equal lo only."""
    rng = np.random.default_rng(seed)
    hi = rng.choice(np.array([0, 1, 2**63 + 5, 7], np.uint64), n)
    lo = rng.choice(np.array([(0xFFFF << 32) | 0x01020304, 9, 2**64 - 1, 0], np.uint64), n)
    return hi, lo


@pytest.mark.parametrize("form", ["python", "numba"])
def test_unique_pairs_numbers_pairs_by_first_appearance(form: str) -> None:
    py = unique_pairs.py_func  # type: ignore[attr-defined]
    # (plain: 64-bit products wrapping silently, as compiled)
    f = pytest.importorskip("numba").njit(nogil=True)(py) if form == "numba" else fk.plain(py)
    hi, lo = _pairs(3, 5000)
    pair, first = np.full(hi.size, -9, np.int64), np.full(hi.size, -9, np.int64)
    count = f(hi, lo, pair, first)
    seen: dict[tuple[int, int], int] = {}
    want = [seen.setdefault(p, len(seen)) for p in zip(hi.tolist(), lo.tolist(), strict=True)]
    assert count == len(seen) == 16
    assert pair.tolist() == want
    assert first[:count].tolist() == [want.index(k) for k in range(count)]
    assert f(hi[:0], lo[:0], pair, first) == 0
    # many pairs apart in hi only: their probes meet, and still none is taken for another
    hi, lo = np.arange(3000, dtype=np.uint64).repeat(2), np.full(6000, 9, np.uint64)
    pair, first = np.empty(6000, np.int64), np.empty(6000, np.int64)
    assert f(hi, lo, pair, first) == 3000
    assert pair.tolist() == np.arange(3000).repeat(2).tolist()


def test_address_ids_follow_the_addresses_order_and_stay() -> None:
    """A fresh book numbers the distinct addresses in (hi, lo) order; a later call keeps the ids
    it gave and numbers the new ones after them."""
    hi = np.array([0, 0, 0x20010DB8 << 32, 0, 0x20010DB8 << 32], np.uint64)
    lo = np.array([(0xFFFF << 32) | 0x0A000002, (0xFFFF << 32) | 0x0A000001, 1, (0xFFFF << 32) | 0x0A000002, 1],
                  np.uint64)  # fmt: skip
    ver = np.array([4, 4, 6, 4, 6])
    book = AddressBook()
    assert book.intern(ver, hi, lo).tolist() == [1, 0, 2, 1, 2]
    assert book.texts == ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
    more = book.intern(np.array([6, 4, 4]), np.array([0, 0, 0], np.uint64),
                       np.array([1, (0xFFFF << 32) | 0x0A000001, (0xFFFF << 32) | 0xFFFFFFFF], np.uint64))  # fmt: skip
    assert more.tolist() == [3, 0, 4]
    assert book.texts[3:] == ["::1", "255.255.255.255"]


def test_records_are_those_the_class_makes() -> None:
    rows = [
        dict(ts_ns=5, uids=("Ca",), server="s:1", idle_ns=None, close_wait_ns=7, ended_by=EndedBy.CLIENT_FIN,
             stale_write=False),
        dict(ts_ns=6, uids=("Cb",), server="s:2", idle_ns=3, close_wait_ns=None, ended_by=EndedBy.CAPTURE_END,
             stale_write=True),
    ]  # fmt: skip
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    made = records(SilentHalfClose, 2, columns)
    assert made == [SilentHalfClose(**r) for r in rows]  # type: ignore[arg-type]
    assert dataclasses.replace(made[1], ts_ns=1).ts_ns == 1 and made[1].ts_ns == 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        made[0].ts_ns = 2  # type: ignore[misc]
    with pytest.raises(TypeError, match="not its fields"):
        records(LostFinAck, 2, columns)
    with pytest.raises(ValueError, match="1 values for 2 records"):
        records(SilentHalfClose, 2, {**columns, "server": ["s:1"]})
    assert records(SilentHalfClose, 0, {name: [] for name in columns}) == []


def test_optional_ints_are_python_ints_and_none() -> None:
    values = optional_ints(np.array([3, MISSING_INT, -1, 2**62], np.int64))
    assert values == [3, None, -1, 2**62]
    assert all(type(v) is int for v in values if v is not None)
