"""The ``halfclose`` command: argument parsing and exit statuses only.

Each subcommand lives in its own module ``halfclose.cli.<name>`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``, and is imported only when it is used, so
that ``halfclose --help`` stays cheap and one part's dependencies never slow another down.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from halfclose import __version__
from halfclose.errors import ExitStatus, HalfcloseError, exit_status

__all__ = ["COMMANDS", "CommandInfo", "entrypoint", "main", "process_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandInfo:
    """Where a subcommand lives, its one-line summary, and whether the process may end without
    the interpreter's teardown once it has returned (it leaves nothing to atexit handlers or
    threads; freeing a large analysis takes a noticeable part of a quick run), and whether it
    does no linear algebra (numpy's OpenBLAS then starts no threads of its own: on import they
    spin for about 0.1 s of CPU, beside the command's own threads)."""

    module: str
    summary: str
    hard_exit: bool = False
    no_blas_threads: bool = False


#: Subcommand name -> where it lives. Order is the order of ``--help``.
COMMANDS: dict[str, CommandInfo] = {
    "analyze": CommandInfo(
        module="halfclose.cli.analyze",
        summary="find half-close waste in capture files",
        hard_exit=True,
        no_blas_threads=True,
    ),
    "query": CommandInfo(module="halfclose.cli.query", summary="SQL and canned questions over an analysis dataset"),
    "report": CommandInfo(module="halfclose.cli.report", summary="the fleet view of an analysis dataset as HTML"),
    "lab": CommandInfo(module="halfclose.cli.lab", summary="reproduce the problem and compare the fixes in namespaces"),
    "rules": CommandInfo(module="halfclose.cli.rules", summary="netfilter rules that reset stale sockets"),
    "reap": CommandInfo(module="halfclose.cli.reap", summary="destroy apps' CLOSE_WAIT sockets"),
    "watch": CommandInfo(module="halfclose.cli.watch", summary="live view of TCP sockets in CLOSE_WAIT"),
    "dns": CommandInfo(module="halfclose.cli.dns", summary="resolver configs for a DNS TTL floor and serve-stale"),
    "device": CommandInfo(module="halfclose.cli.device", summary="capture, fix and compare an app on a phone"),
}


class CommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _overview() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: halfclose COMMAND [options]",
        "",
        "Find and remove the waste of silently half-closed HTTP keep-alive connections.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {info.summary}" for name, info in COMMANDS.items()]
    lines += ["", "Run 'halfclose COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line *argv* (without the program name) and return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_overview())
        return ExitStatus.OK if args else ExitStatus.BAD_INPUT
    if args[0] == "--version":
        print(f"halfclose {__version__}")
        return ExitStatus.OK
    name, rest = args[0], args[1:]
    info = COMMANDS.get(name)
    if info is None:
        print(f"halfclose: error: unknown command {name!r} (see 'halfclose --help')", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    from halfclose.args import ArgumentParser

    module = cast(CommandModule, importlib.import_module(info.module))
    parser = ArgumentParser(prog=f"halfclose {name}", description=info.summary)
    module.add_arguments(parser)
    try:
        namespace = parser.parse_args(rest)
        return module.run(namespace)
    except HalfcloseError as exc:
        print(f"halfclose {name}: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt as exc:
        print(f"halfclose {name}: interrupted", file=sys.stderr)
        return exit_status(exc)


def process_settings(info: CommandInfo) -> None:
    """Settings of the whole process for a command, made before anything imports numpy (a
    value the user set in the environment is kept)."""
    if info.no_blas_threads:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def entrypoint() -> None:
    """Console-script entry point."""
    info = COMMANDS.get(sys.argv[1]) if len(sys.argv) > 1 else None
    if info is not None:
        process_settings(info)
    status = main()
    if info is not None and info.hard_exit:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # the reader went away (e.g. a closed pipe): nothing more to say
            status = status or ExitStatus.BAD_INPUT
        os._exit(status)
    sys.exit(status)
