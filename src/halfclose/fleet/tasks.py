"""One task per capture set: read its files, analyse them as one capture, write its part files.

:func:`run_set` is what a local worker process or a Dask worker runs; it takes and returns plain
picklable records, reads its inputs itself (local paths, or fsspec URLs copied to a local
temporary file first) and writes its part of the dataset into the run's staging folder.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from halfclose.errors import HalfcloseError
from halfclose.fleet._engine import AnalysisKnobs, analyze_files
from halfclose.fleet.dataset import Dataset, PartFile
from halfclose.fleet.sets import Labels
from halfclose.fleet.tables import SetContext, set_date, set_tables

__all__ = ["SetOutcome", "SetTask", "is_url", "local_copies", "run_set"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTask:
    """Everything a worker needs for one capture set."""

    run_id: str
    set_id: str
    set_name: str
    files: tuple[str, ...]
    size: int
    first_ts_ns: int | None
    labels: Labels
    knobs: AnalysisKnobs
    dataset: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetOutcome:
    """What a task did.

    Fields:
        set_id, set_name, files: the set.
        parts: the part files written (none when the set could not be read).
        issues: capture issues, one line each; bad_input: one stopped reading a file.
        error: the one-line reason the set could not be analysed, else None.
        headline: the analysis's verdict; connections, packets: its counts.
        seconds: the task's wall time; peak_rss_kb: the worker process's peak memory so far;
        worker: host:pid of the process that ran it.
    """

    set_id: str
    set_name: str
    files: tuple[str, ...]
    parts: tuple[PartFile, ...] = ()
    issues: tuple[str, ...] = ()
    bad_input: bool = False
    error: str | None = None
    headline: str = ""
    connections: int = 0
    packets: int = 0
    seconds: float = 0.0
    peak_rss_kb: int = 0
    worker: str = ""


def is_url(path: str) -> bool:
    """Whether *path* names a non-local fsspec location (``s3://...``; ``file://`` is local)."""
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


@contextlib.contextmanager
def local_copies(paths: Sequence[str], *, head: int | None = None) -> Iterator[list[str]]:
    """Local paths for *paths*: local ones as they are, URLs copied to a temporary folder
    (only their first *head* bytes when given)."""
    if not any(is_url(p) for p in paths):
        yield [_local(p) for p in paths]
        return
    import fsspec

    with tempfile.TemporaryDirectory(prefix="halfclose-inputs-") as tmp:
        out = []
        for i, p in enumerate(paths):
            if not is_url(p):
                out.append(_local(p))
                continue
            dest = os.path.join(tmp, f"{i:05d}-{p.rstrip('/').rsplit('/', 1)[-1]}")
            with fsspec.open(p, "rb") as src, open(dest, "wb") as dst:
                if head is None:
                    shutil.copyfileobj(src, dst, 1 << 20)
                else:
                    dst.write(src.read(head))
            out.append(dest)
        yield out


def _worker() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def run_set(task: SetTask) -> SetOutcome:
    """Analyse one capture set and write its part files into the run's staging folder."""
    start = time.perf_counter()
    try:
        with local_copies(task.files) as paths:
            analysis = analyze_files(paths, task.knobs)
        ctx = SetContext(
            run_id=task.run_id, set_id=task.set_id, set_name=task.set_name, files=task.files, size=task.size,
            labels=task.labels, date=set_date(task.first_ts_ns or analysis.first_ts_ns),
        )  # fmt: skip
        dataset = Dataset(task.dataset)
        staging = dataset.staging(task.run_id)
        parts = tuple(
            dataset.write_part(staging, name, dataset.part_path(name, ctx.labels.text, ctx.date, ctx.set_id), table)
            for name, table in set_tables(ctx, analysis).items()
        )
    except HalfcloseError as exc:
        return SetOutcome(
            set_id=task.set_id, set_name=task.set_name, files=task.files, error=str(exc), bad_input=True,
            seconds=time.perf_counter() - start, peak_rss_kb=_peak_kb(), worker=_worker(),
        )  # fmt: skip
    return SetOutcome(
        set_id=task.set_id,
        set_name=task.set_name,
        files=task.files,
        parts=parts,
        issues=analysis.capture_issues,
        bad_input=analysis.errors,
        headline=str(analysis.summary.get("headline", "")),
        connections=int(analysis.summary.get("tcp_connections", 0)),
        packets=int(analysis.summary.get("packets", 0)),
        seconds=time.perf_counter() - start,
        peak_rss_kb=_peak_kb(),
        worker=_worker(),
    )


def _peak_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
