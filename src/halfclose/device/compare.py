"""Pure parts of the device loop: following a pcap stream record by record, and the before/after
comparison of a fix from the analysis of what was captured.

:class:`PcapTail` is fed the bytes of a classic pcap stream (what ``tcpdump -w -`` writes) as
they arrive and knows where the last complete record ends and its timestamp, so a live analysis
can read a prefix that holds whole packets only, and the moment of a fix can be expressed in the
device's own clock (the capture's timestamps).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from halfclose.analysis import Analysis, FindingKind
from halfclose.errors import InputError

__all__ = ["Comparison", "PcapTail", "compare"]

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}


@dataclass(slots=True)
class PcapTail:
    """Where the complete records of a growing pcap stream end (``complete`` bytes), how many
    there are and the timestamp (ns) of the last one."""

    complete: int = 0
    packets: int = 0
    last_ts_ns: int | None = None
    _buf: bytearray = field(default_factory=bytearray)
    _seen: int = 0
    _order: str = ""
    _unit: int = 0

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream.

        Raises:
            InputError: the stream does not start like a pcap file.
        """
        self._buf += data
        self._seen += len(data)
        if not self._order:
            if len(self._buf) < 24:
                return
            magic = bytes(self._buf[:4])
            if magic not in _MAGICS:
                raise InputError("the device's capture is not a pcap stream (is tcpdump writing with -w -?)")
            self._order, self._unit = _MAGICS[magic]
            del self._buf[:24]
            self.complete = 24
        header = struct.Struct(self._order + "IIII")
        while len(self._buf) >= 16:
            sec, frac, incl, _orig = header.unpack_from(self._buf)
            if len(self._buf) < 16 + incl:
                break
            del self._buf[: 16 + incl]
            self.complete += 16 + incl
            self.packets += 1
            self.last_ts_ns = sec * 1_000_000_000 + frac * self._unit


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """Findings of the capture, split by whether their connection was opened before the fix.

    A connection open when the fix was applied counts as before: the rules only tag connections
    as they send, so one that stays idle across the fix can still be reused stale once.
    """

    fix_ts_ns: int | None
    before: dict[str, int]
    after: dict[str, int]
    connections_before: int
    connections_after: int


def compare(analysis: Analysis, fix_ts_ns: int | None) -> Comparison:
    """Count findings by kind on connections opened before / after *fix_ts_ns* (None: no fix,
    everything is before)."""
    table = analysis.connections
    starts = {uid.decode(): int(ts) for uid, ts in zip(table.uids, table.cols["ts_ns"], strict=True)}
    before = {kind.value: 0 for kind in FindingKind}
    after = dict(before)
    for finding in analysis.findings:
        start = starts.get(finding.uids[0]) if finding.uids else None
        side = after if fix_ts_ns is not None and start is not None and start >= fix_ts_ns else before
        side[finding.kind.value] += 1
    n_after = sum(1 for ts in starts.values() if fix_ts_ns is not None and ts >= fix_ts_ns)
    return Comparison(fix_ts_ns=fix_ts_ns, before=before, after=after,
                      connections_before=len(starts) - n_after, connections_after=n_after)
