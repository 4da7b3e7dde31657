"""``lab compare``: every fix side by side on the same workload and network.

Each strategy is one lab run with the same configuration but for the client and the fix; its
figures come from the analysis of its capture (:class:`~halfclose.lab.figures.WireFigures`) and
from the app's records. Turning runs into metrics and the metrics into a verdict is pure.
"""

from __future__ import annotations

import dataclasses
import enum
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from halfclose.errors import EnvironmentProblem
from halfclose.lab.config import ClientKind, Fix, LabConfig
from halfclose.lab.runner import LabResult, run_lab
from halfclose.lab.syndata import count_syn_data

__all__ = [
    "PLANS",
    "Comparison",
    "Metrics",
    "Outcome",
    "Plan",
    "Strategy",
    "metrics",
    "run_compare",
    "verdict",
]


class Strategy(enum.StrEnum):
    """The ways of dealing with a server's silent half-close that ``lab compare`` puts side by side."""

    #: The app from the field report, nothing done.
    NONE = "none"
    #: The same app, with the netfilter fix (``halfclose rules``) in the phone namespace.
    RULES = "rules"
    #: The same app, with the sock_diag reaper (``halfclose reap``) in the phone namespace.
    REAP = "reap"
    #: An app using halfclose's keep-alive guard and DNS cache (requests).
    GUARD = "guard"
    #: A well-behaved client baseline: plain requests.
    REQUESTS = "requests"


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    strategy: Strategy
    client: ClientKind
    fix: Fix
    #: What deploying it takes, for the verdict.
    cost: str


