"""``halfclose device``: capture an app on an Android device, see its findings live, try the fix.

Looks up the app's uid (``cmd package list packages -U``), streams a capture from the device
(``adb exec-out tcpdump -i any -U -w -``) and analyses it as it grows; with ``--fix rules`` the
netfilter fix is put in place on request (Enter, SIGUSR1 or ``--fix-after SECONDS``). Ctrl-C ends
the run: the rules are taken out and the findings before and after the fix are compared.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from halfclose.cli._argtypes import port_list, seconds_or_zero
from halfclose.errors import ExitStatus, UsageError

if TYPE_CHECKING:
    from halfclose.analysis import Analysis
    from halfclose.device import Comparison, DeviceSession

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halfclose device``."""
    parser.add_argument("--adb", metavar="SERIAL", required=True, help="the device's adb serial (see 'adb devices')")
    parser.add_argument("--package", required=True, help="the app's package name (like com.example.app)")
    parser.add_argument("--fix", choices=("none", "rules"), default="none",
                        help="rules: put the netfilter fix in place on request (Enter, SIGUSR1 or --fix-after)")
    parser.add_argument("--fix-after", type=seconds_or_zero, metavar="SECONDS",
                        help="with --fix rules: apply the fix this many seconds after the capture started")
    parser.add_argument("--port", type=port_list, default=(80, 443), help="server ports for the fix (default 80,443)")
    parser.add_argument("--refresh", type=seconds_or_zero, default=2.0, help="seconds between live updates (default 2)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="keep the capture in FILE (pcap)")


def _line(session: DeviceSession, analysis: Analysis | None, started: float) -> str:
    from halfclose.device import compare

    elapsed = time.monotonic() - started
    if analysis is None:
        return f"halfclose device: {elapsed:.0f} s, no packets yet"
    c = compare(analysis, session.fix_ts_ns)
    fix = " (fix in place)" if session.fixed else ""
    return (f"halfclose device: {elapsed:.0f} s, {session.tail.packets} packets, "
            f"{analysis.summary.tcp_connections} connections; stale writes {c.before['stale_reuse']}"
            + (f" before the fix, {c.after['stale_reuse']} after" if session.fix_ts_ns is not None else "")
            + f"; silent half-closes {c.before['silent_half_close'] + c.after['silent_half_close']}{fix}")


def _report(session: DeviceSession, c: Comparison) -> str:
    rows = [("connections", c.connections_before, c.connections_after)]
    rows += [(kind, c.before[kind], c.after[kind]) for kind in c.before]
    head = f"{'':<20}{'before fix':>12}{'after fix':>12}" if c.fix_ts_ns is not None else f"{'':<20}{'captured':>12}"
    lines = [f"halfclose device: {session.host.serial} {session.package} (uid {session.uid}): "
             f"{session.tail.packets} packets", head]
    for name, before, after in rows:
        lines.append(f"{name:<20}{before:>12}" + (f"{after:>12}" if c.fix_ts_ns is not None else ""))
    if c.fix_ts_ns is not None:
        when = time.strftime("%H:%M:%S", time.localtime(c.fix_ts_ns / 1e9))
        lines.append(f"rules: applied at {when} (device clock), removed again; connections open at that "
                     "moment count as before")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Capture until Ctrl-C (SIGINT or SIGTERM), then print the comparison."""
    from halfclose.device import DeviceSession, compare
    from halfclose.netfilter.android import check_package, check_serial

    check_serial(args.adb)
    check_package(args.package)
    if args.fix_after is not None and args.fix != "rules":
        raise UsageError("--fix-after only goes with --fix rules")
    fix_requested = threading.Event()

    def on_usr1(_signum: int, _frame: FrameType | None) -> None:
        fix_requested.set()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {signal.SIGUSR1: signal.signal(signal.SIGUSR1, on_usr1),
           signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}
    session = DeviceSession(serial=args.adb, package=args.package, ports=args.port, out=args.out)
    try:
        running = session.app_process()
        where = (f"pid {running[0]}, uid {running[1]}" if running is not None else "not running yet")
        print(f"halfclose device: {args.package} is uid {session.uid} on {args.adb} ({where})", file=sys.stderr,
              flush=True)
        session.start()
        started = time.monotonic()
        print(f"halfclose device: capturing ({'--fix rules on request' if args.fix == 'rules' else 'no fix'}; "
              "Ctrl-C ends)", file=sys.stderr, flush=True)
        fixer_failed: list[BaseException] = []
        if args.fix == "rules":
            if args.fix_after is None and sys.stdin.isatty():
                def on_enter() -> None:
                    sys.stdin.readline()
                    fix_requested.set()

                threading.Thread(target=on_enter, daemon=True).start()

            def fixer() -> None:
                # Its own thread, so that a slow analysis never delays the fix.
                fix_requested.wait(args.fix_after)
                try:
                    session.apply_fix()
                except BaseException as exc:  # reported by the main thread
                    fixer_failed.append(exc)
                    return
                print("halfclose device: fix in place (rules, strategy reject)", file=sys.stderr, flush=True)

            threading.Thread(target=fixer, name="device-fix", daemon=True).start()
        try:
            while True:
                deadline = time.monotonic() + args.refresh
                while time.monotonic() < deadline:
                    if fixer_failed:
                        raise fixer_failed[0]
                    time.sleep(0.05)
                print(_line(session, session.analyze_now(), started), file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            pass
        session.stop_capture()
        final = session.analyze_now()
        fix_ts = session.fix_ts_ns
        session.close()
        if final is None:
            print("halfclose device: the capture holds no packets", file=sys.stderr)
            return ExitStatus.FAILURE
        print(_report(session, compare(final, fix_ts)))
        return ExitStatus.OK
    finally:
        session.close()
        for s, h in old.items():
            signal.signal(s, h)
