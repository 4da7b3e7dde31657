"""``halfclose reap``: destroy the selected apps' CLOSE_WAIT sockets as the server's FIN arrives.

Runs until SIGTERM or SIGINT, in the network namespace it is started in (``ip netns exec NS
halfclose reap ...``). Prints ``halfclose reap: ready ...`` on stderr (and ``READY=1`` to systemd)
once its rules and its listener are in place, and its counters on exit; its rules and state file
are removed however it exits. SIGHUP reads ``--config`` again (:mod:`halfclose.reap.service`).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import shlex
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from halfclose.cli._argtypes import metrics_address, port, seconds
from halfclose.errors import EnvironmentProblem, ExitStatus, UsageError

__all__ = ["add_arguments", "run"]


def _uid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"uid {text!r} is not a number") from None
    if not 0 <= value < 2**32 - 1:
        raise argparse.ArgumentTypeError(f"uid {value} is out of range")
    return value


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address or network (e.g. 198.18.0.0/15 or fd00::/8)"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halfclose reap`` (given options override the ``--config`` file's values)."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML settings (uids, packages, ports, addresses, trigger, metrics, ...); "
                        "SIGHUP reads it again")
    parser.add_argument("--uid", type=_uid, action="append",
                        help="app uid whose sockets may be destroyed (repeatable; or uids in --config)")
    parser.add_argument("--port", type=port, action="append",
                        help="server port (remote port) to watch (repeatable; default: any)")
    parser.add_argument("--addr", type=_network, action="append",
                        help="server address or network to watch (repeatable; default: any)")
    parser.add_argument("--trigger", choices=("nflog", "poll"),
                        help="nflog: act on each logged server FIN (default); poll: dump CLOSE_WAIT "
                        "sockets every --interval")
    parser.add_argument("--interval", type=seconds,
                        help="seconds between dumps with --trigger poll (default 0.05)")
    parser.add_argument("--settle", type=seconds,
                        help="seconds to keep looking at a flagged socket that still has unread or "
                        "unsent data or has not yet processed the FIN (default 2)")
    parser.add_argument("--nflog-group", type=int, help="NFLOG group (default 42)")
    parser.add_argument("--no-rules", action="store_true", default=None,
                        help="do not install the netfilter rules (someone else feeds the NFLOG group)")
    parser.add_argument("--backend", choices=("auto", "nft", "iptables-nft", "iptables-legacy"),
                        help="netfilter front end for the rules (default auto)")
    parser.add_argument("--dry-run", action="store_true", default=None,
                        help="report what would be destroyed, destroy nothing")
    parser.add_argument("--log", choices=("none", "text", "json"),
                        help="a line per action: json to stdout, text to stderr (default none)")
    parser.add_argument("--metrics", type=metrics_address, metavar="[ADDR:]PORT",
                        help="serve Prometheus metrics on /metrics there (default address 0.0.0.0)")
    parser.add_argument("--systemd-unit", action="store_true",
                        help="print the systemd unit for running the reaper as a service, and exit")


#: Signals that stop the reaper (the lab sends SIGTERM). SIGHUP reloads.
_STOPPING = {signal.SIGTERM, signal.SIGINT}
_HELD = _STOPPING | {signal.SIGHUP}


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
    """Hold stop (and reload) signals back for the block (set-up and clean-up run to their end);
    a signal that arrives meanwhile is delivered once :func:`_signals_let_through` opens the
    gate. On leaving, signals still pending are discarded and the previous mask comes back."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in _HELD}  # discards pending ones
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_let_through() -> Iterator[None]:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)


@contextlib.contextmanager
def _wakeup_fd() -> Iterator[int]:
    """The read end of a socket pair that Python writes to whenever a signal arrives."""
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    old = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    try:
        yield r.fileno()
    finally:
        signal.set_wakeup_fd(old)
        r.close()
        w.close()


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (options left out give nothing)."""
    given = {
        "uids": tuple(args.uid) if args.uid else None,
        "ports": tuple(args.port) if args.port else None,
        "addresses": tuple(args.addr) if args.addr else None,
        "trigger": args.trigger, "interval": args.interval, "settle": args.settle,
        "nflog_group": args.nflog_group, "no_rules": args.no_rules, "backend": args.backend,
        "dry_run": args.dry_run, "log": args.log, "metrics": args.metrics,
    }
    return {k: v for k, v in given.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    """Run the reaper until a signal stops it."""
    from halfclose.reap.agent import ReapEvent
    from halfclose.reap.service import Service, load_settings, systemd_unit
    from halfclose.sockdiag.client import has_cap_net_admin

    if args.systemd_unit:
        print(systemd_unit(f"{shlex.quote(sys.executable)} -m halfclose"), end="")
        return ExitStatus.OK
    if args.uid is None and args.config is None:
        raise UsageError("give the app uids with --uid, or a --config file naming them")
    overrides = _overrides(args)
    settings = load_settings(args.config, overrides)
    if not 0 <= settings.nflog_group <= 0xFFFF:
        raise UsageError(f"--nflog-group {settings.nflog_group} is out of range: use 0 to 65535")
    if settings.trigger == "poll" and settings.no_rules:
        raise UsageError("--no-rules only makes sense with --trigger nflog")
    if not has_cap_net_admin():
        raise EnvironmentProblem(
            "halfclose reap needs CAP_NET_ADMIN (to destroy sockets and bind NFLOG): run it as root"
        )

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    service: Service | None = None
    with _signals_held(), contextlib.ExitStack() as stack:
        stack.enter_context(_stop_on_signals())
        wakeup = stack.enter_context(_wakeup_fd())

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            if service is not None:
                service.reload_requested = True

        previous = signal.signal(signal.SIGHUP, on_hup)
        stack.callback(signal.signal, signal.SIGHUP, previous)
        try:
            service = stack.enter_context(
                Service(settings, reload_settings=lambda: load_settings(args.config, overrides), say=say))
            service.reaper.wakeup_fd = wakeup
            service.ready()
            with _signals_let_through():
                service.serve()
        except _Stop:
            pass
        except EnvironmentProblem:
            if service is not None:
                say(f"halfclose reap: {service.reaper.counters.summary()}")
            raise
        assert service is not None
        summary = service.reaper.counters.summary()
        if service.settings.log == "json":
            print(ReapEvent(ts=time.time(), action="summary", trigger=service.settings.trigger,
                            detail=summary).to_json(), flush=True)
    say(f"halfclose reap: {summary}")
    return ExitStatus.OK
