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
from typing import Any, cast

import numpy as np

from halfclose.capture import formats
from halfclose.capture.columns import PacketBatch, Tunnel, allocate, to_batch
from halfclose.capture.compiling import compile_for
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

#: Rows per batch by default (about 1.5 MB of columns; a default window holds about as many packets
#: of a capture with a short snap length): small blocks keep the memory of reading small.
DEFAULT_BATCH_PACKETS = 1 << 14

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
    #: Packets inside an encapsulation that is not decoded (L2TP, EtherIP, GRE of another kind,
    #: MPLS carrying something else than IP or Ethernet, a fragmented tunnel packet).
    encap_undecoded: int = 0
    #: Packets whose IP length claimed more than the frame holds (capped at the frame's length).
    length_capped: int = 0
    #: pcapng blocks of a type not known (skipped).
    unknown_blocks: int = 0
    #: Packets per link type.
    link_types: Mapping[int, int] = field(default_factory=dict)
    #: Delivered packets per outermost encapsulation (:class:`~halfclose.capture.columns.Tunnel`
    #: label; packets without one are not counted here).
    tunnels: Mapping[str, int] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        return self.tcp + self.udp


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureStats:
    """Per-file statistics and their sum."""

    files: tuple[FileStats, ...]
    total: FileStats


_TEXT_STATS = frozenset({"file", "format", "compression"})
_MAP_STATS = frozenset({"link_types", "tunnels"})


def _sum_stats(files: Sequence[FileStats]) -> FileStats:
    counts: dict[str, int] = {}
    maps: dict[str, dict[Any, int]] = {name: {} for name in _MAP_STATS}
    summed = [fl.name for fl in fields(FileStats) if fl.name not in _TEXT_STATS | _MAP_STATS]
    for f in files:
        for name in summed:
            counts[name] = counts.get(name, 0) + int(getattr(f, name))
        for name, total in maps.items():
            for key, n in getattr(f, name).items():
                total[key] = total.get(key, 0) + n
    return FileStats(
        file="total", format="", compression="", link_types=maps["link_types"], tunnels=maps["tunnels"], **counts
    )


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
        #: File offset of the first pcapng block of an unknown type (-1: none yet).
        self.unknown_block_offset = -1

    def note_window(self, start: int) -> None:
        """After a walker call over the window at file offset *start*: place what it found first."""
        from halfclose.capture import _kernels as k

        if self.unknown_block_offset < 0 and self.array[k.C_UNKNOWN_BLOCKS]:
            self.unknown_block_offset = start + int(self.array[k.C_UNKNOWN_BLOCK_POS])

    def freeze(self) -> FileStats:
        from halfclose.capture import _kernels as k

        a = [int(x) for x in self.array]
        tunnels = {t.label: a[k.C_TUNNEL + t] for t in Tunnel if t is not Tunnel.NONE and a[k.C_TUNNEL + t]}
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
            encap_undecoded=a[k.C_ENCAP_UNDECODED],
            length_capped=a[k.C_LENGTH_CAPPED],
            unknown_blocks=a[k.C_UNKNOWN_BLOCKS],
            link_types=dict(self.links),
            tunnels=tunnels,
        )


