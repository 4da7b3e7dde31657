"""Prometheus metrics of the reaper and the watch view, named by prometheus_client's conventions.

Pure parts: :class:`LatencyHistogram` (the reaper fills it; one list increment per destroy),
:func:`parse_address` and the collectors, which turn the reaper's :class:`~halfclose.reap.agent.Counters`
or the watch view's latest snapshot into metric families at scrape time (nothing is updated per
event but the histogram, so metrics cost the reaper nothing between scrapes). :func:`serve` is the
I/O edge: prometheus_client's HTTP server in a daemon thread, in the network namespace of the caller.

Reaper metrics:

=========================================  =========  ======================================================
``halfclose_reap_fins_seen_total``         counter    server FINs logged to the NFLOG group
``halfclose_sockets_destroyed_total``      counter    sockets destroyed, by ``uid``
``halfclose_sockets_skipped_total``        counter    sockets left alone, by ``reason`` and ``uid``
``halfclose_sockets_vanished_total``       counter    sockets gone before they could be destroyed
``halfclose_reap_errors_total``            counter    refused sock_diag requests
``halfclose_nflog_overruns_total``         counter    NFLOG receive buffer overruns (FINs lost, then swept)
``halfclose_reap_sweeps_total``            counter    dumps of all CLOSE_WAIT sockets
``halfclose_reap_reloads_total``           counter    configuration reloads (SIGHUP)
``halfclose_close_wait_sockets``           gauge      CLOSE_WAIT sockets now, by ``uid`` (all uids)
``halfclose_fin_to_destroy_seconds``       histogram  from the FIN's NFLOG copy to the destroy's answer
``halfclose_reap_info``                    info       ``version``, ``trigger``, ``backend``
=========================================  =========  ======================================================
"""

from __future__ import annotations

import bisect
import errno
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from halfclose.errors import EnvironmentProblem, UsageError
from halfclose.reap.watch import Row

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "LATENCY_BUCKETS",
    "LatencyHistogram",
    "MetricsAddress",
    "ReaperCollector",
    "WatchCollector",
    "WatchFigures",
    "parse_address",
    "serve",
    "watch_figures",
]

#: Upper bounds (seconds) of the FIN -> destroy histogram: sub-millisecond resolution for the
#: usual case, up to the settle time for sockets that were looked at again.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


@dataclass(slots=True)
class LatencyHistogram:
    """Counts of observations per bucket (the last one is +Inf) and their sum."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, seconds: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs as Prometheus exposes them, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(repr, self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsAddress:
    """Where the metrics listener binds: *host* ('' for every IPv4 address) and *port*."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host or '0.0.0.0'}:{self.port}"


def parse_address(text: str) -> MetricsAddress:
    """``PORT``, ``ADDR:PORT`` or ``[IPv6]:PORT``.

    Raises:
        UsageError: not of that form, a port outside 1-65535 or an address that is not an IP address.
    """
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "", value
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    hint = "use PORT, ADDR:PORT or [IPv6]:PORT (e.g. 9101 or 127.0.0.1:9101)"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"metrics address {text!r} has no port 1-65535: {hint}")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"metrics address {text!r}: {host!r} is not an IP address: {hint}") from None
    return MetricsAddress(host=host, port=int(port_text))


class _CountersLike(Protocol):
    fins_seen: int
    vanished: int
    errors: int
    overruns: int
    sweeps: int
    reloads: int
    destroyed_by_uid: dict[int, int]
    skipped_by: dict[tuple[str, int], int]


