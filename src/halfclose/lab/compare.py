"""``lab compare``: every remedy side by side on the same workload and network.

Each remedy (a *strategy* on the command line) is one lab run with the same configuration but
for the client and the fix. Its figures are the run's own (:class:`~halfclose.lab.figures.
RunFigures`, on :attr:`LabResult.figures <halfclose.lab.runner.LabResult.figures>`); this module
computes none of its own: it picks which remedy wasted least (:func:`least_wasteful`) and lays
out the figures the comparison shows (:func:`metrics`). :mod:`halfclose.report` words the
verdict and draws the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from halfclose.errors import UsageError
from halfclose.lab.config import ClientKind, Fix, LabConfig
from halfclose.lab.figures import RunFigures
from halfclose.lab.runner import Attempt, attempt

__all__ = [
    "DEFAULTS",
    "REMEDIES",
    "Comparison",
    "Outcome",
    "Remedy",
    "least_wasteful",
    "metrics",
    "remedies",
    "run_compare",
]

#: The workload ``lab compare`` runs unless told otherwise: it finishes in under a minute for
#: all five remedies, on a mobile-like round trip.
DEFAULTS = LabConfig(requests=3, gap_s=2.5, rtt_ms=50.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Remedy:
    """A way of dealing with a server's silent half-close that ``lab compare`` puts side by side.

    Fields:
        name: how the command line (``--strategies``) and the JSON call it.
        client: the app's HTTP client.
        fix: the network-level fix run in the phone namespace.
    """

    name: str
    client: ClientKind
    fix: Fix


#: Every remedy, in the order of the comparison's columns.
REMEDIES: tuple[Remedy, ...] = (
    #: The app from the field report, nothing done.
    Remedy(name="none", client=ClientKind.REUSE, fix=Fix.NONE),
    #: The same app, with the netfilter fix (``halfclose rules``) in the phone namespace.
    Remedy(name="rules", client=ClientKind.REUSE, fix=Fix.RULES),
    #: The same app, with the sock_diag reaper (``halfclose reap``) in the phone namespace.
    Remedy(name="reap", client=ClientKind.REUSE, fix=Fix.REAP),
    #: An app using halfclose's keep-alive guard and DNS cache (requests).
    Remedy(name="guard", client=ClientKind.GUARD_REQUESTS, fix=Fix.NONE),
    #: A well-behaved client baseline: plain requests.
    Remedy(name="requests", client=ClientKind.REQUESTS, fix=Fix.NONE),
)


def remedies(names: str) -> tuple[Remedy, ...]:
    """The remedies a comma-separated list names, in its order.

    Raises:
        UsageError: an unknown name, or none at all.
    """
    by_name = {r.name: r for r in REMEDIES}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise UsageError(f"--strategies: unknown {', '.join(map(repr, unknown))} "
                         f"(choose from {', '.join(by_name)})")
    if not wanted:
        raise UsageError("--strategies is empty")
    return tuple(by_name[n] for n in wanted)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome(Attempt):
    """One remedy's run, or why it was skipped."""

    remedy: Remedy


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    config: LabConfig
    outcomes: tuple[Outcome, ...]


def metrics(figures: RunFigures) -> dict[str, float | int | None]:
    """The figures a comparison shows for one remedy, flat (the JSON ``metrics`` of a strategy)."""
    app, wire = figures.app, figures.wire
    return {
        "requests": app.requests,
        "ok": app.ok,
        "post_idle_ms_median": app.median_ms_post_idle,
        "post_idle_ms_p95": app.p95_ms_post_idle,
        "post_idle_rtts_median": figures.post_idle_rtts_median,
        "post_idle_rtts_p95": figures.post_idle_rtts_p95,
        "post_idle_beyond_rtt_ms": figures.post_idle_beyond_rtt_ms,
        "syn_data_conns": figures.syn_data_conns,
        "post_idle_wait_ms": figures.post_idle_wait_ms,
        "post_idle_wait_rtts": figures.post_idle_wait_rtts,
        "stale_writes": wire.stale_writes,
        "rsts": wire.rsts,
        "server_fin_retransmits": wire.server_fin_retransmits,
        "server_linger_ms": wire.server_linger_ms_median,
        "tcp_connections": wire.tcp_connections,
        "dns_queries": wire.dns_queries,
        "packets": wire.packets,
        "payload_bytes": wire.payload_bytes,
        "app_errors": app.app_errors,
        "app_retries": app.app_retries,
        "rtt_ms": wire.rtt_ms_median,
    }


def _waste(figures: RunFigures) -> tuple[float, ...]:
    # Failed requests first, then stale writes, then time lost, then what the network carried.
    app, wire = figures.app, figures.wire
    return (app.app_errors, wire.stale_writes, figures.post_idle_wait_ms or 0.0,
            wire.server_fin_retransmits, wire.dns_queries, wire.packets)


def least_wasteful(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The remedy that ran and wasted least (None when none ran)."""
    ran = [(o, o.figures) for o in outcomes if o.figures is not None]
    return min(ran, key=lambda pair: _waste(pair[1]))[0] if ran else None


def run_compare(
    config: LabConfig,
    chosen: Sequence[Remedy] = REMEDIES,
    *,
    out_dir: Path,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> Comparison:
    """Run *config*'s workload once per remedy (one after the other) and compare them.

    A remedy that cannot run on this host (a :class:`~halfclose.errors.HalfcloseError` while
    it starts or runs, such as a missing program) is recorded as skipped with the reason, and
    the others still run.
    """
    outcomes: list[Outcome] = []
    for remedy in chosen:
        run_config = dataclasses.replace(
            config, client=remedy.client, fix=remedy.fix, out_dir=out_dir / remedy.name, pcap=None,
        )
        result, skipped = attempt(run_config)
        outcome = Outcome(remedy=remedy, result=result, skipped=skipped)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return Comparison(config=config, outcomes=tuple(outcomes))
