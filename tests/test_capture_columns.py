"""PacketBatch: the column record handed to analysis."""

from __future__ import annotations

import dataclasses

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
