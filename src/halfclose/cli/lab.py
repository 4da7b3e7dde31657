"""``halfclose lab``: run the reproduction, compare the remedies, clean up after killed runs.

Options that configure a run have the name of a :class:`~halfclose.lab.config.LabConfig` field
as their destination, and their default is that field's default (or the default of the
action's own workload, such as :data:`halfclose.lab.compare.DEFAULTS`), so that no default is
written twice; :meth:`LabConfig.from_args <halfclose.lab.config.LabConfig.from_args>` builds
the configuration from them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from halfclose.errors import ExitStatus

if TYPE_CHECKING:
    from rich.console import Console

    from halfclose.lab.config import ClientKind, LabConfig, ServerKind

__all__ = ["add_arguments", "add_run_arguments", "run"]


def add_run_arguments(parser: argparse.ArgumentParser, defaults: LabConfig, *, server: bool = True) -> None:
    """The workload and network options shared by ``lab run``, ``compare`` and ``matrix``.

    Each option's destination is the LabConfig field it sets; its default is *defaults*'.
    ``--server`` is left out where the action chooses servers itself (*server* False).
    """
    from halfclose.lab.config import TLS_PORT, DnsKind, ServerKind, TlsVersion

    d = defaults
    parser.add_argument("--requests", dest="requests", type=int, default=d.requests, metavar="N",
                        help=f"requests the app makes (default {d.requests})")
    parser.add_argument("--gap", dest="gap_s", type=float, default=d.gap_s, metavar="S",
                        help=f"seconds between requests (default {d.gap_s:g})")
    parser.add_argument("--idle-timeout", dest="idle_timeout_s", type=float, default=d.idle_timeout_s, metavar="S",
                        help=f"the server's keep-alive idle timeout (default {d.idle_timeout_s:g})")
    parser.add_argument("--dns-ttl", dest="dns_ttl_s", type=int, default=d.dns_ttl_s, metavar="S",
                        help=f"TTL of the lab DNS answers (default {d.dns_ttl_s})")
    parser.add_argument("--ipv6", action="store_true", help="serve the lab name over IPv6 (ULA) only")
    if server:
        parser.add_argument("--server", choices=[k.value for k in ServerKind], default=d.server.value,
                            help=f"HTTP server: the built-in asyncio server or a real one (default {d.server.value})")
    parser.add_argument("--dns", choices=[k.value for k in DnsKind], default=d.dns.value,
                        help=f"DNS server: built-in or dnsmasq (default {d.dns.value})")
    parser.add_argument("--uid", type=int, default=d.uid, help=f"the app's uid (default {d.uid})")
    parser.add_argument("--rtt", dest="rtt_ms", type=float, default=d.rtt_ms, metavar="MS",
                        help=f"emulated round-trip time, 0-1000 ms (default {d.rtt_ms:g})")
    parser.add_argument("--jitter", dest="jitter_ms", type=float, default=d.jitter_ms, metavar="MS",
                        help="delay jitter (with --rtt)")
    parser.add_argument("--loss", dest="loss_pct", type=float, default=d.loss_pct, metavar="PCT",
                        help="packet loss in percent (with --rtt)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed for jitter and loss (default {d.seed})")
    parser.add_argument("--http-port", type=int, default=None, metavar="PORT",
                        help=f"HTTP server port (default {d.http_port}, {TLS_PORT} with --tls)")
    parser.add_argument("--tls", action="store_true",
                        help="HTTPS with a certificate from a CA made for the run, which the app trusts")
    parser.add_argument("--tls-version", choices=[v.value for v in TlsVersion], default=d.tls_version.value,
                        help=f"the one TLS version the server accepts (with --tls; default {d.tls_version.value})")
    parser.add_argument("--http2", action="store_true",
                        help="the server offers HTTP/2 (ALPN h2 with --tls, else h2c with prior knowledge)")
    parser.add_argument("--tfo", action="store_true",
                        help="TCP Fast Open: the server's namespace allows it and the HTTP server listens with it")
    parser.add_argument("--drop-syn-data", action="store_true",
                        help="a path that drops SYNs carrying payload (a middlebox fault, with --tfo)")


def _add_report_arguments(parser: argparse.ArgumentParser, what: str, *, html: bool) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE", help=f"write {what} as JSON ('-': stdout)")
    if html:
        parser.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from halfclose.lab.compare import DEFAULT_STRATEGIES, REMEDIES
    from halfclose.lab.compare import DEFAULTS as COMPARE_DEFAULTS
    from halfclose.lab.config import ClientKind, Fix, LabConfig, ServerKind
    from halfclose.lab.matrix import DEFAULTS as MATRIX_DEFAULTS

    run_defaults = LabConfig()
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_p = sub.add_parser("run", help="reproduce a silently half-closed keep-alive connection",
                           description="Reproduce a silently half-closed keep-alive connection on real kernel TCP.")
    run_p.add_argument("--client", choices=[k.value for k in ClientKind], default=run_defaults.client.value,
                       help=f"the app's HTTP client (default {run_defaults.client.value}: the app from the "
                            "field report)")
    add_run_arguments(run_p, run_defaults)
    run_p.add_argument("--fix", choices=[k.value for k in Fix], default=run_defaults.fix.value,
                       help=f"a network-level fix to run in the phone namespace (default {run_defaults.fix.value})")
    run_p.add_argument("--race", action="store_true",
                       help="built-in server: close a connection idle too long when its next request arrives")
    run_p.add_argument("--keepalive-header", action="store_true",
                       help="the server sends Keep-Alive: timeout=N (builtin, nginx, haproxy)")
    run_p.add_argument("--pcap", type=Path, metavar="FILE", help="capture file (default: in the run folder)")
    _add_report_arguments(run_p, "the run's records", html=False)
    run_p.add_argument("--out", dest="out_dir", type=Path, metavar="DIR",
                       help="run folder (default ./halfclose-lab/<time>-<id>)")
    run_p.add_argument("--capture-any", action="store_true",
                       help="capture with 'tcpdump -i any' (Linux cooked headers, as on a phone)")
    run_p.add_argument("--linger", dest="linger_s", type=float, default=run_defaults.linger_s, metavar="S",
                       help=f"seconds to keep capturing after the app is done (default {run_defaults.linger_s:g})")

    names = ", ".join(r.name for r in REMEDIES)
    cmp_p = sub.add_parser("compare", help="every fix side by side on the same workload",
                           description=f"Run the same workload once per strategy ({names}), "
                           "analyse each capture and compare the costs.")
    add_run_arguments(cmp_p, COMPARE_DEFAULTS)
    cmp_p.add_argument("--strategies", default=DEFAULT_STRATEGIES, metavar="LIST",
                       help=f"comma-separated strategies to run, or all (default: {DEFAULT_STRATEGIES})")
    _add_report_arguments(cmp_p, "the comparison", html=True)
    cmp_p.add_argument("--out", type=Path, metavar="DIR",
                       help="folder for the runs' captures (default ./halfclose-lab/compare-<time>)")

    mx_p = sub.add_parser("matrix", help="the same workload for each server x client pair",
                          description="Run the same workload for each server and client pair, analyse each "
                          "capture and show the figures as a matrix (rows clients, columns servers).")
    mx_p.add_argument("--servers", required=True, metavar="LIST",
                      help=f"comma-separated servers, of {', '.join(k.value for k in ServerKind)}")
    mx_p.add_argument("--clients", required=True, metavar="LIST",
                      help=f"comma-separated clients, of {', '.join(k.value for k in ClientKind)}")
    add_run_arguments(mx_p, MATRIX_DEFAULTS, server=False)
    _add_report_arguments(mx_p, "one record per pair", html=True)
    mx_p.add_argument("--out", type=Path, metavar="DIR",
                      help="folder for the pairs' captures (default ./halfclose-lab/matrix-<time>)")

    sub.add_parser("clean", help="remove namespaces and files left by killed lab runs",
                   description="Remove namespaces, processes and files left behind by lab runs that were killed.")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reports:
    """Where an action's reports go, checked before anything runs."""

    json: Path | None
    html: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Reports:
        reports = cls(json=args.json, html=getattr(args, "html", None))
        reports.check("--html", reports.html)
        return reports

    @staticmethod
    def check(option: str, path: Path | None) -> None:
        """Raise if *path*'s folder does not exist (``--html`` before the run; ``--json`` when written,
        since it may lie in the run folder)."""
        from halfclose.errors import UsageError
        from halfclose.report.files import is_stdout

        if path is not None and not is_stdout(path) and not path.absolute().parent.is_dir():
            raise UsageError(f"{option} {path}: folder {path.absolute().parent} does not exist")

    @property
    def json_to_stdout(self) -> bool:
        from halfclose.report.files import is_stdout

        return is_stdout(self.json)

    def write(self, data: dict[str, object], html: str | None = None) -> None:
        """Write the JSON report and the HTML page asked for (*html*: the page, when asked)."""
        from halfclose.report.files import write_text

        if self.html is not None and html is not None:
            write_text(self.html, html)
        if self.json is not None:
            self.check("--json", self.json)
            write_text(self.json, json.dumps(data, indent=2) + "\n")


