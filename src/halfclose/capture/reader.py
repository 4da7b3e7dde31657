"""Read capture files into :class:`~halfclose.capture.columns.PacketBatch` blocks.

:func:`open_captures` checks every input up front (a file that is not a capture at all raises
:class:`~halfclose.errors.InputError` before anything is read), then the returned
:class:`CaptureReader` yields batches file after file. Problems inside a readable file (a
record cut short, a corrupt block, an undescribed interface, a link type not decoded) become
:class:`CaptureIssue` records and reading goes on with what can be read; counts per file are in
:attr:`CaptureReader.stats` once iteration is over.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from halfclose.capture import formats
from halfclose.capture.columns import PacketBatch
from halfclose.capture.formats import CaptureFormat, FormatError, LinkType, link_type_name
from halfclose.capture.source import DEFAULT_WINDOW, STDIN, MappedFile, StreamFile, Window, open_source
from halfclose.errors import InputError, UsageError

__all__ = [
    "DEFAULT_BATCH_PACKETS",
    "CaptureIssue",
    "CaptureReader",
    "CaptureStats",
    "FileStats",
    "Progress",
    "Severity",
    "open_captures",
]

#: Rows per batch by default (about 20 MB of columns).
DEFAULT_BATCH_PACKETS = 1 << 18

#: Largest captured length accepted for one pcap record (as libpcap and Wireshark: 256 KiB,
#: or the file's snap length when that is larger, up to 64 MiB).
_MAX_CAPLEN = 262_144
_MAX_BLOCK = 64 * 1024 * 1024

#: Issues of one kind reported per file before they are only counted.
_ISSUES_PER_KIND = 10

Progress = Callable[[int, int | None], None]
"""Progress callback: (bytes done, total bytes or None when unknown, as for stdin)."""


@enum.unique
class Severity(enum.Enum):
    """How much of the input an issue cost."""

    #: Something was skipped or looked odd; the rest of the file was read.
    WARNING = "warning"
    #: Reading of the file stopped here; what came before was delivered.
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureIssue:
    """A problem found in an input file."""

    file: str
    file_index: int
    #: Byte offset in the (decompressed) file where the problem is.
    offset: int
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.severity.value} at byte {self.offset}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileStats:
    """What reading one file found."""

    file: str
    format: str
    compression: str
    #: Bytes of the (decompressed) file walked.
    bytes_read: int
    #: Packet records read (tshark's frame count).
    packets: int
    #: Packets delivered in batches (TCP or UDP over IP).
    tcp: int
    udp: int
    ipv4: int
    ipv6: int
    #: Link layer carries something else than IP (ARP, LLDP, ...).
    non_ip: int
    #: IP packets that are neither TCP nor UDP (ICMP, ESP, ...).
    non_tcp_udp: int
    #: IP fragments (first and later ones), all protocols.
    fragments: int
    #: Packets whose headers were cut by the snap length before the transport header.
    truncated: int
    #: Packets whose headers contradict each other (bad version or lengths).
    malformed: int
    #: Packets of a link type that is not decoded.
    unknown_link: int
    #: Packets per link type.
    link_types: Mapping[int, int] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        return self.tcp + self.udp


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureStats:
    """Per-file statistics and their sum."""

    files: tuple[FileStats, ...]
    total: FileStats


def _sum_stats(files: Sequence[FileStats]) -> FileStats:
    counts: dict[str, int] = {}
    links: dict[int, int] = {}
    summed = [fl.name for fl in fields(FileStats) if fl.name not in {"file", "format", "compression", "link_types"}]
    for f in files:
        for name in summed:
            counts[name] = counts.get(name, 0) + int(getattr(f, name))
        for lt, n in f.link_types.items():
            links[lt] = links.get(lt, 0) + n
    return FileStats(file="total", format="", compression="", link_types=links, **counts)


class _Counters:
    """Mutable per-file tallies filled by the kernels."""

    def __init__(self, name: str, compression: str) -> None:
        from halfclose.capture import _kernels as k

        self.name = name
        self.compression = compression
        self.format = ""
        self.array = np.zeros(k.N_COUNTERS, dtype=np.int64)
        self.links: dict[int, int] = {}
        self.bytes_read = 0

    def freeze(self) -> FileStats:
        from halfclose.capture import _kernels as k

        a = [int(x) for x in self.array]
        return FileStats(
            file=self.name,
            format=self.format,
            compression=self.compression,
            bytes_read=self.bytes_read,
            packets=a[k.C_FRAMES],
            tcp=a[k.C_TCP],
            udp=a[k.C_UDP],
            ipv4=a[k.C_IPV4],
            ipv6=a[k.C_IPV6],
            non_ip=a[k.C_NON_IP],
            non_tcp_udp=a[k.C_OTHER_TRANSPORT],
            fragments=a[k.C_FRAGMENTS],
            truncated=a[k.C_TRUNCATED],
            malformed=a[k.C_MALFORMED],
            unknown_link=a[k.C_UNKNOWN_LINK],
            link_types=dict(self.links),
        )


class _Columns:
    """Freshly allocated output columns for one walker call."""

    def __init__(self, n: int) -> None:
        self.frame = np.empty(n, dtype=np.int64)
        self.ts_ns = np.empty(n, dtype=np.int64)
        self.ip_version = np.empty(n, dtype=np.uint8)
        self.proto = np.empty(n, dtype=np.uint8)
        self.src_hi = np.empty(n, dtype=np.uint64)
        self.src_lo = np.empty(n, dtype=np.uint64)
        self.dst_hi = np.empty(n, dtype=np.uint64)
        self.dst_lo = np.empty(n, dtype=np.uint64)
        self.sport = np.empty(n, dtype=np.uint16)
        self.dport = np.empty(n, dtype=np.uint16)
        self.tcp_flags = np.empty(n, dtype=np.uint8)
        self.seq = np.empty(n, dtype=np.uint32)
        self.ack = np.empty(n, dtype=np.uint32)
        self.window = np.empty(n, dtype=np.uint16)
        self.payload_len = np.empty(n, dtype=np.uint32)
        self.payload_off = np.empty(n, dtype=np.int64)
        self.payload_caplen = np.empty(n, dtype=np.uint32)
        self.fragment = np.empty(n, dtype=np.bool_)

    def args(self) -> tuple[Any, ...]:
        return (
            self.frame, self.ts_ns, self.ip_version, self.proto, self.src_hi, self.src_lo,
            self.dst_hi, self.dst_lo, self.sport, self.dport, self.tcp_flags, self.seq, self.ack,
            self.window, self.payload_len, self.payload_off, self.payload_caplen, self.fragment,
        )  # fmt: skip

    def batch(self, k: int, file_index: int, data: np.ndarray[Any, Any]) -> PacketBatch:
        return PacketBatch(
            file_index=np.full(k, file_index, dtype=np.int32),
            frame=self.frame[:k],
            ts_ns=self.ts_ns[:k],
            ip_version=self.ip_version[:k],
            proto=self.proto[:k],
            src_hi=self.src_hi[:k],
            src_lo=self.src_lo[:k],
            dst_hi=self.dst_hi[:k],
            dst_lo=self.dst_lo[:k],
            sport=self.sport[:k],
            dport=self.dport[:k],
            tcp_flags=self.tcp_flags[:k],
            seq=self.seq[:k],
            ack=self.ack[:k],
            window=self.window[:k],
            payload_len=self.payload_len[:k],
            payload_off=self.payload_off[:k],
            payload_caplen=self.payload_caplen[:k],
            fragment=self.fragment[:k],
            data=data,
        )


@dataclass(slots=True)
class _Interfaces:
    """The interface table of one pcapng section, as arrays for the kernel."""

    linktype: np.ndarray[Any, np.dtype[np.int64]]
    mul: np.ndarray[Any, np.dtype[np.int64]]
    div: np.ndarray[Any, np.dtype[np.int64]]
    shift: np.ndarray[Any, np.dtype[np.int64]]
    offset_ns: np.ndarray[Any, np.dtype[np.int64]]
    snaplen: np.ndarray[Any, np.dtype[np.int64]]
    packets: np.ndarray[Any, np.dtype[np.int64]]

    @classmethod
    def empty(cls) -> _Interfaces:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy())

    def add(self, idb: formats.InterfaceDescription) -> None:
        mul, div, shift = formats.timestamp_scale(idb.tsresol)
        self.linktype = np.append(self.linktype, idb.linktype)
        self.mul = np.append(self.mul, mul)
        self.div = np.append(self.div, div)
        self.shift = np.append(self.shift, shift)
        self.offset_ns = np.append(self.offset_ns, idb.tsoffset * 1_000_000_000)
        self.snaplen = np.append(self.snaplen, idb.snaplen)
        self.packets = np.append(self.packets, 0)

    def args(self) -> tuple[Any, ...]:
        return (self.linktype, self.mul, self.div, self.shift, self.offset_ns, self.snaplen, self.packets)


_DECODED_LINKS = frozenset(int(lt) for lt in LinkType)


class _FileEnded(Exception):
    """Internal: stop reading the current file (its issue was recorded)."""


class CaptureReader:
    """Iterates :class:`PacketBatch` blocks over all inputs; then has :attr:`issues` and :attr:`stats`.

    Use it once, as an iterator (ideally in a ``with`` block so that files are closed even when
    the loop is left early).
    """

    def __init__(
        self,
        sources: Sequence[str],
        *,
        batch_packets: int,
        window: int,
        progress: Progress | None,
        kept: Mapping[int, StreamFile | MappedFile],
        totals: Sequence[int | None],
    ) -> None:
        self._sources = list(sources)
        self._batch = batch_packets
        self._window = window
        self._progress = progress
        self._kept = dict(kept)
        self._totals = list(totals)
        self._issues: list[CaptureIssue] = []
        self._issue_counts: dict[tuple[int, str], int] = {}
        self._stats: list[_Counters] = []
        self._open: StreamFile | MappedFile | None = None
        self._started = False
        self._done_bytes = 0

    # -- public -------------------------------------------------------------------------------
    @property
    def issues(self) -> tuple[CaptureIssue, ...]:
        """Problems found so far, in reading order."""
        return tuple(self._issues)

    @property
    def stats(self) -> CaptureStats:
        """Counts per file read so far, and their total."""
        files = tuple(c.freeze() for c in self._stats)
        return CaptureStats(files=files, total=_sum_stats(files))

    def __iter__(self) -> Iterator[PacketBatch]:
        if self._started:
            raise UsageError("a capture reader can be iterated only once: open the captures again")
        self._started = True
        return self._iterate()

    def close(self) -> None:
        """Close the file being read (and the streams kept open since they were checked)."""
        for src in (self._open, *self._kept.values()):
            if src is not None:
                src.close()
        self._open = None
        self._kept.clear()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _iterate(self) -> Iterator[PacketBatch]:
        total = None if any(t is None for t in self._totals) else sum(t or 0 for t in self._totals)
        for index, name in enumerate(self._sources):
            kept = self._kept.pop(index, None)
            if kept is not None:
                src = kept
                src.window_size = self._window
            else:
                src = open_source(name, window=self._window)
            self._open = src
            counters = _Counters(src.name, src.compression.value)
            self._stats.append(counters)
            try:
                yield from self._read_file(index, src, counters, total)
            except _FileEnded:
                pass
            finally:
                src.close()
                self._open = None
            self._note_stream_end(index, src, counters)
            self._note_links(index, src.name, counters)
            self._done_bytes += self._totals[index] or 0
            if self._progress is not None:
                self._progress(self._done_bytes, total)

    def _issue(  # noqa: PLR0917 - called positionally in many places, kept readable by order
        self, index: int, name: str, offset: int, severity: Severity, kind: str, message: str
    ) -> None:
        key = (index, kind)
        n = self._issue_counts.get(key, 0) + 1
        self._issue_counts[key] = n
        if n <= _ISSUES_PER_KIND:
            self._issues.append(
                CaptureIssue(file=name, file_index=index, offset=offset, severity=severity, message=message)
            )

    def _note_stream_end(self, index: int, src: StreamFile | MappedFile, counters: _Counters) -> None:
        for (i, kind), n in self._issue_counts.items():
            if i == index and n > _ISSUES_PER_KIND:
                self._issues.append(
                    CaptureIssue(
                        file=src.name,
                        file_index=index,
                        offset=counters.bytes_read,
                        severity=Severity.WARNING,
                        message=f"{n - _ISSUES_PER_KIND} more issues like '{kind}' in this file not listed",
                    )
                )
        if isinstance(src, StreamFile) and (why := src.stream_error()) is not None:
            self._issues.append(
                CaptureIssue(
                    file=src.name,
                    file_index=index,
                    offset=counters.bytes_read,
                    severity=Severity.ERROR,
                    message=f"{src.compression.value} data ends early or is corrupt ({why}): "
                    "packets before this point were read",
                )
            )

    def _note_links(self, index: int, name: str, counters: _Counters) -> None:
        for lt, n in sorted(counters.links.items()):
            if lt not in _DECODED_LINKS and n:
                self._issues.append(
                    CaptureIssue(
                        file=name,
                        file_index=index,
                        offset=0,
                        severity=Severity.WARNING,
                        message=f"{link_type_name(lt)} is not decoded: {n} packet{'s' if n != 1 else ''} "
                        "counted and skipped (decoded: Ethernet, Linux cooked v1/v2, raw IP, null/loop)",
                    )
                )

    def _report(self, src: StreamFile | MappedFile, total: int | None) -> None:
        if self._progress is not None:
            self._progress(self._done_bytes + src.raw_position(), total)

    def _read_file(
        self, index: int, src: StreamFile | MappedFile, counters: _Counters, total: int | None
    ) -> Iterator[PacketBatch]:
        win = src.window(0, 64)
        head = win.data[:64].tobytes()
        fmt = formats.detect_format(head)
        if fmt is CaptureFormat.PCAP:
            counters.format = "pcap"
            yield from self._read_pcap(index, src, win, counters, total)
        elif fmt is CaptureFormat.PCAPNG:
            counters.format = "pcapng"
            yield from self._read_pcapng(index, src, win, counters, total)
        else:  # checked when opened; the file changed since
            self._issue(index, src.name, 0, Severity.ERROR, "format", "no longer a pcap or pcapng file")

    def _more(self, src: StreamFile | MappedFile, win: Window, p: int) -> Window:
        """The next window from ``win.start + p``, at least twice as large as what is left."""
        left = win.data.shape[0] - p
        return src.window(win.start + p, 2 * left + 64)

    def _read_pcap(
        self, index: int, src: StreamFile | MappedFile, win: Window, counters: _Counters, total: int | None
    ) -> Iterator[PacketBatch]:
        from halfclose.capture import _kernels as k

        try:
            hdr = formats.parse_pcap_header(win.data[:24].tobytes())
        except FormatError as exc:
            self._issue(index, src.name, 0, Severity.ERROR, "header", f"{exc}")
            return
        if hdr.version_major != 2:
            self._issue(
                index, src.name, 4, Severity.WARNING, "version",
                f"pcap version {hdr.version_major}.{hdr.version_minor} (expected 2.4): read as 2.4",
            )  # fmt: skip
        max_caplen = max(_MAX_CAPLEN, min(hdr.snaplen, _MAX_BLOCK))
        ts_mult = 1 if hdr.nanosecond else 1000
        counters.links[hdr.linktype] = 0
        p = 24
        frames = 0
        while True:
            cols = _Columns(self._batch)
            walk: Any = k.walk_pcap
            p_new, n, nframes, status = map(int, walk(
                win.data, p, hdr.big_endian, hdr.record_header_len, ts_mult, max_caplen,
                hdr.linktype, frames, self._batch, *cols.args(), counters.array,
            ))  # fmt: skip
            frames += nframes
            counters.links[hdr.linktype] += nframes
            p = p_new
            counters.bytes_read = win.start + p
            if n:
                yield cols.batch(n, index, win.data)
            self._report(src, total)
            if status == k.ST_FULL:
                continue
            if status == k.ST_CORRUPT:
                caplen = self._u32(win.data, p + 8, hdr.big_endian)
                self._issue(
                    index, src.name, win.start + p, Severity.ERROR, "corrupt record",
                    f"record {frames + 1} claims {caplen} captured bytes (more than {max_caplen}): "
                    "the file is corrupt from here on and the rest of it is not read",
                )  # fmt: skip
                return
            # ST_NEED_MORE
            if win.eof:
                left = win.data.shape[0] - p
                if left:
                    self._issue(
                        index, src.name, win.start + p, Severity.WARNING, "truncated",
                        f"last record cut short ({left} bytes where at least "
                        f"{self._pcap_need(win.data, p, hdr)} are needed): it was dropped",
                    )  # fmt: skip
                return
            win = self._more(src, win, p)
            p = 0

    @staticmethod
    def _u32(data: np.ndarray[Any, Any], p: int, big: bool) -> int:
        raw = data[p : p + 4].tobytes()
        if len(raw) < 4:
            return -1
        return int.from_bytes(raw, "big" if big else "little")

    def _pcap_need(self, data: np.ndarray[Any, Any], p: int, hdr: formats.PcapHeader) -> int:
        caplen = self._u32(data, p + 8, hdr.big_endian)
        return hdr.record_header_len + (caplen if caplen >= 0 else 0)

    def _read_pcapng(
        self, index: int, src: StreamFile | MappedFile, win: Window, counters: _Counters, total: int | None
    ) -> Iterator[PacketBatch]:
        from halfclose.capture import _kernels as k

        p = 0
        frames = 0
        big = False
        ifaces = _Interfaces.empty()
        first = True
        while True:
            cols = _Columns(self._batch)
            walk: Any = k.walk_pcapng
            p_new, n, nframes, status = map(
                int, walk(win.data, p, big, *ifaces.args(), frames, self._batch, *cols.args(), counters.array)
            )
            frames += nframes
            p = p_new
            counters.bytes_read = win.start + p
            if n:
                yield cols.batch(n, index, win.data)
            self._report(src, total)
            if status == k.ST_FULL:
                continue
            if status == k.ST_NEED_MORE:
                if win.eof:
                    left = win.data.shape[0] - p
                    if left:
                        self._issue(
                            index, src.name, win.start + p, Severity.WARNING, "truncated",
                            f"last block cut short ({left} bytes left at the end of the file): dropped",
                        )  # fmt: skip
                    self._count_links(ifaces, counters)
                    return
                if self._u32(win.data, p + 4, big) > _MAX_BLOCK:
                    status = k.ST_CORRUPT  # do not buffer the rest of a stream for one bogus length
                else:
                    win = self._more(src, win, p)
                    p = 0
                    continue
            offset = win.start + p
            if status == k.ST_CORRUPT:
                blen = self._u32(win.data, p + 4, big)
                self._issue(
                    index, src.name, offset, Severity.ERROR, "corrupt block",
                    f"block of length {blen} is impossible here (length not a multiple of 4, too "
                    "short, or not repeated at its end): the rest of the file is not read",
                )  # fmt: skip
                self._count_links(ifaces, counters)
                return
            if status == k.ST_BAD_IFACE:
                self._issue(
                    index, src.name, offset, Severity.WARNING, "bad interface",
                    "packet block names an interface no Interface Description Block described: skipped",
                )  # fmt: skip
                counters.array[k.C_FRAMES] += 1
                frames += 1
                p += self._u32(win.data, p + 4, big)
                continue
            # ST_STRUCTURAL: a section header or an interface description, parsed here.
            win, p = self._whole_block(index, src, win, p, big, counters, ifaces)
            btype = self._u32(win.data, p, False)
            if btype == formats.BT_SHB:
                try:
                    shb = formats.parse_shb(win.data[p : p + 16].tobytes())
                except FormatError as exc:
                    self._issue(index, src.name, offset, Severity.ERROR, "corrupt block", f"{exc}")
                    self._count_links(ifaces, counters)
                    return
                if not first:
                    self._count_links(ifaces, counters)
                    ifaces = _Interfaces.empty()
                first = False
                big = shb.big_endian
                if shb.version_major != 1:
                    self._issue(
                        index, src.name, win.start + p, Severity.WARNING, "version",
                        f"pcapng version {shb.version_major}.{shb.version_minor} (expected 1.0)",
                    )  # fmt: skip
                p += shb.block_len
            else:
                blen = self._u32(win.data, p + 4, big)
                try:
                    idb = formats.parse_idb(win.data[p : p + blen].tobytes(), big)
                except FormatError as exc:
                    self._issue(index, src.name, win.start + p, Severity.ERROR, "corrupt block", f"{exc}")
                    self._count_links(ifaces, counters)
                    return
                ifaces.add(idb)
                counters.links.setdefault(idb.linktype, 0)
                p += blen

    def _whole_block(  # noqa: PLR0917
        self,
        index: int,
        src: StreamFile | MappedFile,
        win: Window,
        p: int,
        big: bool,
        counters: _Counters,
        ifaces: _Interfaces,
    ) -> tuple[Window, int]:
        """Make sure the SHB/IDB at *p* is complete in the window; stop the file if it cannot be."""
        while True:
            data = win.data
            blen = -1
            if data.shape[0] - p >= 12:
                btype = self._u32(data, p, False)
                if btype == formats.BT_SHB:
                    bom = self._u32(data, p + 8, False)
                    big = bom != formats.PCAPNG_BYTE_ORDER_MAGIC
                blen = self._u32(data, p + 4, big)
                if blen < 12 or blen % 4 or blen > _MAX_BLOCK:
                    self._issue(
                        index, src.name, win.start + p, Severity.ERROR, "corrupt block",
                        f"block of length {blen} is impossible here: the rest of the file is not read",
                    )  # fmt: skip
                    self._count_links(ifaces, counters)
                    raise _FileEnded
                if data.shape[0] - p >= blen:
                    return win, p
            if win.eof:
                self._issue(
                    index, src.name, win.start + p, Severity.WARNING, "truncated",
                    f"last block cut short ({data.shape[0] - p} bytes left at the end of the file)",
                )  # fmt: skip
                self._count_links(ifaces, counters)
                raise _FileEnded
            win = src.window(win.start + p, max(blen, 2 * (data.shape[0] - p) + 64))
            p = 0

    @staticmethod
    def _count_links(ifaces: _Interfaces, counters: _Counters) -> None:
        for lt, n in zip(ifaces.linktype.tolist(), ifaces.packets.tolist(), strict=True):
            counters.links[int(lt)] = counters.links.get(int(lt), 0) + int(n)
        ifaces.packets[:] = 0


def _check_source(name: str) -> tuple[StreamFile | MappedFile | None, int | None]:
    """Open *name* far enough to know it is a capture; keep a stream open (it cannot be reopened)."""
    src = open_source(name, window=4096)
    keep = not src.rereadable
    try:
        win = src.window(0, 32)
        head = win.data[:32].tobytes()
        if isinstance(src, StreamFile) and (why := src.stream_error()) is not None and len(head) < 4:
            raise InputError(f"{src.name}: cannot decompress ({src.compression.value}): {why}")
        fmt = formats.detect_format(head)
        if fmt is None:
            if not head:
                raise InputError(f"{src.name}: empty file, not a capture: give a pcap or pcapng file")
            raise InputError(
                f"{src.name}: not a pcap or pcapng file (starts with {head[:4].hex(' ')} at byte 0): "
                "give a capture written by tcpdump, tshark or dumpcap"
            )
        try:
            if fmt is CaptureFormat.PCAP:
                formats.parse_pcap_header(head[:24])
            else:
                formats.parse_shb(head[:16])
        except FormatError as exc:
            raise InputError(f"{src.name}: bad {fmt.value} file header at byte 0: {exc}") from None
        return (src if keep else None), src.total_bytes
    finally:
        if not keep:
            src.close()


def open_captures(
    sources: Sequence[str | Path],
    *,
    batch_packets: int = DEFAULT_BATCH_PACKETS,
    progress: Progress | None = None,
    window_bytes: int = DEFAULT_WINDOW,
) -> CaptureReader:
    """Check the inputs and return a reader that yields their packets as column batches.

    *sources* are file names, or ``"-"`` for standard input (at most once). Files may be pcap
    (micro- or nanosecond, either byte order) or pcapng, plain or compressed with gzip, zstd,
    xz or bzip2 (told by content). Batches come file after file, in capture order, with at
    most *batch_packets* rows each. *progress*, if given, is called as ``progress(done, total)``
    in bytes of the input files as reading goes on.

    Raises:
        UsageError: no sources, stdin named twice, or a batch size below 1.
        InputError: a file cannot be opened or is not a capture file (the message names it).
    """
    names = [str(s) for s in sources]
    if not names:
        raise UsageError("no capture files given")
    if names.count(STDIN) > 1:
        raise UsageError("standard input ('-') can be read only once")
    if batch_packets < 1:
        raise UsageError(f"batch size must be at least 1 packet, not {batch_packets}")
    kept: dict[int, StreamFile | MappedFile] = {}
    totals: list[int | None] = []
    try:
        for index, name in enumerate(names):
            if any(names[i] == name for i in kept):
                raise UsageError(f"{name} is a stream (a pipe or FIFO): it can be read only once")
            src, size = _check_source(name)
            if src is not None:
                kept[index] = src
            totals.append(size)
    except BaseException:
        for src in kept.values():
            src.close()
        raise
    return CaptureReader(
        names,
        batch_packets=batch_packets,
        window=window_bytes,
        progress=progress,
        kept=kept,
        totals=totals,
    )
