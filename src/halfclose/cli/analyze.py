"""``halfclose analyze``: find half-close waste in capture files."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from halfclose.errors import ExitStatus, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from halfclose.analysis.engine import Analysis
    from halfclose.capture.columns import PacketBatch
    from halfclose.fleet.sets import CaptureSet, Labels
    from halfclose.fleet.tasks import SetOutcome

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halfclose analyze``."""
    parser.add_argument(
        "captures", nargs="+", metavar="CAPTURE",
        help="pcap/pcapng files, folders or globs ('-' for stdin); files of one rotating capture are read as one",
    )
    parser.add_argument("--json", metavar="FILE", help="write the full result as JSON ('-' for stdout)")
    parser.add_argument("--conns", metavar="FILE", help="write connection records (.csv or .parquet)")
    parser.add_argument("--profile", metavar="FILE", help="write server name -> idle timeout (s) as JSON")
    parser.add_argument(
        "--replacement-window", type=float, default=5.0, metavar="S",
        help="a retry connection must start within S seconds of the stale write (default 5)",
    )
    parser.add_argument(
        "--dns-window", type=float, default=60.0, metavar="S",
        help="a DNS query is redundant when the previous answer expired less than S s before (default 60)",
    )
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML report (timeline, tables)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no terminal summary")
    fleet = parser.add_argument_group("capture sets and datasets (see docs/fleet.md)")
    fleet.add_argument("--dataset", metavar="DIR", help="append the records to the Parquet dataset DIR (or URL)")
    fleet.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE",
        help="attach KEY=VALUE (host, device, app version, network) to every record of the run; repeatable",
    )
    fleet.add_argument("--jobs", type=int, default=1, metavar="N", help="analyse N capture sets at once (processes)")
    fleet.add_argument("--dask", metavar="ADDRESS", help="run one task per capture set on this Dask scheduler")


def run(args: argparse.Namespace) -> int:
    """Analyse, print the summary, write the requested files; 2 when part of the input was unreadable."""
    if args.replacement_window <= 0 or args.dns_window <= 0:
        raise UsageError("--replacement-window and --dns-window must be positive numbers of seconds")
    if args.html and not os.path.isdir(os.path.dirname(os.path.abspath(args.html))):
        raise UsageError(f"--html {args.html}: its folder does not exist")
    if args.conns and not args.conns.lower().endswith((".csv", ".parquet", ".pq")):
        raise UsageError(f"--conns {args.conns}: name the file .csv or .parquet")
    outputs = [o for o in (args.json, args.profile) if o == "-"]
    if len(outputs) > 1:
        raise UsageError("only one of --json and --profile can go to standard output ('-')")
    fleet = args.dataset is not None or args.dask is not None or args.jobs != 1 or bool(args.label)
    if not fleet and (len(args.captures) == 1 and os.path.isfile(args.captures[0])):
        return _analyze_one(args, args.captures)
    streams = [c for c in args.captures if _is_stream(c)]
    if streams:
        # A stream can be read once only: it is analysed as it is, never probed for capture sets.
        if fleet:
            raise UsageError(
                f"{streams[0]} is a stream (stdin, a FIFO or a process substitution): capture sets and "
                "dataset runs read files only; give files"
            )
        return _analyze_one(args, args.captures)
    return _sets(args)


def _is_stream(capture: str) -> bool:
    """Standard input, or a path that exists and is neither a regular file nor a folder (a FIFO,
    ``/dev/fd/N`` of a process substitution, a character device)."""
    if capture == "-":
        return True
    try:
        mode = os.stat(capture).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _sets(args: argparse.Namespace) -> int:
    """Files, folders and globs: capture sets, each analysed as one capture or written to a dataset."""
    from halfclose.fleet.runner import check_jobs, plan
    from halfclose.fleet.sets import parse_labels
    from halfclose.report.fleet import set_heading

    labels = parse_labels(args.label)
    check_jobs(args.jobs, args.dask)
    if args.dataset is None and (args.jobs != 1 or args.dask or args.label):
        raise UsageError("--jobs, --dask and --label go with --dataset DIR: name the dataset to write")
    found = plan(args.captures)
    for line in found.problems:
        print(f"halfclose analyze: {line}", file=sys.stderr)
    status = ExitStatus.BAD_INPUT if found.problems else ExitStatus.OK
    if not found.sets:
        return int(ExitStatus.BAD_INPUT)
    if args.dataset is not None:
        return max(int(status), _dataset_run(args, found.sets, labels))
    if len(found.sets) > 1 and (args.json or args.conns or args.profile or args.html):
        raise UsageError(
            f"the inputs are {len(found.sets)} separate captures: --json, --conns, --profile and --html take one; "
            "write them all with --dataset DIR"
        )
    for s in found.sets:
        if len(found.sets) > 1 and not args.quiet:
            print(set_heading(s.name, len(s.files)), flush=True)
        status = max(status, ExitStatus(_analyze_one(args, list(s.paths))))
    return int(status)


