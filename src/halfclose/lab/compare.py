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
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from halfclose.errors import UsageError
from halfclose.lab.config import ClientKind, Fix, LabConfig, validate
from halfclose.lab.figures import RunFigures
from halfclose.lab.runner import Attempt, attempt

__all__ = [
    "DEFAULTS",
    "DEFAULT_STRATEGIES",
    "DNS_CACHE_FLOOR_S",
    "REMEDIES",
    "Comparison",
    "Deploy",
    "Outcome",
    "Remedy",
    "Waste",
    "least_wasteful",
    "metrics",
    "ranking",
    "remedies",
    "run_compare",
]

#: The workload ``lab compare`` runs unless told otherwise: it finishes in under a minute for
#: all five remedies, on a mobile-like round trip.
DEFAULTS = LabConfig(requests=3, gap_s=2.5, rtt_ms=50.0)


#: The TTL floor of the phone-side DNS cache (``dns-cache``): ``halfclose dns config --floor 300``.
DNS_CACHE_FLOOR_S = 300


class Deploy(enum.StrEnum):
    """What deploying a remedy takes."""

    #: Root on the device (netfilter rules, a privileged agent, the device's resolver).
    ROOT = "root"
    #: A change on the server (its configuration or code).
    SERVER = "server"
    #: A change in the app (its HTTP client).
    APP = "app"


@dataclass(frozen=True, slots=True, kw_only=True)
class Remedy:
    """A way of dealing with a server's silent half-close that ``lab compare`` puts side by side.

    Fields:
        name: how the command line (``--strategies``) and the JSON call it.
        client: the app's HTTP client.
        fix: the network-level fix run in the phone namespace.
        server_rst: the server closes idle connections with RST (SO_LINGER 0).
        announce: the server announces its idle timeout (``Keep-Alive: timeout=N``).
        dns_cache: a caching resolver with a TTL floor on the phone side.
        deploy: what deploying it takes (empty: nothing).
        default: one of the remedies ``lab compare`` runs unless ``--strategies`` says otherwise.
    """

    name: str
    client: ClientKind
    fix: Fix = Fix.NONE
    server_rst: bool = False
    announce: bool = False
    dns_cache: bool = False
    deploy: frozenset[Deploy] = frozenset()
    default: bool = False

    def configure(self, config: LabConfig) -> LabConfig:
        """*config* with this remedy's client, fix, server options and phone cache."""
        return dataclasses.replace(
            config, client=self.client, fix=self.fix, server_rst=self.server_rst,
            keepalive_header=self.announce or config.keepalive_header,
            dns_cache_floor_s=DNS_CACHE_FLOOR_S if self.dns_cache else config.dns_cache_floor_s,
        )


_ROOT, _SERVER, _APP = frozenset({Deploy.ROOT}), frozenset({Deploy.SERVER}), frozenset({Deploy.APP})

#: Every remedy, in the order of the comparison's columns.
REMEDIES: tuple[Remedy, ...] = (
    #: The app from the field report, nothing done.
    Remedy(name="none", client=ClientKind.REUSE, default=True),
    #: The same app, with the netfilter fix (``halfclose rules``) in the phone namespace.
    Remedy(name="rules", client=ClientKind.REUSE, fix=Fix.RULES, deploy=_ROOT, default=True),
    #: The same app, with the sock_diag reaper (``halfclose reap``) in the phone namespace.
    Remedy(name="reap", client=ClientKind.REUSE, fix=Fix.REAP, deploy=_ROOT, default=True),
    #: An app using halfclose's keep-alive guard and DNS cache (requests).
    Remedy(name="guard", client=ClientKind.GUARD_REQUESTS, deploy=_APP, default=True),
    #: A well-behaved client baseline: plain requests.
    Remedy(name="requests", client=ClientKind.REQUESTS, deploy=_APP, default=True),
    #: The field report's wish: the server closes idle connections with RST instead of FIN.
    Remedy(name="server-rst", client=ClientKind.REUSE, server_rst=True, deploy=_SERVER),
    #: The server announces its idle timeout (Keep-Alive: timeout=N), with the field report's app...
    Remedy(name="server-announce", client=ClientKind.REUSE, announce=True, deploy=_SERVER),
    #: ... with plain requests ...
    Remedy(name="requests+server-announce", client=ClientKind.REQUESTS, announce=True, deploy=_SERVER | _APP),
    #: ... and with the guard, which reads it.
    Remedy(name="guard+server-announce", client=ClientKind.GUARD_REQUESTS, announce=True, deploy=_SERVER | _APP),
    #: A caching resolver with a TTL floor on the phone side; the field report's app unchanged.
    Remedy(name="dns-cache", client=ClientKind.REUSE, dns_cache=True, deploy=_ROOT),
    #: The field report's iptables commands, as written and as literally ported.
    Remedy(name="rules-verbatim", client=ClientKind.REUSE, fix=Fix.RULES_VERBATIM, deploy=_ROOT),
    #: ... and with the refused owner match simply dropped.
    Remedy(name="rules-naive", client=ClientKind.REUSE, fix=Fix.RULES_NAIVE, deploy=_ROOT),
    #: Combinations a user would deploy together.
    Remedy(name="rules+dns-cache", client=ClientKind.REUSE, fix=Fix.RULES, dns_cache=True, deploy=_ROOT),
    Remedy(name="reap+dns-cache", client=ClientKind.REUSE, fix=Fix.REAP, dns_cache=True, deploy=_ROOT),
)

