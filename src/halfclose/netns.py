"""The one namespace helper: network namespaces owned by a live process, and their clean-up.

Every namespace halfclose creates is named ``hc-<run id>-<role>`` and recorded, before it is
created, in a claim file under :data:`STATE_DIR` together with the owning process (pid and start
time). :func:`clean_stale` removes whatever a dead owner left behind: processes inside the
namespaces, the namespaces (and with them their veths), and the files the claim lists. Claims of
live owners are never touched, so two labs, or a lab and a test, can run side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from halfclose.proc import require_root, run

__all__ = [
    "PREFIX",
    "STATE_DIR",
    "Claim",
    "clean_stale",
    "kill_netns_processes",
    "list_netns",
    "new_run_id",
]

PREFIX = "hc-"
STATE_DIR = Path(os.environ.get("HALFCLOSE_STATE_DIR", "/run/halfclose"))


def new_run_id() -> str:
    """A short random id, unique enough for concurrent runs on one host (6 hex digits)."""
    return secrets.token_hex(3)


def list_netns() -> list[str]:
    """Names of all network namespaces on the host (``ip netns list``)."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts from after the parenthesised command name.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int) -> bool:
    return _start_time(pid) == start


def kill_netns_processes(name: str, *, grace: float = 1.0) -> None:
    """Terminate every process inside namespace *name* (SIGTERM, then SIGKILL after *grace*)."""
    def pids() -> list[int]:
        out = run(["ip", "netns", "pids", name], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        todo = pids()
        if not todo:
            return
        for pid in todo:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pids():
            time.sleep(0.02)


def _delete_netns(name: str) -> None:
    kill_netns_processes(name)
    run(["ip", "netns", "delete", name], check=False)
    shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


@dataclass(kw_only=True)
class Claim:
    """Namespaces, files and processes that one live process owns, recorded on disk.

    Use as a context manager: leaving it (normally or by an exception) removes everything the
    claim lists. Record a resource with :meth:`add_netns` / :meth:`add_path` *before* creating it,
    so that a crash in between still leaves a record for :func:`clean_stale`.
    """

    run_id: str = field(default_factory=new_run_id)
    netns: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)

    @property
    def file(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    def netns_name(self, role: str) -> str:
        return f"{PREFIX}{self.run_id}-{role}"

    def _save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        start = _start_time(self.pid)
        body = {"pid": self.pid, "start": start, "netns": self.netns, "paths": self.paths}
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.file)

    def add_netns(self, role: str) -> str:
        """Record and create namespace ``hc-<run id>-<role>``; return its name."""
        name = self.netns_name(role)
        self.netns.append(name)
        self._save()
        run(["ip", "netns", "add", name])
        return name

    def add_path(self, path: str | Path) -> Path:
        """Record *path* (a file or folder) to be removed with the claim."""
        self.paths.append(str(path))
        self._save()
        return Path(path)

    def release(self) -> None:
        """Remove everything the claim lists, then the claim itself. Safe to call twice."""
        for name in reversed(self.netns):
            _delete_netns(name)
        for path in self.paths:
            p = Path(path)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        self.file.unlink(missing_ok=True)
        self.netns.clear()
        self.paths.clear()

    def __enter__(self) -> Claim:
        require_root("creating network namespaces")
        self._save()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_claims() -> Iterator[tuple[Path, dict[str, object]]]:
    if not STATE_DIR.is_dir():
        return
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            body = {}
        yield path, body if isinstance(body, dict) else {}


def _strings(value: object) -> list[str]:
    return [str(x) for x in value] if isinstance(value, list) else []


def clean_stale() -> list[str]:
    """Remove what dead owners left behind; return a line for each thing removed.

    A namespace with our prefix that no claim of a live process lists is removed too (a run
    killed between creating it and recording it cannot happen, since recording comes first,
    but an old state dir may have been wiped by a reboot while namespaces persist).
    """
    require_root("cleaning up lab namespaces")
    removed: list[str] = []
    live_netns: set[str] = set()
    for path, body in _read_claims():
        netns = _strings(body.get("netns"))
        pid, start = body.get("pid"), body.get("start")
        if isinstance(pid, int) and isinstance(start, int) and _alive(pid, start):
            live_netns.update(netns)
            continue
        for name in netns:
            removed.append(f"namespace {name}")
            _delete_netns(name)
        for p in _strings(body.get("paths")):
            pp = Path(p)
            if pp.exists():
                removed.append(f"path {p}")
                if pp.is_dir():
                    shutil.rmtree(pp, ignore_errors=True)
                else:
                    pp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    for name in list_netns():
        if name.startswith(PREFIX) and name not in live_netns:
            removed.append(f"namespace {name}")
            _delete_netns(name)
    return removed
