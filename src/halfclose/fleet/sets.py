"""Capture sets: which input files belong to one capture, and in what order (no I/O here).

A rotating capture is written as many files: ``tcpdump -C`` appends a counter to the name
(``dump.pcap``, ``dump.pcap1``, ``dump.pcap2``; with ``-W`` zero-padded: ``dump.pcap00``...),
``tcpdump -G`` and dumpcap's ring buffer put the time in it (``cap-20261201-083000.pcap``,
``ring_00003_20261201083000.pcapng``). Rules, in order:

1. A counter at the very end of the name is dropped: ``dump.pcap7`` -> ``dump.pcap``.
2. If what is left holds a date or a time (``YYYYmmdd``, ``YYYYmmddHHMM[SS]``, ``YYYY-mm-dd``,
   ``HH-MM-SS`` after a date, or a 10-digit Unix time between 2000 and 2100), every run of digits
   in it becomes ``#``: ``ring_00003_20261201083000.pcapng`` -> ``ring_#_#.pcapng``.
3. Files of one folder with the same key *and* the same shape (format, link types, snap length,
   pcapng interface names and section header identity) are one capture set. ``host1.pcap`` and
   ``host2.pcap`` stay apart: a number inside a name is a host or a device, not a rotation.
4. pcapng files left alone by the names, of one folder and one shape that names its interfaces
   (dumpcap and tshark write ``if_name``), are one capture set when their packets follow one
   another in time: sorted by first packet, each file starts at or after the end of the one
   before. If any two of them overlap in time they are captures of different machines (the
   same interface name on two phones) and all stay apart. Any other file is a set of its own.
5. A set's files are analysed in the order of their first packet's time (so a ring buffer that
   wrapped around is still read oldest first), then by name; a connection that runs from one file
   into the next is one record.
"""

from __future__ import annotations

import calendar
import hashlib
import itertools
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from halfclose.errors import UsageError

__all__ = [
    "CaptureFile",
    "CaptureSet",
    "Labels",
    "group_sets",
    "parse_labels",
    "rotation_key",
]

_RUN = re.compile(r"\d+")
_DASHED_DATE = re.compile(r"(?<!\d)(\d{4})[-_.](\d{2})[-_.](\d{2})(?!\d)")
_EPOCH_MIN, _EPOCH_MAX = 946_684_800, 4_102_444_800  # 2000-01-01, 2100-01-01


def _is_date(y: int, m: int, d: int) -> bool:
    return 1990 <= y <= 2100 and 1 <= m <= 12 and 1 <= d <= calendar.monthrange(y, m)[1]


def _is_clock(h: int, mi: int, s: int = 0) -> bool:
    return h < 24 and mi < 60 and s < 61


def _datelike(run: str) -> bool:
    n = len(run)
    if n in (8, 12, 14):
        ok = _is_date(int(run[:4]), int(run[4:6]), int(run[6:8]))
        if n >= 12:
            ok = ok and _is_clock(int(run[8:10]), int(run[10:12]), int(run[12:14] or 0))
        return ok
    return n == 10 and _EPOCH_MIN <= int(run) < _EPOCH_MAX


def rotation_key(name: str) -> str:
    """The part of a file name shared by every file of its rotation (rules 1 and 2 above).

    >>> rotation_key("dump.pcap12"), rotation_key("dump.pcap")
    ('dump.pcap', 'dump.pcap')
    >>> rotation_key("cap-2026-12-01_08-30-00.pcap"), rotation_key("ring_00003_20261201083000.pcapng")
    ('cap-#-#-#_#-#-#.pcap', 'ring_#_#.pcapng')
    >>> rotation_key("host1.pcap")
    'host1.pcap'
    """
    stem = name
    runs = list(_RUN.finditer(name))
    if runs and runs[-1].end() == len(name) and runs[-1].start() > 0:
        stem = name[: runs[-1].start()]
    dated = any(_datelike(m.group()) for m in _RUN.finditer(stem)) or any(
        _is_date(int(m[1]), int(m[2]), int(m[3])) for m in _DASHED_DATE.finditer(stem)
    )
    return _RUN.sub("#", stem) if dated else stem


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureFile:
    """What a quick look at one input file found.

    Fields:
        path: as given (a local path or an fsspec URL).
        size: bytes on disk.
        shape: format, link types, snap length and pcapng identity, as one string; files of one
            rotation have the same shape.
        first_ts_ns: the first TCP or UDP packet's time, None when the file has none.
        last_ts_ns: the time of the file's last block (pcapng), None when not known.
        interface: the pcapng interface names, '' when none is named (or for pcap).
    """

    path: str
    size: int
    shape: str
    first_ts_ns: int | None
    last_ts_ns: int | None = None
    interface: str = ""

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.path.replace("\\", "/"))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.replace("\\", "/"))


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureSet:
    """Files of one capture, in the order they are analysed.

    Fields:
        set_id: 16 hex digits from the files' names, sizes and first packet times (the same
            files give the same id wherever they are stored).
        name: the first file's name.
        files: the files, oldest first.
        first_ts_ns: the earliest first packet, None when no file has a TCP or UDP packet.
    """

    set_id: str
    name: str
    files: tuple[CaptureFile, ...]
    first_ts_ns: int | None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in _RUN.split(name) + _RUN.findall(name))


