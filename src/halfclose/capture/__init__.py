"""Capture reading: pcap and pcapng files (and stdin) to packet columns.

Knows formats and link layers, nothing about TCP semantics. Start with :func:`open_captures`::

    with open_captures(["trace.pcapng.gz"]) as reader:
        for batch in reader:
            ...  # numpy columns, see PacketBatch
        print(reader.stats.total.packets, reader.issues)
"""

from __future__ import annotations

from halfclose.capture.columns import PacketBatch
from halfclose.capture.reader import (
    CaptureIssue,
    CaptureReader,
    CaptureStats,
    FileStats,
    Progress,
    Severity,
    open_captures,
)

__all__ = [
    "CaptureIssue",
    "CaptureReader",
    "CaptureStats",
    "FileStats",
    "PacketBatch",
    "Progress",
    "Severity",
    "open_captures",
]
