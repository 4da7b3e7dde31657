"""Analysis: connection records, DNS exchanges, findings and server idle timeouts.

Pure over packet columns and records: nothing here opens a file or starts a thread. Feed it
:class:`~halfclose.capture.PacketBatch` blocks with :func:`analyze_batches`; to read capture
files, use the I/O edge :func:`halfclose.analysis_io.analyze`::

    from halfclose.analysis_io import analyze

    result = analyze(["phone.pcapng"])
    print(result.summary.headline)
    for f in result.findings: ...

Each record kind is declared once (:mod:`halfclose.analysis.schema`); docs/analyze.md documents
every field from those declarations. The writers are in :mod:`halfclose.report.analysis_files`.
"""

from __future__ import annotations

from halfclose.analysis.dns import AnalysisIssue, DnsExchange, DnsQueries, DnsResult, QueryTimes
from halfclose.analysis.engine import Analysis, AnalysisOptions, analyze_batches
from halfclose.analysis.findings import (
    EndedBy,
    Finding,
    FindingKind,
    LostFinAck,
    Outcome,
    ServerTimeout,
    SilentHalfClose,
    StaleReuse,
)
from halfclose.analysis.names import NameSource
from halfclose.analysis.summary import FindingTotals, Summary, headline, summarize
from halfclose.analysis.tcp import (
    CloseKind,
    ClosingRecord,
    Connection,
    ConnectionTable,
    ConnState,
    HalfCloseEnd,
    OrigBy,
    Side,
)

__all__ = [
    "Analysis",
    "AnalysisIssue",
    "AnalysisOptions",
    "CloseKind",
    "ClosingRecord",
    "ConnState",
    "Connection",
    "ConnectionTable",
    "DnsExchange",
    "DnsQueries",
    "DnsResult",
    "EndedBy",
    "Finding",
    "FindingKind",
    "FindingTotals",
    "HalfCloseEnd",
    "LostFinAck",
    "NameSource",
    "OrigBy",
    "Outcome",
    "QueryTimes",
    "ServerTimeout",
    "Side",
    "SilentHalfClose",
    "StaleReuse",
    "Summary",
    "analyze_batches",
    "headline",
    "summarize",
]
