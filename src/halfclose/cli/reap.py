"""``halfclose reap``: destroy the selected apps' CLOSE_WAIT sockets as the server's FIN arrives.

Runs until SIGTERM or SIGINT, in the network namespace it is started in (``ip netns exec NS
halfclose reap ...``). Prints ``halfclose reap: ready ...`` on stderr once its rules and its
listener are in place, and its counters on exit; its rules and state file are removed however it
exits.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Iterator
from types import FrameType

from halfclose.errors import EnvironmentProblem, ExitStatus, UsageError

__all__ = ["add_arguments", "run"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 1-65535")
    return value


def _uid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"uid {text!r} is not a number") from None
    if not 0 <= value < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"uid {value} is out of range")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0 seconds")
    return value


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address or network (e.g. 198.18.0.0/15 or fd00::/8)"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halfclose reap``."""
    parser.add_argument("--uid", type=_uid, action="append", required=True,
                        help="app uid whose sockets may be destroyed (repeatable)")
    parser.add_argument("--port", type=_port, action="append", default=[],
                        help="server port (remote port) to watch (repeatable; default: any)")
    parser.add_argument("--addr", type=_network, action="append", default=[],
                        help="server address or network to watch (repeatable; default: any)")
    parser.add_argument("--trigger", choices=("nflog", "poll"), default="nflog",
                        help="nflog: act on each logged server FIN (default); poll: dump CLOSE_WAIT "
                        "sockets every --interval")
    parser.add_argument("--interval", type=_positive, default=0.05,
                        help="seconds between dumps with --trigger poll (default 0.05)")
    parser.add_argument("--settle", type=_positive, default=2.0,
                        help="seconds to keep looking at a flagged socket that still has unread or "
                        "unsent data or has not yet processed the FIN (default 2)")
    parser.add_argument("--nflog-group", type=int, default=42, help="NFLOG group (default 42)")
    parser.add_argument("--no-rules", action="store_true",
                        help="do not install the netfilter rules (someone else feeds the NFLOG group)")
    parser.add_argument("--backend", choices=("auto", "nft", "iptables-nft", "iptables-legacy"),
                        default="auto", help="netfilter front end for the rules (default auto)")
    parser.add_argument("--dry-run", action="store_true",
                        help="report what would be destroyed, destroy nothing")
    parser.add_argument("--log", choices=("none", "text", "json"), default="none",
                        help="a line per action: json to stdout, text to stderr (default none)")


