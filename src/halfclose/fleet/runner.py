"""Finding the inputs, planning capture sets, and running their tasks here, in processes or on Dask.

The I/O edge of the fleet layer: file system listings and probes (:func:`plan`), worker
processes (:func:`run_tasks`), and the commit of a dataset run (:func:`write_run`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from halfclose.errors import InputError, UsageError
from halfclose.fleet._engine import AnalysisKnobs, probe
from halfclose.fleet.dataset import Dataset, new_run_id
from halfclose.fleet.sets import CaptureFile, CaptureSet, Labels, group_sets
from halfclose.fleet.tasks import SetOutcome, SetTask, is_url, local_copies, run_set

__all__ = ["Plan", "RunResult", "check_jobs", "expand_inputs", "plan", "run_tasks", "write_run"]

_GLOB = frozenset("*?[")
#: Bytes of a remote file copied to look at its header and first packets.
_PROBE_HEAD = 1 << 20


def _expand_url(spec: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(spec)
    if any(c in path for c in _GLOB):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith(".")]
    else:
        found = [path] if fs.exists(path) else []
    return sorted(fs.unstrip_protocol(p) for p in found)


def _expand_local(spec: str) -> list[str]:
    if any(c in spec for c in _GLOB):
        return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    if os.path.isdir(spec):
        out = []
        for folder, dirs, names in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
        return out
    return [spec]


def expand_inputs(specs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files named by *specs* (files, folders walked recursively, globs; local or fsspec URLs),
    each once, and one problem line per spec that names nothing."""
    files: list[str] = []
    problems: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        found = _expand_url(spec) if is_url(spec) else _expand_local(spec)
        if not found:
            problems.append(f"{spec}: no file matches: give capture files, folders or globs that exist")
        for f in found:
            if f not in seen:
                seen.add(f)
                files.append(f)
    return files, problems


def _probe_any(path: str) -> CaptureFile:
    if not is_url(path):
        return probe(path[len("file://") :] if path.startswith("file://") else path)
    import dataclasses

    import fsspec

    with local_copies([path], head=_PROBE_HEAD) as (local,):
        found = probe(local)
    fs, raw = fsspec.core.url_to_fs(path)
    return dataclasses.replace(found, path=path, size=int(fs.size(raw)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The capture sets found, and one line per input that could not be used."""

    sets: tuple[CaptureSet, ...]
    problems: tuple[str, ...]


def plan(specs: Sequence[str]) -> Plan:
    """Expand *specs*, look at every file, and group them into capture sets."""
    files, problems = expand_inputs(specs)
    probed = []
    for f in files:
        try:
            probed.append(_probe_any(f))
        except InputError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"{f}: cannot read: {exc}")
    return Plan(sets=tuple(group_sets(probed)), problems=tuple(problems))


def run_tasks(
    tasks: Sequence[SetTask],
    *,
    jobs: int = 1,
    dask: str | None = None,
    on_done: Callable[[SetOutcome], None] | None = None,
) -> list[SetOutcome]:
    """Run the tasks here (``jobs == 1``), in *jobs* local processes, or on the Dask cluster at
    *dask*; outcomes in task order. *on_done* gets each outcome as it arrives."""
    done = on_done or (lambda _o: None)
    if dask is not None:
        from halfclose.fleet._dask import run_on_dask

        return run_on_dask(dask, tasks, done)
    if jobs <= 1 or len(tasks) <= 1:
        out = []
        for t in tasks:
            o = run_set(t)
            done(o)
            out.append(o)
        return out
    import multiprocessing

    by_id: dict[str, SetOutcome] = {}
    ctx = multiprocessing.get_context("spawn")  # no state inherited from a threaded parent
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
        futures = [pool.submit(run_set, t) for t in tasks]
        for fut in as_completed(futures):
            o = fut.result()
            by_id[o.set_id] = o
            done(o)
    return [by_id[t.set_id] for t in tasks]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """A finished run: its id, where it was committed (None when nothing was written), outcomes."""

    run_id: str
    committed: str | None
    outcomes: tuple[SetOutcome, ...]


def write_run(
    sets: Sequence[CaptureSet],
    dataset: str,
    *,
    labels: Labels,
    knobs: AnalysisKnobs,
    jobs: int = 1,
    dask: str | None = None,
    on_done: Callable[[SetOutcome], None] | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Analyse every set into one new run of *dataset*, committed only when every task returned.

    Sets that could not be read are left out (their outcome says why); if anything else fails,
    or the run is interrupted, the staging folder is removed and the dataset is unchanged.
    """
    if not sets:
        raise UsageError("no capture to analyse")
    dataset = _absolute(dataset)  # workers may run in other folders
    ds = Dataset(dataset)
    rid = run_id or new_run_id()
    ds.begin(rid)
    try:
        tasks = [
            SetTask(
                run_id=rid,
                set_id=s.set_id,
                set_name=s.name,
                files=tuple(_absolute(p) for p in s.paths),
                size=s.size,
                first_ts_ns=s.first_ts_ns,
                labels=labels,
                knobs=knobs,
                dataset=dataset,
            )
            for s in sets
        ]
        outcomes = run_tasks(tasks, jobs=jobs, dask=dask, on_done=on_done)
        parts = [p for o in outcomes for p in o.parts]
        if not parts:
            ds.abort(rid)
            return RunResult(run_id=rid, committed=None, outcomes=tuple(outcomes))
        info: dict[str, Any] = {
            "labels": dict(labels.items),
            "sets": [_set_info(o) for o in outcomes if o.parts],
        }
        where = ds.commit(rid, parts, info)
    except BaseException:
        ds.abort(rid)
        raise
    return RunResult(run_id=rid, committed=where, outcomes=tuple(outcomes))


def _absolute(path: str) -> str:
    return path if is_url(path) or path.startswith("file://") else os.path.abspath(path)


def _set_info(o: SetOutcome) -> dict[str, Any]:
    """A committed set in the run's manifest: its files, and where and how it ran."""
    return {
        "set_id": o.set_id,
        "files": list(o.files),
        "worker": o.worker,
        "seconds": round(o.seconds, 3),
        "peak_rss_kb": o.peak_rss_kb,
    }


def check_jobs(jobs: int, dask: str | None) -> None:
    """Reject impossible parallelism options."""
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: give at least 1")
    if dask is not None and jobs != 1:
        raise UsageError("--jobs and --dask exclude each other: the cluster decides how many run at once")

