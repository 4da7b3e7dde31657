"""Analysis: connection records, DNS exchanges, findings and server idle timeouts.

Start with :func:`analyze` (capture files) or :func:`analyze_batches` (packet columns)::

    result = analyze(["phone.pcapng"])
    print(result.summary.headline)
    for f in result.findings: ...

Everything here is pure over packet columns and records; see docs/analyze.md for every field.
"""

from __future__ import annotations

from halfclose.analysis.dns import AnalysisIssue, DnsExchange, DnsResult
from halfclose.analysis.engine import Analysis, AnalysisOptions, Summary, analyze, analyze_batches
from halfclose.analysis.findings import Finding, FindingKind, ServerTimeout
from halfclose.analysis.names import NameSource
from halfclose.analysis.tcp import CloseKind, ClosingRecord, Connection, ConnState, HalfCloseEnd, OrigBy, Side

__all__ = [
    "Analysis",
    "AnalysisIssue",
    "AnalysisOptions",
    "CloseKind",
    "ClosingRecord",
    "ConnState",
    "Connection",
    "DnsExchange",
    "DnsResult",
    "Finding",
    "FindingKind",
    "HalfCloseEnd",
    "NameSource",
    "OrigBy",
    "ServerTimeout",
    "Side",
    "Summary",
    "analyze",
    "analyze_batches",
]