def _ordered(files: Iterable[CaptureFile]) -> tuple[CaptureFile, ...]:
    def key(f: CaptureFile) -> tuple[object, ...]:
        if f.first_ts_ns is None:
            return (1, 0, _natural(f.name))
        return (0, f.first_ts_ns, _natural(f.name))

    return tuple(sorted(files, key=key))


def _set_id(files: Sequence[CaptureFile]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(f"{f.name}\0{f.size}\0{f.first_ts_ns}\n".encode())
    return h.hexdigest()


def _follow_one_another(files: Sequence[CaptureFile]) -> bool:
    ordered = sorted(files, key=lambda f: f.first_ts_ns or 0)
    return all(
        a.last_ts_ns is not None and b.first_ts_ns is not None and a.last_ts_ns <= b.first_ts_ns
        for a, b in itertools.pairwise(ordered)
    )


def _by_interface(groups: list[list[CaptureFile]]) -> list[list[CaptureFile]]:
    """Rule 4: single pcapng files of one named interface that follow one another become one group."""
    alone: dict[tuple[str, str], list[CaptureFile]] = {}
    out = []
    for g in groups:
        f = g[0]
        if len(g) == 1 and f.interface and f.first_ts_ns is not None and f.last_ts_ns is not None:
            alone.setdefault((f.folder, f.shape), []).append(f)
        else:
            out.append(g)
    for members in alone.values():
        out += [members] if _follow_one_another(members) else [[f] for f in members]
    return out


def group_sets(files: Iterable[CaptureFile]) -> list[CaptureSet]:
    """Group files into capture sets (rules 3 and 4), each in analysis order (rule 5); sets by first packet."""
    groups: dict[tuple[str, str, str], list[CaptureFile]] = {}
    for f in files:
        groups.setdefault((f.folder, rotation_key(f.name), f.shape), []).append(f)
    sets = []
    for members in _by_interface(list(groups.values())):
        ordered = _ordered(members)
        starts = [f.first_ts_ns for f in ordered if f.first_ts_ns is not None]
        sets.append(
            CaptureSet(
                set_id=_set_id(ordered), name=ordered[0].name, files=ordered, first_ts_ns=min(starts, default=None)
            )
        )
    return sorted(sets, key=lambda s: (s.first_ts_ns is None, s.first_ts_ns or 0, s.name, s.set_id))


_LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class Labels:
    """``key=value`` labels attached to every record of a run (host, device, app version, network).

    ``text`` is the canonical form, keys sorted: ``app=4.2,host=edge-1`` ('' without labels).
    """

    items: tuple[tuple[str, str], ...] = ()

    @property
    def text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.items)

    def as_dict(self) -> Mapping[str, str]:
        return dict(self.items)


def parse_labels(specs: Sequence[str]) -> Labels:
    """``--label key=value`` options to :class:`Labels`.

    Raises:
        UsageError: not ``key=value``, a key given twice, or a comma in a value.
    """
    seen: dict[str, str] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or not _LABEL_KEY.fullmatch(key) or not value:
            raise UsageError(
                f"--label {spec!r}: write key=value, the key a name (letters, digits, _ . -), the value not empty"
            )
        if key in seen:
            raise UsageError(f"--label {key} is given twice: give each key once")
        if "," in value:
            raise UsageError(f"--label {spec!r}: a value cannot hold a comma")
        seen[key] = value
    return Labels(tuple(sorted(seen.items())))
