"""``halfclose lab``: run the reproduction, clean up after killed runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from halfclose.errors import ExitStatus

__all__ = ["add_arguments", "run"]


def add_run_arguments(
    parser: argparse.ArgumentParser, *, requests: int = 4, gap: float = 3.0, rtt: float = 0.0
) -> None:
    """The workload and network options shared by ``lab run`` and ``lab compare``."""
    from halfclose.lab.config import DnsKind, ServerKind

    parser.add_argument("--requests", type=int, default=requests, metavar="N",
                        help=f"requests the app makes (default {requests})")
    parser.add_argument("--gap", type=float, default=gap, metavar="S",
                        help=f"seconds between requests (default {gap:g})")
    parser.add_argument("--idle-timeout", type=float, default=2.0, metavar="S",
                        help="the server's keep-alive idle timeout (default 2)")
    parser.add_argument("--dns-ttl", type=int, default=3, metavar="S", help="TTL of the lab DNS answers (default 3)")
    parser.add_argument("--ipv6", action="store_true", help="serve the lab name over IPv6 (ULA) only")
    parser.add_argument("--server", choices=[k.value for k in ServerKind], default="builtin",
                        help="HTTP server: built-in asyncio server or nginx (default builtin)")
    parser.add_argument("--dns", choices=[k.value for k in DnsKind], default="builtin",
                        help="DNS server: built-in or dnsmasq (default builtin)")
    parser.add_argument("--uid", type=int, default=10400, help="the app's uid (default 10400)")
    parser.add_argument("--rtt", type=float, default=rtt, metavar="MS",
                        help=f"emulated round-trip time, 0-1000 ms (default {rtt:g})")
    parser.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="delay jitter (with --rtt)")
    parser.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="packet loss in percent (with --rtt)")
    parser.add_argument("--seed", type=int, default=1, help="seed for jitter and loss (default 1)")
    parser.add_argument("--http-port", type=int, default=80, metavar="PORT", help="HTTP server port (default 80)")
    parser.add_argument("--tfo", action="store_true",
                        help="TCP Fast Open: the server's namespace allows it and the HTTP server listens with it")
    parser.add_argument("--drop-syn-data", action="store_true",
                        help="a path that drops SYNs carrying payload (a middlebox fault, with --tfo)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from halfclose.lab.config import ClientKind, Fix

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_p = sub.add_parser("run", help="reproduce a silently half-closed keep-alive connection",
                           description="Reproduce a silently half-closed keep-alive connection on real kernel TCP.")
    run_p.add_argument("--client", choices=[k.value for k in ClientKind], default="reuse",
                       help="the app's HTTP client (default reuse: the app from the field report)")
    add_run_arguments(run_p)
    run_p.add_argument("--fix", choices=[k.value for k in Fix], default="none",
                       help="a network-level fix to run in the phone namespace (default none)")
    run_p.add_argument("--race", action="store_true",
                       help="built-in server: close a connection idle too long when its next request arrives")
    run_p.add_argument("--keepalive-header", action="store_true",
                       help="built-in server: send Keep-Alive: timeout=N")
    run_p.add_argument("--pcap", type=Path, metavar="FILE", help="capture file (default: in the run folder)")
    run_p.add_argument("--json", type=Path, metavar="FILE", help="write the run's records as JSON ('-': stdout)")
    run_p.add_argument("--out", type=Path, metavar="DIR", help="run folder (default ./halfclose-lab/<time>-<id>)")
    run_p.add_argument("--capture-any", action="store_true",
                       help="capture with 'tcpdump -i any' (Linux cooked headers, as on a phone)")
    run_p.add_argument("--linger", type=float, default=0.5, metavar="S",
                       help="seconds to keep capturing after the app is done (default 0.5)")
    cmp_p = sub.add_parser("compare", help="every fix side by side on the same workload",
                           description="Run the same workload once per strategy (none, rules, reap, guard, "
                           "requests), analyse each capture and compare the costs.")
    # Defaults that finish in under a minute for all five strategies, on a mobile-like round trip.
    add_run_arguments(cmp_p, requests=3, gap=2.5, rtt=50.0)
    cmp_p.add_argument("--strategies", default="none,rules,reap,guard,requests", metavar="LIST",
                       help="comma-separated strategies to run (default: all five)")
    cmp_p.add_argument("--json", type=Path, metavar="FILE", help="write the comparison as JSON ('-': stdout)")
    cmp_p.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report")
    cmp_p.add_argument("--out", type=Path, metavar="DIR",
                       help="folder for the runs' captures (default ./halfclose-lab/compare-<time>)")
    sub.add_parser("clean", help="remove namespaces and files left by killed lab runs",
                   description="Remove namespaces, processes and files left behind by lab runs that were killed.")


def _config(args: argparse.Namespace) -> object:
    from halfclose.lab.config import ClientKind, DnsKind, Fix, LabConfig, ServerKind

    return LabConfig(
        client=ClientKind(args.client), requests=args.requests, gap_s=args.gap, idle_timeout_s=args.idle_timeout,
        dns_ttl_s=args.dns_ttl, ipv6=args.ipv6, server=ServerKind(args.server), dns=DnsKind(args.dns),
        race=args.race, keepalive_header=args.keepalive_header, uid=args.uid, fix=Fix(args.fix),
        rtt_ms=args.rtt, jitter_ms=args.jitter, loss_pct=args.loss, seed=args.seed, http_port=args.http_port,
        pcap=args.pcap, out_dir=args.out, linger_s=args.linger, capture_any=args.capture_any,
        tfo=getattr(args, "tfo", False), drop_syn_data=getattr(args, "drop_syn_data", False),
    )


def _run(args: argparse.Namespace) -> int:
    from halfclose.lab.app import RequestRecord
    from halfclose.lab.config import LabConfig
    from halfclose.lab.runner import run_lab
    from halfclose.lab.summary import render_summary, render_waits, render_wire
    from halfclose.lab.topology import Topology

    config = _config(args)
    assert isinstance(config, LabConfig)
    to_stdout = args.json is not None and str(args.json) == "-"
    out = sys.stderr if to_stdout else sys.stdout

    def progress(record: RequestRecord) -> None:
        mark = "DEAD CONNECTION, retried" if record.reused_dead else ("reused" if record.reused else "new connection")
        status = "ok" if record.ok else f"FAILED: {record.error}"
        print(f"  request {record.index + 1}: {record.latency_ns / 1e6:8.1f} ms  {mark:<24} {status}",
              file=out, flush=True)

    def ready(run_id: str, topo: Topology) -> None:
        addrs = topo.addresses
        print(f"lab {run_id}: phone {addrs.phone(config.ipv6)} (uid {config.uid}, {config.client.value}) -> "
              f"server {addrs.server(config.ipv6)} ({config.server.value} + {config.dns.value} DNS); "
              f"namespaces {topo.phone}, {topo.link}, {topo.server}", file=out, flush=True)

    result = run_lab(config, on_record=progress, on_ready=ready)
    for line in render_summary(result.summary, config):
        print(line, file=out)
    print(render_wire(result.wire), file=out)
    print(render_waits(result.records, result.waits_ns(), result.wire.rtt_ms_median, config), file=out)
    print(result.link.line(), file=out)
    print(f"capture: {result.pcap}", file=out)
    if args.json is not None:
        text = json.dumps(result.to_json(), indent=2)
        if to_stdout:
            print(text)
        else:
            args.json.write_text(text + "\n")
    return ExitStatus.OK


def _clean() -> int:
    from halfclose.netns import clean_stale

    removed = clean_stale()
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print("nothing to clean")
    return ExitStatus.OK


def _compare(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console

    from halfclose.errors import UsageError
    from halfclose.lab.compare import Outcome, Strategy, run_compare
    from halfclose.lab.config import LabConfig

    try:
        strategies = [Strategy(s.strip()) for s in args.strategies.split(",") if s.strip()]
    except ValueError as exc:
        names = ", ".join(s.value for s in Strategy)
        raise UsageError(f"--strategies: {exc} (choose from {names})") from None
    if not strategies:
        raise UsageError("--strategies is empty")
    args.client, args.fix, args.race, args.keepalive_header, args.pcap, args.linger, args.capture_any = (
        "reuse", "none", False, False, None, 0.5, False)
    args.out = args.out or Path("halfclose-lab") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    config = _config(args)
    assert isinstance(config, LabConfig)
    from halfclose.lab.config import validate

    validate(config)
    if args.html is not None and not args.html.absolute().parent.is_dir():
        raise UsageError(f"--html {args.html}: folder {args.html.absolute().parent} does not exist")
    to_stdout = args.json is not None and str(args.json) == "-"
    console = Console(stderr=to_stdout, highlight=False)
    if not console.is_terminal:
        # A log file or a pipe: wide enough that the table's rows stay on one line each.
        console = Console(stderr=to_stdout, highlight=False, width=120)

    def progress(outcome: Outcome) -> None:
        if outcome.metrics is None:
            console.print(f"  {outcome.strategy.value:<9} skipped: {outcome.skipped}")
        else:
            m = outcome.metrics
            console.print(f"  {outcome.strategy.value:<9} done: {m.ok}/{m.requests} ok, "
                          f"{m.stale_writes} stale writes, {m.dns_queries} DNS queries")

    console.print(f"comparing {len(strategies)} strategies, one lab run each ...")
    comparison = run_compare(config, strategies, out_dir=args.out.absolute(), on_outcome=progress)
    from halfclose.report import comparison_html, comparison_table

    console.print()
    console.print(comparison.verdict)
    console.print()
    console.print(comparison_table(comparison))
    if args.html is not None:
        args.html.write_text(comparison_html(comparison))
        console.print(f"report: {args.html}")
    if args.json is not None:
        text = json.dumps(comparison.to_json(), indent=2)
        if to_stdout:
            print(text)
        else:
            args.json.write_text(text + "\n")
    return ExitStatus.OK if any(o.ran() for o in comparison.outcomes) else ExitStatus.BAD_INPUT


def run(args: argparse.Namespace) -> int:
    if args.action == "clean":
        return _clean()
    if args.action == "compare":
        return _compare(args)
    return _run(args)
