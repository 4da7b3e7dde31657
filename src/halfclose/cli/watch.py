"""``halfclose watch``: a live view of TCP sockets by uid and process, CLOSE_WAIT first.

Shows how many sockets each (uid, process) holds, how many sit in CLOSE_WAIT and for how long,
and what running reapers of the same network namespace have destroyed. ``--json`` prints one
snapshot and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

from halfclose.cli._argtypes import metrics_address, seconds
from halfclose.errors import ExitStatus, UsageError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from halfclose.reap.watch import Snapshot

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halfclose watch``."""
    parser.add_argument("--netns", metavar="NAME", help="look inside this network namespace (ip netns name)")
    parser.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    parser.add_argument("--interval", type=seconds, default=1.0,
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--limit", type=int, default=25, help="rows to show (default 25)")
    parser.add_argument("--metrics", type=metrics_address, metavar="[ADDR:]PORT",
                        help="also serve the latest snapshot's figures per uid as Prometheus metrics")


def run(args: argparse.Namespace) -> int:
    """Show the view until interrupted (or print one JSON snapshot)."""
    from halfclose.reap.agent import state_dir
    from halfclose.reap.watch import AgeTracker, ProcIndex, build_snapshot, read_reapers
    from halfclose.sockdiag import TCPF_ALL, SockDiag, TcpState, state_mask

    if args.limit < 1:
        raise UsageError(f"--limit {args.limit} must be at least 1")
    if args.json and args.metrics is not None:
        raise UsageError("--metrics serves a running view: it does not go with --json")
    if args.netns is not None:
        try:
            ns_inode = os.stat(f"/run/netns/{args.netns}").st_ino
        except OSError:
            raise UsageError(f"no network namespace named {args.netns!r} (see 'ip netns list')") from None
    else:
        ns_inode = os.stat("/proc/self/ns/net").st_ino
    every = TCPF_ALL & ~state_mask(TcpState.TIME_WAIT, TcpState.NEW_SYN_RECV)
    tracker = AgeTracker()
    index = ProcIndex()

    latest: list[Snapshot] = []

    def snapshot(sd: SockDiag) -> Snapshot:
        sockets = list(sd.dump(states=every))
        close_wait = list(sd.dump(states=state_mask(TcpState.CLOSE_WAIT), info=True))
        now = time.time()
        snap = build_snapshot(
            sockets=sockets,
            ages=tracker.update(close_wait, now),
            owners=index.owners(m.idiag_inode for m in sockets),
            reapers=read_reapers(state_dir(), netns_inode=ns_inode),
            ts=now,
            netns=args.netns,
        )
        latest[:] = [snap]
        return snap

    with SockDiag(netns=args.netns) as sd:
        if args.json:
            print(snapshot(sd).to_json())
            return ExitStatus.OK
        from rich.console import Console
        from rich.live import Live

        console = Console(file=sys.stdout)
        stop_metrics = None
        if args.metrics is not None:
            from halfclose import __version__
            from halfclose.reap.metrics import WatchCollector, serve, watch_figures

            collector = WatchCollector(figures=lambda: watch_figures(latest[0].rows) if latest else None,
                                       info={"version": __version__, "netns": args.netns or ""})
            stop_metrics = serve(collector, args.metrics)
        try:
            with Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
                while True:
                    live.update(_render(snapshot(sd), args.limit), refresh=True)
                    time.sleep(args.interval)
        except KeyboardInterrupt:
            return ExitStatus.OK  # Ctrl-C is how a live view ends
        finally:
            if stop_metrics is not None:
                stop_metrics()


def _render(snap: Snapshot, limit: int) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = (f"halfclose watch — {snap.netns or 'this namespace'}: {snap.sockets} TCP sockets, "
             f"{snap.close_wait} in CLOSE_WAIT   {time.strftime('%H:%M:%S', time.localtime(snap.ts))}")
    table = Table(title=title, expand=False)
    for name, justify in (("uid", "right"), ("pid", "right"), ("process", "left"), ("sockets", "right"),
                          ("estab", "right"), ("close-wait", "right"), ("unread", "right"),
                          ("oldest cw", "right"), ("other", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in snap.rows[:limit]:
        age = "" if row.oldest_close_wait is None else f"{row.oldest_close_wait:.1f} s"
        style = "bold red" if row.close_wait else None
        table.add_row(str(row.uid), str(row.pid or "-"), row.comm, str(row.total), str(row.established),
                      str(row.close_wait), str(row.close_wait_unread or ""), age, str(row.other), style=style)
    lines = []
    for body in snap.reapers:
        counters = body.get("counters")
        c = counters if isinstance(counters, dict) else {}
        lines.append(
            f"reaper pid {body.get('pid')} ({body.get('trigger')}, uids {body.get('uids')}, "
            f"ports {body.get('ports') or 'any'}): destroyed {c.get('destroyed', 0)}, "
            f"FINs {c.get('fins_seen', 0)}, vanished {c.get('vanished', 0)}, errors {c.get('errors', 0)}"
        )
    if not lines:
        lines.append("no reaper running in this namespace")
    return Group(table, Text("\n".join(lines)))