PLANS: dict[Strategy, Plan] = {
    Strategy.NONE: Plan(strategy=Strategy.NONE, client=ClientKind.REUSE, fix=Fix.NONE, cost="nothing"),
    Strategy.RULES: Plan(strategy=Strategy.RULES, client=ClientKind.REUSE, fix=Fix.RULES,
                         cost="root and netfilter rules on the device; the server's FIN goes unacknowledged"),
    Strategy.REAP: Plan(strategy=Strategy.REAP, client=ClientKind.REUSE, fix=Fix.REAP,
                        cost="a root agent with CAP_NET_ADMIN and NFLOG rules on the device"),
    Strategy.GUARD: Plan(strategy=Strategy.GUARD, client=ClientKind.GUARD_REQUESTS, fix=Fix.NONE,
                         cost="a change in the app (one line for a requests app)"),
    Strategy.REQUESTS: Plan(strategy=Strategy.REQUESTS, client=ClientKind.REQUESTS, fix=Fix.NONE,
                            cost="a client that checks idle sockets before reuse"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    """One strategy's figures.

    Fields:
        post_idle_ms_median, post_idle_ms_p95: latency of requests that followed an idle gap
            longer than the server's timeout (the app's clock), in ms.
        post_idle_rtts_median, post_idle_rtts_p95: the same in round trips, using the median
            handshake RTT of the capture.
        post_idle_wait_ms, post_idle_wait_rtts: median time a post-idle request waited for a live
            connection (finding its connection dead, DNS, a new handshake; see
            :func:`~halfclose.lab.figures.setup_delays_ns`), in ms and in round trips.
        stale_writes: connections with client payload after the server's FIN (capture).
        rsts: connections reset by either side (capture).
        server_fin_retransmits: the server's FIN retransmissions (capture).
        server_linger_ms: median time from the server's FIN until the client's RST or FIN
            ended the connection for the server (capture), in ms.
        tcp_connections, dns_queries, packets, payload_bytes: from the capture.
        app_errors: requests that failed as the app saw them, after its own retry.
        app_retries: errors the app caught and retried on a new connection.
        rtt_ms: median handshake round trip of the capture.
        post_idle_beyond_rtt_ms: median post-idle latency minus one round trip, in ms.
        syn_data_conns: connections whose SYN carried data (TCP Fast Open; capture).
    """

    requests: int
    ok: int
    post_idle_ms_median: float | None
    post_idle_ms_p95: float | None
    post_idle_rtts_median: float | None
    post_idle_rtts_p95: float | None
    post_idle_wait_ms: float | None
    post_idle_wait_rtts: float | None
    stale_writes: int
    rsts: int
    server_fin_retransmits: int
    server_linger_ms: float | None
    tcp_connections: int
    dns_queries: int
    packets: int
    payload_bytes: int
    app_errors: int
    app_retries: int
    rtt_ms: float | None
    post_idle_beyond_rtt_ms: float | None = None
    syn_data_conns: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One strategy's run, or why it was skipped."""

    strategy: Strategy
    plan: Plan
    result: LabResult | None
    metrics: Metrics | None
    skipped: str = ""

    def ran(self) -> bool:
        return self.metrics is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    config: LabConfig
    outcomes: tuple[Outcome, ...]
    verdict: str

    def to_json(self) -> dict[str, object]:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.config).items()}
        return {
            "config": config,
            "verdict": self.verdict,
            "strategies": [
                {
                    "strategy": o.strategy.value,
                    "client": o.plan.client.value,
                    "fix": o.plan.fix.value,
                    "skipped": o.skipped,
                    "pcap": str(o.result.pcap) if o.result else None,
                    "metrics": dataclasses.asdict(o.metrics) if o.metrics else None,
                }
                for o in self.outcomes
            ],
        }


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    # Nearest rank, so that the p95 of a few values is one of them.
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def metrics(result: LabResult) -> Metrics:
    """A strategy's figures from its lab run (pure)."""
    config = result.config
    idle_gap = config.gap_s > config.idle_timeout_s
    post_idle = [r.latency_ns / 1e6 for r in result.records if r.index > 0 and idle_gap]
    wire = result.wire
    rtt = wire.rtt_ms_median

    def in_rtts(ms: float | None) -> float | None:
        return None if ms is None or not rtt else round(ms / rtt, 2)

    median = round(statistics.median(post_idle), 2) if post_idle else None
    delays = result.waits_ns()
    waits = [delays[r.index] / 1e6 for r in result.records if r.index > 0 and idle_gap and r.index in delays]
    wait = round(statistics.median(waits), 2) if waits else None
    p95 = _quantile(post_idle, 0.95)
    return Metrics(
        requests=len(result.records),
        ok=sum(r.ok for r in result.records),
        post_idle_ms_median=median,
        post_idle_ms_p95=None if p95 is None else round(p95, 2),
        post_idle_rtts_median=in_rtts(median),
        post_idle_rtts_p95=in_rtts(p95),
        post_idle_wait_ms=wait,
        post_idle_wait_rtts=in_rtts(wait),
        stale_writes=wire.stale_writes,
        rsts=sum(1 for c in result.analysis.connections if c.orig_rst_ns is not None or c.resp_rst_ns is not None),
        server_fin_retransmits=wire.server_fin_retransmits,
        server_linger_ms=wire.server_linger_ms_median,
        tcp_connections=wire.tcp_connections,
        dns_queries=wire.dns_queries,
        packets=wire.packets,
        payload_bytes=wire.payload_bytes,
        app_errors=sum(not r.ok for r in result.records),
        app_retries=sum(1 for r in result.records if r.ok and r.error),
        rtt_ms=rtt,
        post_idle_beyond_rtt_ms=None if median is None or rtt is None else round(median - rtt, 2),
        syn_data_conns=count_syn_data(result.pcap),
    )


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def verdict(outcomes: Sequence[Outcome]) -> str:
    """One paragraph: which strategy wasted least and at what cost, computed from the figures."""
    ran = [o for o in outcomes if o.ran()]
    if not ran:
        return "No strategy could run on this host: " + "; ".join(f"{o.strategy}: {o.skipped}" for o in outcomes)

    def waste(o: Outcome) -> tuple[float, ...]:
        m = o.metrics
        assert m is not None
        return (m.app_errors, m.stale_writes, m.post_idle_wait_ms or 0.0,
                m.server_fin_retransmits, m.dns_queries, m.packets)

    best = min(ran, key=waste)
    m = best.metrics
    assert m is not None
    parts = [
        f"{best.strategy.value} wasted least: post-idle requests waited {_fmt(m.post_idle_wait_ms, ' ms')} "
        f"({_fmt(m.post_idle_wait_rtts)} round trips) for a live connection and took "
        f"{_fmt(m.post_idle_ms_median, ' ms')} in all at the median, {m.stale_writes} connections carried "
        f"payload after a server FIN, the server retransmitted {m.server_fin_retransmits} FINs, and the app "
        f"made {m.dns_queries} DNS queries over {m.tcp_connections} connections; its cost: {best.plan.cost}."
    ]
    baseline = next((o for o in ran if o.strategy is Strategy.NONE), None)
    if baseline is not None and baseline is not best and baseline.metrics is not None:
        b = baseline.metrics
        parts.append(
            f"Doing nothing cost {_fmt(b.post_idle_wait_ms, ' ms')} ({_fmt(b.post_idle_wait_rtts)} round trips) "
            f"of waiting per post-idle request, {b.stale_writes} stale writes answered by {b.rsts} resets and "
            f"{b.dns_queries} DNS queries."
        )
    others = []
    for o in ran:
        if o is best or o is baseline or o.metrics is None:
            continue
        om = o.metrics
        others.append(
            f"{o.strategy.value}: {_fmt(om.post_idle_wait_ms, ' ms')} waiting, {om.stale_writes} stale writes, "
            f"{om.server_fin_retransmits} server FIN retransmissions, {om.dns_queries} DNS queries"
        )
    if others:
        parts.append("Others: " + "; ".join(others) + ".")
    skipped = [o for o in outcomes if not o.ran()]
    if skipped:
        parts.append("Skipped: " + "; ".join(f"{o.strategy.value} ({o.skipped})" for o in skipped) + ".")
    return " ".join(parts)


def run_compare(
    config: LabConfig,
    strategies: Sequence[Strategy] = tuple(Strategy),
    *,
    out_dir: Path,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> Comparison:
    """Run *config*'s workload once per strategy (one after the other) and compare them.

    A strategy that cannot run on this host (an :class:`EnvironmentProblem` while it starts or
    runs) is recorded as skipped with the reason, and the others still run.
    """
    outcomes: list[Outcome] = []
    for strategy in strategies:
        plan = PLANS[strategy]
        run_config = dataclasses.replace(
            config, client=plan.client, fix=plan.fix, out_dir=out_dir / strategy.value, pcap=None,
        )
        try:
            result = run_lab(run_config)
        except EnvironmentProblem as exc:
            outcome = Outcome(strategy=strategy, plan=plan, result=None, metrics=None, skipped=str(exc))
        else:
            outcome = Outcome(strategy=strategy, plan=plan, result=result, metrics=metrics(result))
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return Comparison(config=config, outcomes=tuple(outcomes), verdict=verdict(outcomes))
