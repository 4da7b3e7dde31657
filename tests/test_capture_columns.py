"""PacketBatch: the column record handed to analysis."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from halfclose.capture.columns import PacketBatch


def _batch(n: int, data: bytes) -> PacketBatch:
    cols = {}
    for f in dataclasses.fields(PacketBatch):
        if f.name == "data":
            continue
        cols[f.name] = np.zeros(n, dtype=np.int64)
    cols["payload_off"] = np.array([2, 5][:n], dtype=np.int64)
    cols["payload_caplen"] = np.array([3, 0][:n], dtype=np.uint32)
    cols["ts_ns"] = np.arange(n, dtype=np.int64)
    return PacketBatch(data=np.frombuffer(data, dtype=np.uint8), **cols)


def test_len_and_payload() -> None:
    b = _batch(2, b"..abc...")
    assert len(b) == 2
    assert b.payload(0) == b"abc"
    assert b.payload(1) == b""


def test_batch_is_frozen() -> None:
    b = _batch(1, b"xyz")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.ts_ns = np.zeros(1, dtype=np.int64)  # type: ignore[misc]


def test_columns_are_derived_from_the_declaration() -> None:
    from halfclose.capture.columns import COLUMNS, MISSING, Tunnel, allocate, to_batch

    names = [f.name for f in dataclasses.fields(PacketBatch) if f.name != "data"]
    assert [c.name for c in COLUMNS] == names
    assert {c.name: c.dtype for c in COLUMNS}["ts_ns"] == np.dtype(np.int64)
    assert all(c.missing == MISSING[c.dtype.type] for c in COLUMNS)
    assert [c.name for c in COLUMNS if not c.kernel] == ["file_index"]
    out = allocate(4)
    out.tunnel[:] = Tunnel.GTPU
    batch = to_batch(out, 3, 2, np.zeros(0, np.uint8))
    for c in COLUMNS:
        col = getattr(batch, c.name)
        assert col.dtype == c.dtype and col.shape == (3,), c.name
    assert batch.file_index.tolist() == [2, 2, 2] and Tunnel(int(batch.tunnel[0])).label == "gtpu"
    assert len(batch.select(np.array([True, False, True]))) == 2


def test_docs_table_matches_the_declaration() -> None:
    from halfclose.capture.columns import columns_table

    docs = (Path(__file__).resolve().parents[1] / "docs" / "capture.md").read_text()
    assert columns_table() in docs, "regenerate the column table in docs/capture.md from columns_table()"
