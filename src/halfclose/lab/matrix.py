"""``lab matrix``: the same workload for each server x client pair, one lab run each.

Every pair is one :func:`~halfclose.lab.runner.run_lab` with the same configuration but for the
server and the client; its capture is analysed as ``halfclose analyze`` does and its figures are
the run's own (:class:`~halfclose.lab.figures.RunFigures`). A pair that cannot run here (a
:class:`~halfclose.errors.HalfcloseError`: a missing program, a combination the server does not
speak) is kept as skipped with its one-line reason, and the other pairs still run. Each run
cleans up after itself before the next starts.

The pairs range over :class:`~halfclose.lab.config.ServerKind` and
:class:`~halfclose.lab.config.ClientKind` as they are: a new kind is a new row or column, with
no change here. :data:`FIGURES` says which figures the matrix shows; :mod:`halfclose.report`
words and draws them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from halfclose.errors import UsageError
from halfclose.lab.compare import DEFAULTS as COMPARE_DEFAULTS
from halfclose.lab.config import ClientKind, LabConfig, ServerKind
from halfclose.lab.figures import RunFigures
from halfclose.lab.runner import Attempt, attempt

__all__ = [
    "DEFAULTS",
    "FIGURES",
    "Cell",
    "Figure",
    "Matrix",
    "clients",
    "run_matrix",
    "server_close",
    "servers",
]

#: The workload of each pair unless told otherwise: the one ``lab compare`` runs.
DEFAULTS = COMPARE_DEFAULTS

Value = float | int | str | None


def server_close(figures: RunFigures) -> str:
    """How the server closed its connections first, from the capture: the closing record it began
    with, if any (``GOAWAY``: HTTP/2 GOAWAY in the clear; ``close_notify``: a TLS alert in the
    clear; ``TLS record``: short encrypted records, TLS 1.3's close_notify or a GOAWAY inside TLS),
    then ``FIN``, ``RST``, or both (``FIN+RST``), or ``-`` when it closed none first; followed by the
    ``Keep-Alive`` header its responses announced, when they did (``close_notify, FIN, Keep-Alive:
    timeout=2``). Kinds seen on some of the connections only are joined with ``+`` too."""
    wire = figures.wire
    kinds = [name for name, count in (("FIN", wire.server_closed_first), ("RST", wire.server_reset_first)) if count]
    records = [name for name, count in (("GOAWAY", wire.server_goaway_first),
                                        ("close_notify", wire.server_close_notify_first),
                                        ("TLS record", wire.server_tls_record_first)) if count]  # fmt: skip
    close = ", ".join(part for part in ("+".join(records), "+".join(kinds)) if part) or "-"
    return f"{close}, Keep-Alive: {figures.app.keep_alive}" if figures.app.keep_alive else close


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One figure of the matrix: its JSON key and how it is read from a run's figures."""

    key: str
    value: Callable[[RunFigures], Value]


#: The figures of each pair, in the order the matrix shows them.
FIGURES: tuple[Figure, ...] = (
    Figure(key="stale_writes", value=lambda f: f.wire.stale_writes),
    Figure(key="failed_requests", value=lambda f: f.app.app_errors),
    Figure(key="extra_rtts_per_post_idle_request", value=lambda f: f.post_idle_wait_rtts),
    Figure(key="dns_queries_per_request", value=lambda f: f.dns_queries_per_request),
    Figure(key="server_fin_to_gone_ms", value=lambda f: f.wire.server_linger_ms_median),
    Figure(key="server_close", value=server_close),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell(Attempt):
    """One pair's run, or why it could not run."""

    server: ServerKind
    client: ClientKind

    def values(self) -> dict[str, Value]:
        """Figure key -> value (all None for a skipped pair)."""
        f = self.figures
        return {fig.key: (None if f is None else fig.value(f)) for fig in FIGURES}

    def to_json(self) -> dict[str, object]:
        return {
            "server": self.server.value,
            "client": self.client.value,
            "skipped": self.skipped,
            "pcap": str(self.result.pcap) if self.result else None,
            "figures": self.values(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Matrix:
    """Every pair of *servers* and *clients*, clients by rows, servers by columns."""

    config: LabConfig
    servers: tuple[ServerKind, ...]
    clients: tuple[ClientKind, ...]
    cells: tuple[Cell, ...]

    def cell(self, server: ServerKind, client: ClientKind) -> Cell:
        return next(c for c in self.cells if c.server is server and c.client is client)

    def to_json(self) -> dict[str, object]:
        """The run's configuration (server and client aside) and one record per pair."""
        config = {k: v for k, v in self.config.to_json().items() if k not in {"server", "client"}}
        return {
            "config": config,
            "servers": [s.value for s in self.servers],
            "clients": [c.value for c in self.clients],
            "pairs": [c.to_json() for c in self.cells],
        }


K = TypeVar("K", bound=enum.StrEnum)


def _kinds(names: str, kind: type[K], option: str) -> tuple[K, ...]:
    known = [k.value for k in kind]
    wanted = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"{option}: unknown {', '.join(map(repr, unknown))} (choose from {', '.join(known)})")
    if not wanted:
        raise UsageError(f"{option} is empty (choose from {', '.join(known)})")
    return tuple(kind(n) for n in wanted)


def servers(names: str) -> tuple[ServerKind, ...]:
    """The servers a comma-separated list names (``--servers``), in its order.

    Raises:
        UsageError: an unknown name, or none.
    """
    return _kinds(names, ServerKind, "--servers")


def clients(names: str) -> tuple[ClientKind, ...]:
    """The clients a comma-separated list names (``--clients``), in its order.

    Raises:
        UsageError: an unknown name, or none.
    """
    return _kinds(names, ClientKind, "--clients")


def run_matrix(
    config: LabConfig,
    chosen_servers: Sequence[ServerKind],
    chosen_clients: Sequence[ClientKind],
    *,
    out_dir: Path,
    on_start: Callable[[int, int, ServerKind, ClientKind], None] | None = None,
    on_cell: Callable[[int, int, Cell], None] | None = None,
) -> Matrix:
    """Run *config*'s workload for each client (rows) and server (columns), one pair after another.

    *on_start* is called with the pair's number (from 1), the number of pairs and the pair
    before it runs; *on_cell* with the number, the count and the cell once it ran or was skipped.
    """
    pairs = [(s, c) for c in chosen_clients for s in chosen_servers]
    cells: list[Cell] = []
    for number, (server, client) in enumerate(pairs, start=1):
        if on_start is not None:
            on_start(number, len(pairs), server, client)
        pair_config = dataclasses.replace(config, server=server, client=client, pcap=None,
                                          out_dir=out_dir / f"{server.value}-{client.value}")
        result, skipped = attempt(pair_config)
        cell = Cell(server=server, client=client, result=result, skipped=skipped)
        cells.append(cell)
        if on_cell is not None:
            on_cell(number, len(pairs), cell)
    return Matrix(config=config, servers=tuple(chosen_servers), clients=tuple(chosen_clients), cells=tuple(cells))
