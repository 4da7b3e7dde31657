"""The model behind ``halfclose watch``: TCP sockets grouped by uid and process, CLOSE_WAIT ages.

Pure parts: :class:`AgeTracker` (first time each CLOSE_WAIT socket, by cookie, was seen; seeded
from ``tcpi_last_ack_recv``, the time since the last segment from the peer, which for an idle
half-closed socket is the server's FIN) and :func:`build_snapshot`. I/O parts, kept small:
:class:`ProcIndex` (socket inode -> pid and command, from ``/proc/*/fd``, rescanned only when an
unknown inode shows up and at most once per interval) and :func:`read_reapers` (the counters
reapers publish under :func:`halfclose.reap.agent.state_dir`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halfclose.sockdiag.wire import InetDiagMsg, TcpState

__all__ = ["AgeTracker", "ProcIndex", "Row", "Snapshot", "build_snapshot", "pid_alive", "read_reapers"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """The process holding a socket (pid None when no process holds it: orphaned or unknown)."""

    pid: int | None
    comm: str


UNKNOWN = Owner(pid=None, comm="-")


@dataclass(slots=True, kw_only=True)
class ProcIndex:
    """Socket inode -> owning process, from ``/proc/<pid>/fd`` links (``socket:[inode]``)."""

    proc: Path = Path("/proc")
    min_rescan: float = 2.0
    _map: dict[int, Owner] = field(default_factory=dict)
    _last_scan: float = float("-inf")
    scans: int = 0

    def scan(self) -> None:
        """Rebuild the map from /proc (processes that vanish meanwhile are skipped)."""
        found: dict[int, Owner] = {}
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            fd_dir = f"{entry.path}/fd"
            try:
                names = os.listdir(fd_dir)
            except OSError:
                continue
            owner: Owner | None = None
            for name in names:
                try:
                    target = os.readlink(f"{fd_dir}/{name}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    if owner is None:
                        try:
                            comm = Path(f"{entry.path}/comm").read_text().strip()
                        except OSError:
                            comm = "?"
                        owner = Owner(pid=pid, comm=comm)
                    found.setdefault(int(target[8:-1]), owner)
        self._map = found
        self._last_scan = time.monotonic()
        self.scans += 1

    def owners(self, inodes: Iterable[int]) -> dict[int, Owner]:
        """Owner of each inode (inode 0, an orphan, maps to the unknown owner)."""
        wanted = [i for i in inodes if i]
        if any(i not in self._map for i in wanted) and time.monotonic() - self._last_scan >= self.min_rescan:
            self.scan()
        return {i: self._map.get(i, UNKNOWN) for i in wanted}


@dataclass(slots=True, kw_only=True)
class AgeTracker:
    """When each CLOSE_WAIT socket (by cookie) entered CLOSE_WAIT, as far as we can tell."""

    _first: dict[int, float] = field(default_factory=dict)

    def update(self, close_wait: Iterable[InetDiagMsg], now: float) -> dict[int, float]:
        """Record the sockets now in CLOSE_WAIT, forget the others; return cookie -> age in s."""
        seen: dict[int, float] = {}
        for msg in close_wait:
            first = self._first.get(msg.id.cookie)
            if first is None:
                since = None
                if msg.info is not None and msg.info.tcpi_last_ack_recv is not None:
                    since = msg.info.tcpi_last_ack_recv / 1000.0
                first = now - (since or 0.0)
            seen[msg.id.cookie] = first
        self._first = seen
        return {cookie: now - first for cookie, first in seen.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """Sockets of one uid held by one process."""

    uid: int
    pid: int | None
    comm: str
    total: int
    established: int
    close_wait: int
    #: CLOSE_WAIT sockets with unread data (``idiag_rqueue > 1``: more than the FIN).
    close_wait_unread: int
    #: Age in seconds of the oldest CLOSE_WAIT socket (None: none).
    oldest_close_wait: float | None
    other: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One refresh: rows sorted by CLOSE_WAIT count, totals, and the reapers' counters."""

    ts: float
    netns: str | None
    sockets: int
    close_wait: int
    rows: tuple[Row, ...]
    reapers: tuple[dict[str, object], ...]

    def to_json(self) -> str:
        """The snapshot as one JSON document."""
        return json.dumps(asdict(self), indent=None)


def build_snapshot(
    *,
    sockets: list[InetDiagMsg],
    ages: dict[int, float],
    owners: dict[int, Owner],
    reapers: Iterable[dict[str, object]],
    ts: float,
    netns: str | None,
) -> Snapshot:
    """Group *sockets* by (uid, process); *ages* maps CLOSE_WAIT cookies to their age."""
    groups: dict[tuple[int, int | None, str], list[InetDiagMsg]] = {}
    for msg in sockets:
        owner = owners.get(msg.idiag_inode, UNKNOWN)
        groups.setdefault((msg.idiag_uid, owner.pid, owner.comm), []).append(msg)
    rows = []
    for (uid, pid, comm), members in groups.items():
        cw = [m for m in members if m.idiag_state == TcpState.CLOSE_WAIT]
        est = sum(1 for m in members if m.idiag_state == TcpState.ESTABLISHED)
        cw_ages = [ages[m.id.cookie] for m in cw if m.id.cookie in ages]
        rows.append(Row(
            uid=uid, pid=pid, comm=comm, total=len(members), established=est, close_wait=len(cw),
            close_wait_unread=sum(1 for m in cw if m.idiag_rqueue > 1),
            oldest_close_wait=max(cw_ages) if cw_ages else None,
            other=len(members) - est - len(cw),
        ))
    rows.sort(key=lambda r: (-r.close_wait, -r.total, r.uid, r.pid or 0))
    return Snapshot(
        ts=ts, netns=netns, sockets=len(sockets),
        close_wait=sum(r.close_wait for r in rows), rows=tuple(rows), reapers=tuple(reapers),
    )


def pid_alive(pid: int) -> bool:
    """Whether a process *pid* exists (one of another user counts: signal 0 is only refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_reapers(directory: Path, *, netns_inode: int | None = None) -> list[dict[str, object]]:
    """State files of live reapers (of one network namespace when *netns_inode* is given)."""
    out = []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(body, dict):
            continue
        pid = body.get("pid")
        if not isinstance(pid, int) or not pid_alive(pid):
            continue
        if netns_inode is not None and body.get("netns_inode") != netns_inode:
            continue
        out.append(body)
    return out