#: Signals that stop the reaper (the lab sends SIGTERM).
_STOPPING = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class _Stop(Exception):
    """Raised by the signal handler to leave the serving loop."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    stopping = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return  # already leaving: let the clean-up finish
        stopping = True
        raise _Stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in _STOPPING}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold stop signals back for the block (set-up and clean-up run to their end); a signal
    that arrives meanwhile is delivered once :func:`_signals_let_through` opens the gate. On
    leaving, signals still pending are discarded and the previous mask comes back."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
    try:
        yield
    finally:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in _STOPPING}  # discards pending ones
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_let_through() -> Iterator[None]:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPPING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)


def run(args: argparse.Namespace) -> int:
    """Run the reaper until a signal stops it."""
    from halfclose.netfilter import Backend, Policy, Strategy
    from halfclose.netfilter.policy import DEFAULT_PORTS
    from halfclose.reap.agent import Reaper, ReapEvent, StateFile, netns_inode, state_dir
    from halfclose.reap.decision import Selection
    from halfclose.sockdiag.client import SockDiag, has_cap_net_admin
    from halfclose.sockdiag.wire import InetDiagSockId

    if not 0 <= args.nflog_group <= 0xFFFF:
        raise UsageError(f"--nflog-group {args.nflog_group} is out of range: use 0 to 65535")
    if args.trigger == "poll" and args.no_rules:
        raise UsageError("--no-rules only makes sense with --trigger nflog")
    policy: Policy | None = None
    if args.trigger == "nflog" and not args.no_rules:
        # The rules tag the app's connections to these ports; with no --port, the rules'
        # default ports are tagged while the reaper itself accepts any port.
        policy = Policy(uids=tuple(args.uid), ports=tuple(args.port) or DEFAULT_PORTS,
                        strategy=Strategy.NFLOG, nflog_group=args.nflog_group)
    if not has_cap_net_admin():
        raise EnvironmentProblem(
            "halfclose reap needs CAP_NET_ADMIN (to destroy sockets and bind NFLOG): run it as root"
        )
    selection = Selection(
        uids=frozenset(args.uid), ports=frozenset(args.port), networks=tuple(args.addr)
    )

    def emit(event: ReapEvent) -> None:
        if args.log == "json":
            print(event.to_json(), flush=True)
        elif args.log == "text":
            extra = f" ({event.reason or event.detail})" if event.reason or event.detail else ""
            who = f" uid {event.uid}" if event.uid is not None else ""
            print(f"halfclose reap: {event.action}{who} {event.local or ''} -> {event.remote or ''}"
                  f" {event.state or ''}{extra}", file=sys.stderr, flush=True)

    state = StateFile(
        path=state_dir() / f"{os.getpid()}.json",
        header={
            "pid": os.getpid(), "netns_inode": netns_inode(), "uids": sorted(args.uid),
            "ports": sorted(args.port), "trigger": args.trigger, "dry_run": args.dry_run,
            "started": time.time(),
        },
    )
    with _signals_held(), contextlib.ExitStack() as stack:
        stack.enter_context(_stop_on_signals())
        sd = stack.enter_context(SockDiag())
        # Probe: a destroy for a socket that cannot exist answers ENOENT on a kernel with
        # SOCK_DESTROY and EOPNOTSUPP without it (raised as EnvironmentProblem).
        any4 = ipaddress.IPv4Address(0)
        sd.destroy(InetDiagSockId(family=2, sport=0, dport=0, src=any4, dst=any4))
        reaper = Reaper(selection=selection, sockdiag=sd, emit=emit, dry_run=args.dry_run,
                        settle=args.settle)
        last_publish = 0.0

        def tick() -> None:
            nonlocal last_publish
            now = time.monotonic()
            if now - last_publish >= 1.0:
                state.write(reaper.counters)
                last_publish = now

        try:
            listener = None
            if args.trigger == "nflog":
                from halfclose.netfilter import installed
                from halfclose.reap.nflog import NflogListener

                # Listener first: a group another listener holds fails before any rule is in.
                listener = stack.enter_context(NflogListener(args.nflog_group))
                if policy is not None:
                    stack.enter_context(installed(policy, backend=Backend(args.backend)))
            stack.callback(state.remove)
            if listener is not None:
                reaper.sweep("start")  # what is already in CLOSE_WAIT had its FIN before us
            state.write(reaper.counters)
            what = (f"trigger {args.trigger}" + (f", NFLOG group {args.nflog_group}" if listener else
                                                  f", every {args.interval:g} s"))
            ports = ",".join(map(str, sorted(set(args.port))))
            if not ports:
                tagged = ",".join(map(str, policy.ports)) if policy is not None else ""
                ports = f"any (rules tag {tagged})" if tagged else "any"
            print(f"halfclose reap: ready ({what}; uids {','.join(map(str, sorted(args.uid)))}; "
                  f"ports {ports}"
                  f"{'; dry run' if args.dry_run else ''})", file=sys.stderr, flush=True)
            with _signals_let_through():
                if listener is not None:
                    reaper.run_nflog(listener, tick=tick)
                else:
                    reaper.run_poll(args.interval, tick=tick)
        except _Stop:
            pass
        except EnvironmentProblem:
            print(f"halfclose reap: {reaper.counters.summary()}", file=sys.stderr, flush=True)
            raise
        if args.log == "json":
            print(ReapEvent(ts=time.time(), action="summary", trigger=args.trigger,
                            detail=reaper.counters.summary()).to_json(), flush=True)
        print(f"halfclose reap: {reaper.counters.summary()}", file=sys.stderr, flush=True)
    return ExitStatus.OK
