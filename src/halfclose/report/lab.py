"""What ``lab run`` and ``lab compare`` say: every sentence about a lab run, from its figures.

The figures are computed in :mod:`halfclose.lab.figures` (once per run) and chosen in
:mod:`halfclose.lab.compare`; this module only words them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from halfclose.lab.app import RequestRecord
from halfclose.lab.compare import Comparison, Deploy, Outcome, Remedy, Waste, least_wasteful, metrics, ranking
from halfclose.lab.config import LabConfig
from halfclose.lab.figures import AppFigures, LinkFigures, RunFigures, WireFigures
from halfclose.lab.runner import LabResult
from halfclose.lab.topology import Topology

__all__ = [
    "COSTS",
    "DEPLOY_WORDS",
    "RANKING_HEADS",
    "RANKING_NOTE",
    "clean_lines",
    "compare_start_line",
    "comparison_json",
    "deploy_words",
    "link_line",
    "outcome_line",
    "ranking_line",
    "ready_line",
    "report_line",
    "request_line",
    "run_lines",
    "summary_lines",
    "verbatim_lines",
    "verdict",
    "waits_line",
    "wire_line",
]

#: What deploying each remedy takes, for the verdict.
COSTS: dict[str, str] = {
    "none": "nothing",
    "rules": "root and netfilter rules on the device; the server's FIN goes unacknowledged",
    "reap": "a root agent with CAP_NET_ADMIN and NFLOG rules on the device",
    "guard": "a change in the app (one line for a requests app)",
    "requests": "a client that checks idle sockets before reuse",
    "server-rst": "a server change (SO_LINGER 0 on idle close; HAProxy's option nolinger); the app sees "
                  "ECONNRESET or EPIPE, and data still in flight is lost",
    "server-announce": "a server change (Keep-Alive: timeout=N; nginx's second keepalive_timeout parameter); "
                       "only clients that read the header act on it",
    "requests+server-announce": "a server change and a client that checks idle sockets before reuse",
    "guard+server-announce": "a server change and a change in the app (the guard reads Keep-Alive)",
    "dns-cache": "root on the device for a local caching resolver with a TTL floor (dns config --for dnsmasq); "
                 "answers up to the floor out of date",
    "rules-verbatim": "root on the device, and the report's rules do not load on a mainline kernel as written; "
                      "ported, they overwrite every packet mark and reject the final ACK of connections the app "
                      "closes itself",
    "rules-naive": "root on the device; with the owner match dropped the rules reject other connections' ACKs "
                   "too, the final ACK of connections the client closed among them",
    "rules+dns-cache": "root on the device: netfilter rules and a local caching resolver",
    "reap+dns-cache": "root on the device: a root agent and a local caching resolver",
}

#: What each kind of deployment cost is called in the ranking.
DEPLOY_WORDS: dict[Deploy, str] = {
    Deploy.ROOT: "root on the device",
    Deploy.SERVER: "a server change",
    Deploy.APP: "an app change",
}


def _ms(value: float | None, unit: str = " ms") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def report_line(path: Path) -> str:
    """The line naming a report page once it is written."""
    return f"report: {path}"


def clean_lines(removed: Sequence[str]) -> list[str]:
    """What ``lab clean`` says: each thing it removed, or that there was nothing."""
    return [f"removed {what}" for what in removed] or ["nothing to clean"]


# --------------------------------------------------------------------------------------------
# lab run
# --------------------------------------------------------------------------------------------


def ready_line(run_id: str, topo: Topology, config: LabConfig) -> str:
    """The line saying the lab is up, before the app starts."""
    addrs = topo.addresses
    return (f"lab {run_id}: phone {addrs.phone(config.ipv6)} (uid {config.uid}, {config.client.value}) -> "
            f"server {addrs.server(config.ipv6)} ({config.server.value} + {config.dns.value} DNS); "
            f"namespaces {topo.phone}, {topo.link}, {topo.server}")


def request_line(record: RequestRecord) -> str:
    """One request as the app reported it."""
    mark = "DEAD CONNECTION, retried" if record.reused_dead else ("reused" if record.reused else "new connection")
    status = "ok" if record.ok else f"FAILED: {record.error}"
    return f"  request {record.index + 1}: {record.latency_ns / 1e6:8.1f} ms  {mark:<24} {status}"


def summary_lines(app: AppFigures, config: LabConfig) -> list[str]:
    """What the app saw, as lines."""
    lines = [
        f"{app.requests} requests with client {config.client.value}, {config.gap_s:g} s apart; "
        f"server idle timeout {config.idle_timeout_s:g} s ({config.server.value}), DNS TTL {config.dns_ttl_s} s "
        f"({config.dns.value}), fix: {config.fix.value}",
        f"{app.ok} succeeded, {app.app_errors} failed as the app saw them; "
        f"{app.connections} connections carried responses"
        + (f"; {app.dns_lookups} DNS lookups by the app" if app.dns_lookups >= 0 else ""),
        f"{app.reused_dead} of {app.post_idle} post-idle requests found their reused connection closed "
        "by the server and were retried on a new connection",
    ]
    if app.reused_dead:
        lines.append(f"median latency: {_ms(app.median_ms_dead)} for those, {_ms(app.median_ms_other)} for the others")
    else:
        lines.append(f"median latency: {_ms(app.median_ms_post_idle)} after an idle gap, "
                     f"{_ms(app.median_ms_warm)} otherwise")
    return lines


def wire_line(wire: WireFigures) -> str:
    """One line of what the capture shows."""
    rtt = "-" if wire.rtt_ms_median is None else f"{wire.rtt_ms_median:.2f} ms"
    return (
        f"on the wire: {wire.tcp_connections} TCP connections, {wire.stale_writes} with client payload after "
        f"the server's FIN, {wire.server_rsts} reset by the server, {wire.server_fin_retransmits} server FIN "
        f"retransmissions, {wire.dns_queries} DNS queries; handshake RTT median {rtt}"
    )


def waits_line(figures: RunFigures) -> str:
    """One line: how long requests waited for a live connection, in ms and round trips."""
    if figures.post_idle_wait_ms is None:
        return "no post-idle request was matched to a connection in the capture"
    rtts = "" if figures.post_idle_wait_rtts is None else f" = {figures.post_idle_wait_rtts:.1f} round trips"
    cold = "" if figures.first_wait_ms is None else f"; the first request waited {figures.first_wait_ms:.1f} ms"
    return (f"post-idle requests waited {figures.post_idle_wait_ms:.1f} ms{rtts} (median) for a live connection "
            f"(finding the old one dead, DNS, a new handshake){cold}")


def link_line(link: LinkFigures) -> str:
    """One line: the round trip asked of the link, and the one the capture shows."""
    asked = f"link ({link.mode}): RTT asked {link.rtt_ms_asked:g} ms"
    if link.jitter_ms or link.loss_pct:
        asked += f" (jitter {link.jitter_ms:g} ms, loss {link.loss_pct:g} %, seed {link.seed})"
    if link.rtt_ms_median is None or link.rtt_ms_min is None or link.rtt_ms_max is None:
        return f"{asked}; measured: {link.note or 'no TCP handshake in the capture'}"
    return (f"{asked}; measured {link.rtt_ms_median:.2f} ms median over {link.handshakes} TCP "
            f"handshakes (min {link.rtt_ms_min:.2f}, max {link.rtt_ms_max:.2f})")


def run_lines(result: LabResult) -> list[str]:
    """What ``lab run`` prints once the run is over."""
    figures = result.figures
    return [
        *summary_lines(figures.app, result.config),
        wire_line(figures.wire),
        waits_line(figures),
        link_line(figures.link),
        f"capture: {result.pcap}",
    ]


# --------------------------------------------------------------------------------------------
# lab compare
# --------------------------------------------------------------------------------------------


def compare_start_line(count: int) -> str:
    """The line before the remedies run."""
    return f"comparing {count} strategies, one lab run each ..."


def outcome_line(outcome: Outcome) -> str:
    """A remedy's progress line, once its run is over."""
    name = outcome.remedy.name
    if outcome.figures is None:
        return f"  {name:<9} skipped: {outcome.skipped}"
    app, wire = outcome.figures.app, outcome.figures.wire
    return (f"  {name:<9} done: {app.ok}/{app.requests} ok, {wire.stale_writes} stale writes, "
            f"{wire.dns_queries} DNS queries")


