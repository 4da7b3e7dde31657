"""The one place the fleet layer calls the capture and analysis packages.

Names relied on (and nothing else of those packages):

* ``halfclose.capture.open_captures`` (a reader whose first batch gives the first packet's time,
  ``reader.stats.files[0].format`` and ``.link_types``);
* ``halfclose.capture.source.open_source`` (decompressed head bytes, for the pcapng identity);
* ``halfclose.capture.formats.parse_pcap_header``, ``parse_shb``, ``parse_idb``, ``BT_SHB``,
  ``timestamp_scale`` (the pcapng interface's resolution, for the last block's time);
* ``halfclose.capture.Severity`` (what a capture issue cost);
* ``halfclose.analysis_io.analyze`` and ``halfclose.analysis.AnalysisOptions``;
* ``halfclose.analysis.document.to_document`` (findings, servers, DNS exchanges and the summary as
  plain values) and ``CONNECTION_COLUMNS``;
* ``halfclose.report.analysis_files.connections_arrow`` (the connection table as Arrow, its schema
  declared by the analysis).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from halfclose.fleet.sets import CaptureFile

__all__ = ["AnalysisKnobs", "SetAnalysis", "analyze_files", "connection_columns", "probe"]

_HEAD = 65536
_BT_IDB = 1
_BT_ISB = 5
_BT_EPB = 6
_SHB_OPTIONS = {2: "hw", 3: "os", 4: "app"}


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisKnobs:
    """The analysis options a run passes on (picklable, for worker processes)."""

    replacement_window_s: float = 5.0
    dns_window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class _Pcapng:
    """What the blocks before the first packet say: identity, interface names, timestamp scales."""

    identity: str
    names: tuple[str, ...]
    big: bool
    scales: tuple[tuple[int, int], ...]  # (if_tsresol, if_tsoffset) per interface


def _pcapng_head(head: bytes) -> _Pcapng:
    """Section header options and the interfaces described before the first packet."""
    from halfclose.capture import formats

    parts: list[str] = []
    names: list[str] = []
    scales: list[tuple[int, int]] = []
    p, big = 0, False
    while p + 12 <= len(head):
        (btype,) = struct.unpack_from("<I", head, p)
        if btype == formats.BT_SHB:
            shb = formats.parse_shb(head[p : p + 16])
            big, blen = shb.big_endian, shb.block_len
            e = ">" if big else "<"
            q, end = p + 24, min(p + blen - 4, len(head))
            while q + 4 <= end:
                code, length = struct.unpack_from(e + "HH", head, q)
                if code == 0:
                    break
                if code in _SHB_OPTIONS:
                    value = head[q + 4 : q + 4 + length].decode("utf-8", "replace").rstrip("\x00")
                    parts.append(f"{_SHB_OPTIONS[code]}={value}")
                q += 4 + ((length + 3) & ~3)
        else:
            e = ">" if big else "<"
            (btype,) = struct.unpack_from(e + "I", head, p)
            (blen,) = struct.unpack_from(e + "I", head, p + 4)
            if btype != _BT_IDB or blen < 20 or p + blen > len(head):
                break
            idb = formats.parse_idb(head[p : p + blen], big)
            parts.append(f"if={idb.name or ''}/{idb.linktype}/{idb.snaplen}")
            names.append(idb.name or "")
            scales.append((idb.tsresol, idb.tsoffset))
        if blen < 12:
            break
        p += blen
    return _Pcapng(identity=";".join(parts), names=tuple(names), big=big, scales=tuple(scales))


def _ns(raw: int, tsresol: int, tsoffset: int) -> int:
    from halfclose.capture import formats

    mul, div, shift = formats.timestamp_scale(tsresol)
    if tsresol & 0x80 and shift:
        ns = (raw >> shift) * 1_000_000_000 + (((raw & ((1 << shift) - 1)) * 1_000_000_000) >> shift)
    else:
        ns = raw * mul // div
    return ns + tsoffset * 1_000_000_000


def _pcapng_last_ts(path: str, info: _Pcapng) -> int | None:
    """The time of an uncompressed pcapng file's last block when it is a packet or statistics
    block (read backwards through its trailing length); None otherwise."""
    e = ">" if info.big else "<"
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"\x0a\x0d\x0d\x0a":
                return None  # compressed: no cheap way to the end
            size = fh.seek(0, os.SEEK_END)
            if size < 32:
                return None
            fh.seek(size - 4)
            (blen,) = struct.unpack(e + "I", fh.read(4))
            if blen < 28 or blen > size or blen % 4:
                return None
            fh.seek(size - blen)
            block = fh.read(min(blen, 32))
    except OSError:
        return None
    btype, lead, iface, hi, lo = struct.unpack_from(e + "IIIII", block)
    if lead != blen or btype not in (_BT_EPB, _BT_ISB) or iface >= len(info.scales):
        return None
    return _ns((hi << 32) | lo, *info.scales[iface])


def probe(path: str) -> CaptureFile:
    """Look at a local capture file: its shape and the time of its first TCP or UDP packet.

    Raises:
        InputError: it cannot be opened or is not a capture (the message names it).
    """
    from halfclose.capture import formats, open_captures
    from halfclose.capture.source import open_source

    first: int | None = None
    with open_captures([path], batch_packets=1) as reader:
        for batch in reader:
            first = int(batch.ts_ns[0])
            break
        stats = reader.stats.files[0]
    src = open_source(path, window=_HEAD)
    try:
        head = src.window(0, _HEAD).data[:_HEAD].tobytes()
    finally:
        src.close()
    size = os.path.getsize(path)
    if stats.format == "pcap":
        hdr = formats.parse_pcap_header(head[:24])
        shape = f"pcap/{hdr.linktype}/{hdr.snaplen}/{'ns' if hdr.nanosecond else 'us'}"
        return CaptureFile(path=path, size=size, shape=shape, first_ts_ns=first)
    info = _pcapng_head(head)
    return CaptureFile(
        path=path, size=size, shape=f"pcapng/{info.identity}", first_ts_ns=first,
        last_ts_ns=_pcapng_last_ts(path, info), interface=",".join(n for n in info.names if n),
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAnalysis:
    """One capture set's analysis as plain values, ready for the dataset tables.

    Fields:
        connections: the analysis's own Parquet table of connection records (a pyarrow Table).
        findings, servers, dns: records as plain dicts (the JSON document's).
        summary: the JSON document's summary.
        capture_issues: one line per capture issue; errors: whether any stopped reading a file.
        first_ts_ns, last_ts_ns: the first and last connection or DNS times, None without either.
    """

    connections: Any
    findings: list[dict[str, Any]]
    servers: list[dict[str, Any]]
    dns: list[dict[str, Any]]
    summary: dict[str, Any]
    capture_issues: tuple[str, ...]
    errors: bool
    first_ts_ns: int | None
    last_ts_ns: int | None


def analyze_files(paths: Sequence[str], knobs: AnalysisKnobs) -> SetAnalysis:
    """Analyse the files of one capture set as one capture, in the order given."""
    from halfclose.analysis import AnalysisOptions
    from halfclose.analysis.document import to_document
    from halfclose.analysis_io import analyze
    from halfclose.capture import Severity
    from halfclose.report.analysis_files import connections_arrow

    opts = AnalysisOptions(replacement_window_s=knobs.replacement_window_s, dns_redundant_window_s=knobs.dns_window_s)
    result = analyze(list(paths), opts)
    connections = connections_arrow(result)
    doc = to_document(result)
    dns = doc["dns"]["exchanges"]
    times = [t for t in (connections.column("ts_ns").to_pylist() if connections.num_rows else [])]
    times += [e["ts_ns"] for e in dns]
    ends = [t for t in connections.column("end_ns").to_pylist()] if connections.num_rows else []
    ends += [e["response_ns"] or e["ts_ns"] for e in dns]
    return SetAnalysis(
        connections=connections,
        findings=doc["findings"],
        servers=doc["servers"],
        dns=dns,
        summary=doc["summary"],
        capture_issues=tuple(str(i) for i in result.capture_issues),
        errors=any(i.severity is Severity.ERROR for i in result.capture_issues),
        first_ts_ns=min(times, default=None),
        last_ts_ns=max(ends, default=None),
    )


def connection_columns() -> tuple[str, ...]:
    """The connection record's field names, in table order."""
    from halfclose.analysis.document import CONNECTION_COLUMNS

    return CONNECTION_COLUMNS