class ReaperCollector:
    """The reaper's metrics, read at scrape time.

    *counters* and *latency* are the reaper's live objects (the reaper thread mutates them; a
    scrape copies the dicts first). *close_wait* returns CLOSE_WAIT sockets per uid now. *info*
    is a callable so that a reload's new trigger shows.
    """

    def __init__(
        self,
        *,
        counters: Callable[[], _CountersLike],
        latency: Callable[[], LatencyHistogram],
        close_wait: Callable[[], Mapping[int, int]],
        info: Callable[[], Mapping[str, str]],
    ) -> None:
        self._counters = counters
        self._latency = latency
        self._close_wait = close_wait
        self._info = info

    def collect(self) -> Iterator[Metric]:
        """The metric families (prometheus_client's Collector protocol)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        c = self._counters()
        yield InfoMetricFamily("halfclose_reap", "The reaper: version, trigger and netfilter backend",
                               value=dict(self._info()))
        for name, doc, value in (
            ("halfclose_reap_fins_seen", "Server FINs logged to the NFLOG group", c.fins_seen),
            ("halfclose_sockets_vanished", "Sockets gone before they could be destroyed", c.vanished),
            ("halfclose_reap_errors", "sock_diag requests the kernel refused", c.errors),
            ("halfclose_nflog_overruns", "NFLOG receive buffer overruns (FINs lost, then swept)", c.overruns),
            ("halfclose_reap_sweeps", "Dumps of all CLOSE_WAIT sockets", c.sweeps),
            ("halfclose_reap_reloads", "Configuration reloads", c.reloads),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        destroyed = CounterMetricFamily("halfclose_sockets_destroyed", "Sockets destroyed (SOCK_DESTROY)",
                                        labels=["uid"])
        for uid, n in sorted(dict(c.destroyed_by_uid).items()):
            destroyed.add_metric([str(uid)], n)
        yield destroyed
        skipped = CounterMetricFamily("halfclose_sockets_skipped", "Sockets left alone, by reason",
                                      labels=["reason", "uid"])
        for (reason, uid), n in sorted(dict(c.skipped_by).items()):
            skipped.add_metric([reason, str(uid)], n)
        yield skipped
        yield from _close_wait_gauge(GaugeMetricFamily, self._close_wait())
        hist = self._latency()
        family = HistogramMetricFamily("halfclose_fin_to_destroy_seconds",
                                       "Seconds from the server FIN's NFLOG copy to the socket's destruction")
        family.add_metric([], hist.cumulative(), sum_value=hist.total)
        yield family


def _close_wait_gauge(gauge: type, by_uid: Mapping[int, int]) -> Iterator[Metric]:
    metric = gauge("halfclose_close_wait_sockets", "TCP sockets in CLOSE_WAIT now", labels=["uid"])
    for uid, n in sorted(by_uid.items()):
        metric.add_metric([str(uid)], n)
    yield metric


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchFigures:
    """What the watch view exports from one snapshot, per uid."""

    close_wait: Mapping[int, int]
    close_wait_unread: Mapping[int, int]
    oldest_close_wait: Mapping[int, float]
    sockets: Mapping[int, int]


class WatchCollector:
    """The watch view's metrics: the figures of its latest snapshot (*figures* returns them)."""

    def __init__(self, *, figures: Callable[[], WatchFigures | None], info: Mapping[str, str]) -> None:
        self._figures = figures
        self._info = dict(info)

    def collect(self) -> Iterator[Metric]:
        """The metric families (prometheus_client's Collector protocol)."""
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        yield InfoMetricFamily("halfclose_watch", "The watch view: version and namespace", value=self._info)
        figures = self._figures()
        if figures is None:
            return
        yield from _close_wait_gauge(GaugeMetricFamily, figures.close_wait)
        for name, doc, values in (
            ("halfclose_close_wait_unread_sockets", "CLOSE_WAIT sockets with unread data", figures.close_wait_unread),
            ("halfclose_close_wait_oldest_seconds", "Age of the oldest CLOSE_WAIT socket",
             figures.oldest_close_wait),
            ("halfclose_tcp_sockets", "TCP sockets (all states but TIME_WAIT)", figures.sockets),
        ):
            metric = GaugeMetricFamily(name, doc, labels=["uid"])
            for uid, value in sorted(values.items()):
                metric.add_metric([str(uid)], value)
            yield metric


def watch_figures(rows: Iterable[Row]) -> WatchFigures:
    """Per-uid sums of the watch view's rows."""
    cw: dict[int, int] = {}
    unread: dict[int, int] = {}
    oldest: dict[int, float] = {}
    total: dict[int, int] = {}
    for row in rows:
        cw[row.uid] = cw.get(row.uid, 0) + row.close_wait
        unread[row.uid] = unread.get(row.uid, 0) + row.close_wait_unread
        total[row.uid] = total.get(row.uid, 0) + row.total
        if row.oldest_close_wait is not None:
            oldest[row.uid] = max(oldest.get(row.uid, 0.0), row.oldest_close_wait)
    return WatchFigures(close_wait=cw, close_wait_unread=unread, oldest_close_wait=oldest, sockets=total)


def serve(collector: object, address: MetricsAddress) -> Callable[[], None]:
    """Serve *collector* on *address* (``/metrics``) from a daemon thread; return the stopper.

    Raises:
        EnvironmentProblem: the address is taken or cannot be bound here.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    try:
        server, thread = start_http_server(address.port, address.host or "0.0.0.0", registry=registry)
    except OSError as exc:
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise EnvironmentProblem(
            f"metrics address {address} {why}: choose another with --metrics [ADDR:]PORT"
        ) from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