#: What ``--strategies`` means when not given.
DEFAULT_STRATEGIES = ",".join(r.name for r in REMEDIES if r.default)


def remedies(names: str) -> tuple[Remedy, ...]:
    """The remedies a comma-separated list names, in its order (``all``: every one).

    Raises:
        UsageError: an unknown name, or none at all.
    """
    by_name = {r.name: r for r in REMEDIES}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if wanted == ["all"]:
        return REMEDIES
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise UsageError(f"--strategies: unknown {', '.join(map(repr, unknown))} "
                         f"(choose from all, {', '.join(by_name)})")
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
        "client_close_unacked": wire.client_close_unacked,
        "server_linger_ms": wire.server_linger_ms_median,
        "tcp_connections": wire.tcp_connections,
        "dns_queries": wire.dns_queries,
        "packets": wire.packets,
        "payload_bytes": wire.payload_bytes,
        "app_errors": app.app_errors,
        "app_retries": app.app_retries,
        "rtt_ms": wire.rtt_ms_median,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Waste:
    """The waste a remedy left, in the order it ranks remedies (a lower tuple is better).

    Fields:
        failed: requests that failed in the app.
        wait_rtts: round trips a post-idle request waited for a live connection (median, to 0.1).
        app_errors: errors the app saw and retried.
        stale_writes: connections with client payload after the server's FIN.
        dns_queries: DNS query packets.
        server_fin_wait_ms: the server's median time from its FIN to the client's FIN or RST.
        packets: packets on the phone's interface.
    """

    failed: int
    wait_rtts: float
    app_errors: int
    stale_writes: int
    dns_queries: int
    server_fin_wait_ms: float
    packets: int

    @classmethod
    def of(cls, figures: RunFigures) -> Waste:
        app, wire = figures.app, figures.wire
        rtts = figures.post_idle_wait_rtts
        if rtts is None and figures.post_idle_wait_ms is not None and wire.rtt_ms_median:
            rtts = figures.post_idle_wait_ms / wire.rtt_ms_median
        return cls(failed=app.app_errors, wait_rtts=round(rtts or 0.0, 1), app_errors=app.app_retries,
                   stale_writes=wire.stale_writes, dns_queries=wire.dns_queries,
                   server_fin_wait_ms=wire.server_linger_ms_median or 0.0, packets=wire.packets)

    def key(self) -> tuple[float, ...]:
        return (self.failed, self.wait_rtts, self.app_errors, self.stale_writes, self.dns_queries,
                self.server_fin_wait_ms, self.packets)


def ranking(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The remedies that ran, least waste left first; equal waste: the cheaper to deploy first."""
    ran = [o for o in outcomes if o.figures is not None]
    return sorted(ran, key=lambda o: (Waste.of(o.figures).key(), len(o.remedy.deploy)))  # type: ignore[arg-type]


def least_wasteful(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The remedy that ran and wasted least (None when none ran)."""
    ranked = ranking(outcomes)
    return ranked[0] if ranked else None


def run_compare(
    config: LabConfig,
    chosen: Sequence[Remedy] | None = None,
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
    for remedy in remedies(DEFAULT_STRATEGIES) if chosen is None else chosen:
        try:
            run_config = validate(dataclasses.replace(remedy.configure(config), out_dir=out_dir / remedy.name,
                                                      pcap=None))
        except UsageError as exc:  # a remedy this server cannot do (server-rst with nginx)
            result, skipped = None, str(exc)
        else:
            result, skipped = attempt(run_config)
        outcome = Outcome(remedy=remedy, result=result, skipped=skipped)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return Comparison(config=config, outcomes=tuple(outcomes))