def verdict(outcomes: Sequence[Outcome]) -> str:
    """One paragraph: which remedy wasted least and at what cost, from the figures."""
    best = least_wasteful(outcomes)
    if best is None or best.figures is None:
        return "No strategy could run on this host: " + "; ".join(f"{o.remedy.name}: {o.skipped}" for o in outcomes)
    f = best.figures
    parts = [
        f"{best.remedy.name} wasted least: post-idle requests waited {_ms(f.post_idle_wait_ms)} "
        f"({_ms(f.post_idle_wait_rtts, '')} round trips) for a live connection and took "
        f"{_ms(f.app.median_ms_post_idle)} in all at the median, {f.wire.stale_writes} connections carried "
        f"payload after a server FIN, the server retransmitted {f.wire.server_fin_retransmits} FINs, and the app "
        f"made {f.wire.dns_queries} DNS queries over {f.wire.tcp_connections} connections; "
        f"its cost: {COSTS.get(best.remedy.name, 'not known')}."
    ]
    baseline = next((o for o in outcomes if o.remedy.name == "none" and o.figures is not None), None)
    if baseline is not None and baseline is not best and baseline.figures is not None:
        b = baseline.figures
        parts.append(
            f"Doing nothing cost {_ms(b.post_idle_wait_ms)} ({_ms(b.post_idle_wait_rtts, '')} round trips) "
            f"of waiting per post-idle request, {b.wire.stale_writes} stale writes answered by {b.wire.rsts} resets "
            f"and {b.wire.dns_queries} DNS queries."
        )
    others = [
        f"{o.remedy.name}: {_ms(o.figures.post_idle_wait_ms)} waiting, {o.figures.wire.stale_writes} stale writes, "
        f"{o.figures.wire.server_fin_retransmits} server FIN retransmissions, {o.figures.wire.dns_queries} DNS queries"
        for o in outcomes
        if o.figures is not None and o is not best and o is not baseline
    ]
    if others:
        parts.append("Others: " + "; ".join(others) + ".")
    ranked = ranking(outcomes)
    if len(ranked) > 2:
        parts.append("Ranked by the waste left, then by what they take to deploy: "
                     + ", ".join(o.remedy.name for o in ranked) + ".")
    skipped = [o for o in outcomes if not o.ran()]
    if skipped:
        parts.append("Skipped: " + "; ".join(f"{o.remedy.name} ({o.skipped})" for o in skipped) + ".")
    return " ".join(parts)