class _Interfaces:
    """The interface table of one pcapng section, grown as descriptions come (arrays for the kernel)."""

    def __init__(self) -> None:
        from halfclose.capture import _kernels as k

        z = np.zeros(0, dtype=np.int64)
        self.table = k.Interfaces(*(z.copy() for _ in k.Interfaces._fields))

    @property
    def linktype(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return cast("np.ndarray[Any, np.dtype[np.int64]]", self.table.linktype)

    @property
    def packets(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return cast("np.ndarray[Any, np.dtype[np.int64]]", self.table.packets)

    def add(self, idb: formats.InterfaceDescription) -> None:
        mul, div, shift = formats.timestamp_scale(idb.tsresol)
        row = {"linktype": idb.linktype, "mul": mul, "div": div, "shift": shift,
               "offset_ns": idb.tsoffset * 1_000_000_000, "snaplen": idb.snaplen, "packets": 0}  # fmt: skip
        self.table = type(self.table)(*(np.append(getattr(self.table, f), row[f]) for f in self.table._fields))


_DECODED_LINKS = frozenset(int(lt) for lt in LinkType)

#: pcapng versions read without a word (1.2 is written by some tools and means 1.0, as for Wireshark).
_PCAPNG_VERSIONS = frozenset({(1, 0), (1, 2)})


def _packets(n: int) -> str:
    return f"{n} packet{'s' if n != 1 else ''}"


def _round4(n: int) -> int:
    """A pcapng block length with the padding some old writers left out of it (as Wireshark reads it)."""
    return (n + 3) & ~3


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
        compile_for(total)  # small captures are read by the kernels as plain Python
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
            self._note_counts(index, src.name, counters)
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

    def _note_counts(self, index: int, name: str, counters: _Counters) -> None:
        """Once a file is read: warnings for what was counted and not delivered, with the counts."""
        from halfclose.capture import _kernels as k

        def warn(offset: int, message: str) -> None:
            self._issues.append(
                CaptureIssue(file=name, file_index=index, offset=offset, severity=Severity.WARNING, message=message)
            )

        for lt, n in sorted(counters.links.items()):
            if lt not in _DECODED_LINKS and n:
                warn(0, f"{link_type_name(lt)} is not decoded: {_packets(n)} counted and skipped "
                        f"(decoded: {', '.join(t.name for t in LinkType)})")  # fmt: skip
        a = counters.array
        if n := int(a[k.C_ENCAP_UNDECODED]):
            warn(0, f"{_packets(n)} inside an encapsulation that is not decoded (L2TP, EtherIP, MPLS in IP, "
                    "GRE of another kind, a fragmented tunnel packet): their TCP and UDP traffic is not "
                    "analysed")  # fmt: skip
        if n := int(a[k.C_LENGTH_CAPPED]):
            warn(0, f"{_packets(n)} (the first is frame {int(a[k.C_LENGTH_CAPPED_FRAME])}) claim an IP length "
                    "larger than the frame holds: their lengths were capped at the frame's")  # fmt: skip
        if n := int(a[k.C_UNKNOWN_BLOCKS]):
            warn(max(counters.unknown_block_offset, 0),
                 f"{n} pcapng block{'s' if n != 1 else ''} of a type not known (the first of type "
                 f"0x{int(a[k.C_UNKNOWN_BLOCK_TYPE]):08x}) skipped")  # fmt: skip

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

    def _emit(  # noqa: PLR0917
        self,
        index: int,
        src: StreamFile | MappedFile,
        win: Window,
        walked: Any,
        out: Any,
        counters: _Counters,
        total: int | None,
    ) -> Iterator[PacketBatch]:
        """After a walker call: the batch it filled, the counts placed, progress reported."""
        counters.bytes_read = win.start + int(walked.pos)
        counters.note_window(win.start)
        if walked.rows:
            yield to_batch(out, int(walked.rows), index, win.data)
        self._report(src, total)

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
        layout = k.PcapLayout(
            big=hdr.big_endian,
            record_header_len=hdr.record_header_len,
            ts_mult=1 if hdr.nanosecond else 1000,
            max_caplen=max_caplen,
            linktype=hdr.linktype,
        )
        counters.links[hdr.linktype] = 0
        p = 24
        frames = 0
        while True:
            out = allocate(self._batch)
            walked = k.Walked(*map(int, k.walk_pcap(win.data, p, layout, frames, self._batch, out, counters.array)))
            frames += walked.frames
            counters.links[hdr.linktype] += walked.frames
            p, status = walked.pos, walked.status
            yield from self._emit(index, src, win, walked, out, counters, total)
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
        ifaces = _Interfaces()
        first = True
        while True:
            out = allocate(self._batch)
            walked = k.Walked(
                *map(int, k.walk_pcapng(win.data, p, big, ifaces.table, frames, self._batch, out, counters.array))
            )  # (plain ints also when the kernel ran as Python)
            frames += walked.frames
            p, status = walked.pos, walked.status
            yield from self._emit(index, src, win, walked, out, counters, total)
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
                if _round4(self._u32(win.data, p + 4, big)) > _MAX_BLOCK:
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
                    f"block of length {blen} is impossible here (too short, or not repeated at its "
                    "end): the rest of the file is not read",
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
                p += _round4(self._u32(win.data, p + 4, big))
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
                    ifaces = _Interfaces()
                first = False
                big = shb.big_endian
                if (shb.version_major, shb.version_minor) not in _PCAPNG_VERSIONS:
                    self._issue(
                        index, src.name, win.start + p, Severity.WARNING, "version",
                        f"pcapng version {shb.version_major}.{shb.version_minor} (expected 1.0): read as 1.0",
                    )  # fmt: skip
                p += shb.block_len
            else:
                blen = _round4(self._u32(win.data, p + 4, big))
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
                blen = _round4(self._u32(data, p + 4, big))
                if blen < 12 or blen > _MAX_BLOCK:
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