def _dataset_run(args: argparse.Namespace, sets: Sequence[CaptureSet], labels: Labels) -> int:
    from halfclose.fleet._engine import AnalysisKnobs
    from halfclose.fleet.runner import write_run
    from halfclose.report.fleet import run_line, set_line

    knobs = AnalysisKnobs(replacement_window_s=args.replacement_window, dns_window_s=args.dns_window)

    def show(outcome: SetOutcome) -> None:
        for issue in outcome.issues:
            print(f"halfclose analyze: {issue}", file=sys.stderr)
        if outcome.error:
            print(set_line(outcome), file=sys.stderr)
        elif not args.quiet and progress.live.is_started:
            progress.console.print(set_line(outcome), markup=False, highlight=False, soft_wrap=True)
        elif not args.quiet:
            print(set_line(outcome), flush=True)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    err = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=args.quiet or not err.is_terminal,
    ) as progress:
        task = progress.add_task("capture sets", total=len(sets))

        def done(outcome: SetOutcome) -> None:
            show(outcome)
            progress.advance(task)

        result = write_run(sets, args.dataset, labels=labels, knobs=knobs, jobs=args.jobs, dask=args.dask,
                           on_done=done)  # fmt: skip
    failed = sum(1 for o in result.outcomes if o.error)
    if not args.quiet or result.committed is None:
        print(run_line(result.run_id, result.committed, len(sets), failed), file=sys.stderr if failed else sys.stdout)
    bad = any(o.bad_input for o in result.outcomes)
    return int(ExitStatus.BAD_INPUT if bad or result.committed is None else ExitStatus.OK)


def _analyze_one(args: argparse.Namespace, captures: Sequence[str]) -> int:
    """One capture (its files in order): the terminal summary and the requested files."""
    from halfclose.capture import Severity

    outputs = [o for o in (args.json, args.profile) if o == "-"]
    out = None
    if not args.quiet:  # rich is loaded only to draw (it takes a noticeable part of a quick run)
        from rich.console import Console

        err = Console(stderr=True)
        # The summary goes to stdout unless stdout carries JSON.
        out = err if outputs else Console()
    if out is not None and err.is_terminal:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        with Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
            console=err, transient=True,
        ) as bar:
            task = bar.add_task("reading", total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            result = _read(args, captures, progress=progress)
    else:
        result = _read(args, captures)
    from halfclose.report.analysis_lines import input_lines

    for line in input_lines(result, captures):
        print(line, file=sys.stderr)
    bad = any(issue.severity is Severity.ERROR for issue in result.capture_issues)
    status = ExitStatus.BAD_INPUT if bad else ExitStatus.OK
    if args.json or args.conns or args.profile or args.html:
        # (halfclose.report is loaded only to write: it takes a noticeable part of a quick run)
        from halfclose.report.analysis_files import json_written_meanwhile

        # a large JSON document is written in a thread of its own while the rest is done
        with json_written_meanwhile(result, args.json) if args.json else contextlib.nullcontext():
            _write_rest(args, result, captures, out)
    else:
        _write_rest(args, result, captures, out)
    return int(status)


def _write_rest(args: argparse.Namespace, result: Analysis, captures: Sequence[str], out: Console | None) -> None:
    """The requested files but the JSON document, then the terminal summary (*out*: None for none)."""
    if args.conns or args.profile or args.html:
        from halfclose.report.analysis_files import atomic_file, write_connections, write_profile
    if args.conns:
        write_connections(result, args.conns)
    if args.profile:
        write_profile(result, args.profile)
    if args.html:
        from halfclose.report.html import analysis_html

        with atomic_file(args.html) as fh:
            fh.write(analysis_html(result, title=f"halfclose analyze: {', '.join(captures)}"))
    if out is not None:
        from halfclose.report.analysis_terminal import render

        render(result, out)


def _read(
    args: argparse.Namespace, captures: Sequence[str], *, progress: Callable[[int, int | None], None] | None = None
) -> Analysis:
    """:func:`halfclose.analysis_io.analyze`, with the analysis stages loaded while the reading
    thread opens the capture and decodes the first batches (a deeper read-ahead than prefetch's
    costs 3.5 MB a batch and gains nothing while the analysis is slower than the reading)."""
    from halfclose.analysis_io import prefetch
    from halfclose.capture import open_captures

    # the reading thread is stopped on the way out, also when the analysis fails
    with open_captures(captures, progress=progress) as reader, contextlib.closing(prefetch(reader)) as batches:
        first = next(batches, None)  # (starts the reading thread)
        from halfclose.analysis.engine import AnalysisOptions, analyze_batches

        opts = AnalysisOptions(replacement_window_s=args.replacement_window, dns_redundant_window_s=args.dns_window)
        stream = _prepend(first, batches)
        del first
        return analyze_batches(
            stream, opts, capture_issues=lambda: reader.issues, capture_stats=lambda: reader.stats.total
        )


def _prepend(first: PacketBatch | None, rest: Iterator[PacketBatch]) -> Iterator[PacketBatch]:
    """*first* (unless None), then *rest*; *first* is not kept once handed on."""
    if first is not None:
        yield first
        del first
    yield from rest