def deploy_words(remedy: Remedy) -> str:
    """What deploying *remedy* takes, in a few words ("nothing" for nothing)."""
    return ", ".join(DEPLOY_WORDS[d] for d in Deploy if d in remedy.deploy) or "nothing"


def ranking_line(rank: int, outcome: Outcome) -> tuple[str, ...]:
    """One row of the ranking: rank, strategy, the waste left, what deploying it takes."""
    assert outcome.figures is not None
    w = Waste.of(outcome.figures)
    return (str(rank), outcome.remedy.name, f"{w.wait_rtts:.1f}", str(w.packets), str(w.dns_queries),
            f"{w.failed} / {w.app_errors}", str(w.stale_writes), f"{w.server_fin_wait_ms:.0f} ms",
            deploy_words(outcome.remedy))


#: The ranking's column heads, in the order of :func:`ranking_line`.
RANKING_HEADS = ("#", "strategy", "RTTs", "pkts", "DNS", "fail/err", "stale", "FIN_WAIT", "deploy")
#: What the ranking's terse heads mean.
RANKING_NOTE = ("RTTs: round trips a post-idle request waited for a live connection (median); pkts: packets; DNS: "
                "DNS queries; fail/err: requests failed / errors the app saw and retried; stale: connections with "
                "payload after the server's FIN; FIN_WAIT: the server's median time from its FIN to the client's "
                "FIN or RST")


def verbatim_lines(outcome: Outcome) -> list[str]:
    """What the report's own rules did in a ``rules-verbatim`` run (nothing for other runs)."""
    v = outcome.result.verbatim if outcome.result is not None else None
    if v is None or outcome.figures is None:
        return []
    lines = [f"{outcome.remedy.name}: the kernel refused {r.command!r}: {r.message}" for r in v.refused]
    how = ("owner match dropped" if outcome.remedy.fix.value == "rules-naive"
           else "owner match moved to OUTPUT, where it labels the app's connections")
    lost = outcome.figures.wire.client_close_unacked
    closed = ("1 connection the client closed itself lost its" if lost == 1
              else f"{lost} connections the client closed itself lost their")
    lines.append(f"{outcome.remedy.name}: ported ({how}), the rules reset {v.rejected} "
                 f"outgoing packets; {closed} final ACK (the server repeated its FIN; halfclose rules let that ACK "
                 f"through); {v.marks_overwritten} of the app's {v.app_packets} packets left with their mark "
                 "overwritten")
    return lines


def comparison_json(comparison: Comparison) -> dict[str, object]:
    """The comparison as JSON: its configuration, the verdict, each remedy's metrics."""
    return {
        "config": comparison.config.to_json(),
        "verdict": verdict(comparison.outcomes),
        "strategies": [
            {
                "strategy": o.remedy.name,
                "client": o.remedy.client.value,
                "fix": o.remedy.fix.value,
                "skipped": o.skipped,
                "pcap": str(o.result.pcap) if o.result else None,
                "metrics": metrics(o.figures) if o.figures else None,
                "deploy": sorted(d.value for d in o.remedy.deploy),
                "verbatim": asdict(o.result.verbatim) if o.result and o.result.verbatim else None,
            }
            for o in comparison.outcomes
        ],
        "ranking": [o.remedy.name for o in ranking(comparison.outcomes)],
    }
