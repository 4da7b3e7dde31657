"""The dataset on disk (or any fsspec URL): runs appended atomically, read by the files they list.

Layout::

    DIR/runs/RUN/_run.json                                        the run's manifest
    DIR/runs/RUN/TABLE/label=LABEL/date=YYYY-MM-DD/part-SET.parquet
    DIR/_staging/RUN/...                                          a run being written

A run writes everything under ``_staging/RUN`` (each capture set's task its own part files),
then commits: on a local file system the manifest is written into the staging folder and the
folder renamed to ``runs/RUN`` in one step; elsewhere (object stores, where a rename is a copy)
the files are moved and the manifest written last. Readers take only runs with a manifest and
only the files it lists, so a run killed at any moment leaves the dataset as it was, and two
runs at once never touch the same files. A later run removes staging folders whose writer on
this host is gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from halfclose.errors import EnvironmentProblem, InputError

__all__ = ["MANIFEST", "Dataset", "PartFile", "new_run_id", "write_text_atomic"]

MANIFEST = "_run.json"
_OWNER = "_owner.json"
_FORMAT = "halfclose.dataset/1"


def new_run_id(now: dt.datetime | None = None) -> str:
    """``20261201T083000Z-1a2b3c4d``: sortable by start time, unique across hosts."""
    t = now or dt.datetime.now(dt.UTC)
    return f"{t:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PartFile:
    """One Parquet file a task wrote: its table, path relative to the run folder, and rows."""

    table: str
    path: str
    rows: int


def _filesystem(root: str) -> tuple[Any, str, bool]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return fs, path.rstrip("/"), local


class Dataset:
    """A dataset folder: local path or fsspec URL (``s3://bucket/fleet``, ``file:///data/fleet``)."""

    def __init__(self, root: str) -> None:
        try:
            self.fs, self.root, self.local = _filesystem(root)
        except (ImportError, ValueError) as exc:
            raise EnvironmentProblem(f"{root}: cannot open this dataset location: {exc}") from exc
        self.url = root

    # -- writing ------------------------------------------------------------------------------
    def staging(self, run_id: str) -> str:
        return f"{self.root}/_staging/{run_id}"

    def begin(self, run_id: str) -> str:
        """Create the run's staging folder (recording its owner) and return its path."""
        where = self.staging(run_id)
        try:
            self.fs.makedirs(where, exist_ok=False)
            owner = {"host": socket.gethostname(), "pid": os.getpid()}
            with self.fs.open(f"{where}/{_OWNER}", "w") as fh:
                fh.write(json.dumps(owner))
        except OSError as exc:
            raise EnvironmentProblem(f"cannot write the dataset {self.url}: {exc}: choose a writable place") from exc
        self._clean_dead_staging(keep=run_id)
        return where

    @staticmethod
    def part_path(table: str, label: str, date: dt.date, set_id: str) -> str:
        """The path of one capture set's part of a table, relative to the run folder."""
        return f"{table}/label={quote(label or '-', safe='')}/date={date.isoformat()}/part-{set_id}.parquet"

    def write_part(self, staging: str, table: str, rel: str, data: Any) -> PartFile:
        """Write one Arrow table as Parquet under the staging folder."""
        import pyarrow.parquet as pq

        where = f"{staging}/{rel}"
        self.fs.makedirs(where.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(where, "wb") as fh:
            pq.write_table(data, fh, compression="zstd")
        return PartFile(table=table, path=rel, rows=data.num_rows)

    def commit(self, run_id: str, parts: Sequence[PartFile], info: Mapping[str, Any]) -> str:
        """Make the run visible: one rename on a local file system, manifest last elsewhere."""
        staging = self.staging(run_id)
        final = f"{self.root}/runs/{run_id}"
        manifest = {
            "format": _FORMAT,
            "run_id": run_id,
            **info,
            "files": [{"table": p.table, "path": p.path, "rows": p.rows} for p in sorted(parts, key=_part_key)],
        }
        body = json.dumps(manifest, indent=1, sort_keys=True)
        self.fs.rm(f"{staging}/{_OWNER}")
        self.fs.makedirs(f"{self.root}/runs", exist_ok=True)
        if self.local:
            with self.fs.open(f"{staging}/{MANIFEST}", "w") as fh:
                fh.write(body)
            os.rename(staging, final)
        else:
            self.fs.mv(staging, final, recursive=True)
            with self.fs.open(f"{final}/{MANIFEST}", "w") as fh:
                fh.write(body)
        return final

    def abort(self, run_id: str) -> None:
        """Remove a run's staging folder (nothing of it was visible)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.staging(run_id), recursive=True)

    def _clean_dead_staging(self, *, keep: str) -> None:
        host = socket.gethostname()
        for where in self.fs.glob(f"{self.root}/_staging/*"):
            name = where.rstrip("/").rsplit("/", 1)[-1]
            if name == keep:
                continue
            try:
                with self.fs.open(f"{where}/{_OWNER}", "r") as fh:
                    owner = json.loads(fh.read())
            except (OSError, ValueError):
                continue
            if owner.get("host") == host and not _alive(int(owner.get("pid", 0))):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(where, recursive=True)

    # -- reading ------------------------------------------------------------------------------
    def manifests(self) -> list[dict[str, Any]]:
        """The committed runs' manifests, oldest first."""
        found = []
        for where in sorted(self.fs.glob(f"{self.root}/runs/*/{MANIFEST}")):
            try:
                with self.fs.open(where, "r") as fh:
                    found.append(json.loads(fh.read()))
            except (OSError, ValueError) as exc:
                raise InputError(f"{where}: unreadable run manifest ({exc}): remove that run's folder") from exc
        return found

    def files(self, table: str) -> list[str]:
        """Every committed file of *table* (full paths, run by run)."""
        out = []
        for m in self.manifests():
            run = f"{self.root}/runs/{m['run_id']}"
            out += [f"{run}/{f['path']}" for f in m["files"] if f["table"] == table]
        return out

    def exists(self) -> bool:
        return bool(self.fs.exists(f"{self.root}/runs"))


def _part_key(p: PartFile) -> tuple[str, str]:
    return (p.table, p.path)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True



def write_text_atomic(path: str, text: str) -> None:
    """Write *text* to the local file *path* through a temporary file renamed into place."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".halfclose-", dir=folder)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write {path}: {exc.strerror or exc}: choose a writable path") from exc
