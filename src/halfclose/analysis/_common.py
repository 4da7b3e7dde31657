"""Helpers the analysis stages share: the splitmix hash, address interning, missing markers,
grouped quantiles and records made column-wise (numpy, and one kernel: :func:`unique_pairs`; the
compiled flow kernel compiles :func:`mix64` itself)."""

from __future__ import annotations

import collections
import dataclasses
import gc
import ipaddress
import itertools
import socket
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from halfclose.capture.compiling import kernel

__all__ = [
    "GOLDEN",
    "MISSING_CODE",
    "MISSING_INT",
    "AddressBook",
    "first_index",
    "format_address",
    "grouped_quantile",
    "last_index",
    "mix64",
    "optional_ints",
    "records",
    "server_label",
    "unique_pairs",
]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
R = TypeVar("R")

#: Missing value of an int64 value column (a time, a duration, a count that may be absent).
MISSING_INT = int(np.iinfo(np.int64).min)
#: Missing value of a code or index column (an enum code, an index into addresses or names).
MISSING_CODE = -1

#: 2**64 / golden ratio, the splitmix64 increment.
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: Any) -> Any:
    """splitmix64 finaliser (wraps modulo 2**64), on uint64 arrays or (compiled) scalars."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def format_address(version: int, hi: int, lo: int) -> str:
    """Text form of an address stored as two 64-bit halves (IPv4 stored IPv4-mapped)."""
    if version == 4:  # (the dotted quad ipaddress writes)
        return socket.inet_ntoa((lo & 0xFFFFFFFF).to_bytes(4, "big"))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def server_label(address: str, port: int, version: int) -> str:
    """``address:port``, ``[address]:port`` for IPv6: how a server without a name is shown."""
    return f"[{address}]:{port}" if version == 6 else f"{address}:{port}"


class AddressBook:
    """Addresses interned column-wise: each distinct address is formatted once and gets an id
    (its index in :attr:`texts`)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._ids: dict[tuple[int, int], int] = {}

    def intern(self, version: I64, hi: U64, lo: U64) -> I64:
        """The id of each address (an IPv4 address is IPv4-mapped, so (hi, lo) tells them apart)."""
        if not version.size:
            return np.empty(0, np.int64)
        pair = np.empty(version.size, dtype=np.int64)
        first = np.empty(version.size, dtype=np.int64)
        u = first[: unique_pairs(hi, lo, pair, first)]
        # the distinct ones in (hi, lo) order, each from its first row
        o = np.lexsort((lo[u], hi[u]))
        u = u[o]
        ids = np.empty(o.size, dtype=np.int64)
        ends = zip(version[u].tolist(), hi[u].tolist(), lo[u].tolist(), strict=True)
        ids[o] = [self._id(v, h, x) for v, h, x in ends]
        return ids[pair]

    def intern_text(self, text: str) -> int:
        """The id of an address given as text."""
        a = ipaddress.ip_address(text)
        if a.version == 4:
            return self._id(4, 0, (0xFFFF << 32) | int(a))
        return self._id(6, int(a) >> 64, int(a) & ((1 << 64) - 1))

    def _id(self, version: int, hi: int, lo: int) -> int:
        i = self._ids.get((hi, lo))
        if i is None:
            i = self._ids[(hi, lo)] = len(self.texts)
            self.texts.append(format_address(version, hi, lo))
        return i


@kernel()
def unique_pairs(hi: Any, lo: Any, pair: Any, first: Any) -> int:
    """The distinct (hi, lo) pairs of the rows, numbered in order of first appearance: ``pair[r]``
    is row *r*'s number, ``first[k]`` the first row of pair *k*; returns how many there are (an
    open-addressing table of row numbers)."""
    n = hi.shape[0]
    bits = 1
    while (1 << bits) < 2 * n:
        bits += 1
    table = np.full(1 << bits, -1, np.int64)
    mask = np.uint64((1 << bits) - 1)
    shift = np.uint64(64 - bits)
    count = 0
    for r in range(n):
        h = (((lo[r] ^ (hi[r] * GOLDEN)) * GOLDEN) >> shift) & mask
        while True:
            q = table[h]
            if q < 0:
                table[h] = r
                first[count] = r
                pair[r] = count
                count += 1
                break
            if hi[q] == hi[r] and lo[q] == lo[r]:
                pair[r] = pair[q]
                break
            h = (h + np.uint64(1)) & mask
    return count


def first_index(keys: I64, mask: npt.NDArray[np.bool_], size: int) -> I64:
    """For each key value 0..size-1: the first row (in row order) where *mask* holds, else -1."""
    out = np.full(size, -1, dtype=np.int64)
    rows = np.flatnonzero(mask)
    if rows.size:
        u, first = np.unique(keys[rows], return_index=True)
        out[u] = rows[first]
    return out


def last_index(keys: I64, mask: npt.NDArray[np.bool_], size: int) -> I64:
    """For each key value 0..size-1: the last row where *mask* holds, else -1."""
    out = np.full(size, -1, dtype=np.int64)
    rows = np.flatnonzero(mask)[::-1]
    if rows.size:
        u, first = np.unique(keys[rows], return_index=True)
        out[u] = rows[first]
    return out


def grouped_quantile(
    values: npt.NDArray[np.float64], starts: I64, sizes: I64, q: float
) -> npt.NDArray[np.float64]:
    """The *q* quantile of each group ``values[starts[g] : starts[g] + sizes[g]]`` (values sorted
    within each group), with numpy's default linear interpolation."""
    p = q * (sizes - 1)
    lo = np.floor(p).astype(np.int64)
    hi = np.minimum(lo + 1, sizes - 1)
    a, b = values[starts + lo], values[starts + hi]
    out: npt.NDArray[np.float64] = a + (b - a) * (p - lo)
    return out


def optional_ints(values: I64) -> list[int | None]:
    """The values as Python ints, None for :data:`MISSING_INT` (column-wise)."""
    out = values.astype(object)
    out[values == MISSING_INT] = None
    result: list[int | None] = out.tolist()
    return result


def records(cls: type[R], n: int, columns: Mapping[str, Sequence[Any]]) -> list[R]:
    """*n* records of the frozen, slotted dataclass *cls*, field by field from *columns* (one
    sequence of *n* values per field, every field given): the records ``cls(**row)`` makes, each
    slot set by its descriptor, without a call per record (the classes validate nothing)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if sorted(names) != sorted(columns):
        raise TypeError(f"{cls.__name__}: columns {sorted(columns)} are not its fields {sorted(names)}")
    for name in names:
        if len(columns[name]) != n:
            raise ValueError(f"{cls.__name__}.{name}: {len(columns[name])} values for {n} records")
    # (no collection while they are made: new records hold no cycles, and the collections their
    # allocations would start find nothing to free)
    collecting = gc.isenabled()
    gc.disable()
    try:
        made: list[R] = list(map(object.__new__, itertools.repeat(cls, n)))
        for name in names:
            collections.deque(map(getattr(cls, name).__set__, made, columns[name]), maxlen=0)
    finally:
        if collecting:
            gc.enable()
    return made