def _console(*, stderr: bool) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # A log file or a pipe: wide enough that a table's rows stay on one line each.
        console = Console(stderr=stderr, highlight=False, width=120)
    return console


def _folder(given: Path | None, action: str) -> Path:
    import time

    return (given or Path("halfclose-lab") / f"{action}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()


def _run(args: argparse.Namespace) -> int:
    import sys

    from halfclose.lab.app import RequestRecord
    from halfclose.lab.config import LabConfig
    from halfclose.lab.runner import run_lab
    from halfclose.lab.topology import Topology
    from halfclose.report.lab import ready_line, request_line, run_lines

    config = LabConfig.from_args(args)
    reports = _Reports.from_args(args)
    out = sys.stderr if reports.json_to_stdout else sys.stdout

    def progress(record: RequestRecord) -> None:
        print(request_line(record), file=out, flush=True)

    def ready(run_id: str, topo: Topology) -> None:
        print(ready_line(run_id, topo, config), file=out, flush=True)

    result = run_lab(config, on_record=progress, on_ready=ready)
    for line in run_lines(result):
        print(line, file=out)
    reports.write(result.to_json())
    return ExitStatus.OK


def _clean() -> int:
    from halfclose.netns import clean_stale
    from halfclose.report.lab import clean_lines

    for line in clean_lines(clean_stale()):
        print(line)
    return ExitStatus.OK


def _compare(args: argparse.Namespace) -> int:
    from halfclose.lab.compare import Outcome, remedies, run_compare
    from halfclose.lab.config import LabConfig
    from halfclose.report.lab import compare_start_line, comparison_json, outcome_line, report_line, verdict

    chosen = remedies(args.strategies)
    config = LabConfig.from_args(args)
    reports = _Reports.from_args(args)
    console = _console(stderr=reports.json_to_stdout)

    def progress(outcome: Outcome) -> None:
        console.print(outcome_line(outcome))

    console.print(compare_start_line(len(chosen)))
    comparison = run_compare(config, chosen, out_dir=_folder(args.out, "compare"), on_outcome=progress)
    from halfclose.report.html import comparison_html
    from halfclose.report.terminal import comparison_tables, ranking_table

    console.print()
    console.print(verdict(comparison.outcomes))
    console.print()
    console.print(ranking_table(comparison))
    for table in comparison_tables(comparison):
        console.print(table)
    reports.write(comparison_json(comparison), comparison_html(comparison) if reports.html else None)
    if reports.html is not None:
        console.print(report_line(reports.html))
    return ExitStatus.OK if any(o.ran() for o in comparison.outcomes) else ExitStatus.BAD_INPUT


def _matrix(args: argparse.Namespace) -> int:
    import sys

    from halfclose.lab.config import LabConfig
    from halfclose.lab.matrix import Cell, clients, run_matrix, servers
    from halfclose.report.lab import report_line
    from halfclose.report.matrix import cell_line, heading, matrix_tables, start_line

    chosen_servers, chosen_clients = servers(args.servers), clients(args.clients)
    config = LabConfig.from_args(args)
    reports = _Reports.from_args(args)
    console = _console(stderr=reports.json_to_stdout)

    def started(number: int, total: int, server: ServerKind, client: ClientKind) -> None:
        print(start_line(number, total, server, client), file=sys.stderr, flush=True)

    def ran(number: int, total: int, cell: Cell) -> None:
        print(cell_line(number, total, cell), file=sys.stderr, flush=True)

    matrix = run_matrix(config, chosen_servers, chosen_clients, out_dir=_folder(args.out, "matrix"),
                        on_start=started, on_cell=ran)
    console.print(heading(matrix))
    for table in matrix_tables(matrix):
        console.print(table)
    html = None
    if reports.html is not None:
        from halfclose.report.html import matrix_html

        html = matrix_html(matrix)
    reports.write(matrix.to_json(), html)
    if reports.html is not None:
        console.print(report_line(reports.html))
    return ExitStatus.OK if any(c.ran() for c in matrix.cells) else ExitStatus.BAD_INPUT


def run(args: argparse.Namespace) -> int:
    if args.action == "clean":
        return _clean()
    if args.action == "compare":
        return _compare(args)
    if args.action == "matrix":
        return _matrix(args)
    return _run(args)
