"""Capture reading: pcap and pcapng files (and stdin) to packet columns.

Knows formats and link layers, nothing about TCP semantics.
"""

from __future__ import annotations

from halfclose.capture.columns import PacketBatch

__all__ = ["PacketBatch"]
