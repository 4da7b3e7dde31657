"""``halfclose analyze``: find half-close waste in capture files."""

from __future__ import annotations

import argparse
import os
import sys

from halfclose.errors import ExitStatus, UsageError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halfclose analyze``."""
    parser.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap/pcapng files, '-' for stdin")
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


def run(args: argparse.Namespace) -> int:
    """Analyse, print the summary, write the requested files; 2 when part of the input was unreadable."""
    from halfclose.analysis import AnalysisOptions
    from halfclose.analysis_io import analyze
    from halfclose.capture import Severity

    if args.replacement_window <= 0 or args.dns_window <= 0:
        raise UsageError("--replacement-window and --dns-window must be positive numbers of seconds")
    if args.html and not os.path.isdir(os.path.dirname(os.path.abspath(args.html))):
        raise UsageError(f"--html {args.html}: its folder does not exist")
    if args.conns and not args.conns.lower().endswith((".csv", ".parquet", ".pq")):
        raise UsageError(f"--conns {args.conns}: name the file .csv or .parquet")
    outputs = [o for o in (args.json, args.profile) if o == "-"]
    if len(outputs) > 1:
        raise UsageError("only one of --json and --profile can go to standard output ('-')")
    opts = AnalysisOptions(
        replacement_window_s=args.replacement_window, dns_redundant_window_s=args.dns_window
    )
    out = None
    if not args.quiet:  # rich is loaded only to draw (it takes a noticeable part of a quick run)
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        err = Console(stderr=True)
        # The summary goes to stdout unless stdout carries JSON.
        out = err if outputs else Console()
    if out is not None and err.is_terminal:
        with Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
            console=err, transient=True,
        ) as bar:
            task = bar.add_task("reading", total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            result = analyze(args.captures, opts, progress=progress)
    else:
        result = analyze(args.captures, opts)
    status = ExitStatus.OK
    for issue in result.capture_issues:
        print(f"halfclose analyze: {issue}", file=sys.stderr)
        if issue.severity is Severity.ERROR:
            status = ExitStatus.BAD_INPUT
    if result.issues:
        kinds: dict[str, int] = {}
        for i in result.issues:
            kinds[i.kind] = kinds.get(i.kind, 0) + 1
        first = result.issues[0]
        where = args.captures[first.file_index] if first.file_index < len(args.captures) else "input"
        more = f" ({sum(kinds.values()) - 1} more like it, see --json)" if sum(kinds.values()) > 1 else ""
        print(
            f"halfclose analyze: warning: {where} frame {first.frame}: {first.message}{more}",
            file=sys.stderr,
        )
    if args.json or args.conns or args.profile or args.html:
        # (halfclose.report is loaded only to write: it takes a noticeable part of a quick run)
        from halfclose.report.analysis_files import atomic_file, write_connections, write_json, write_profile
    if args.json:
        write_json(result, args.json)
    if args.conns:
        write_connections(result, args.conns)
    if args.profile:
        write_profile(result, args.profile)
    if args.html:
        from halfclose.report.html import analysis_html

        with atomic_file(args.html) as fh:
            fh.write(analysis_html(result, title=f"halfclose analyze: {', '.join(args.captures)}"))
    if out is not None:
        from halfclose.report.analysis_terminal import render

        render(result, out)
    return int(status)
