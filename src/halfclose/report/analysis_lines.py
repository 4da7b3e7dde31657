"""The lines ``halfclose analyze`` prints on stderr about its input (plain text, no rich)."""

from __future__ import annotations

from collections.abc import Sequence

from halfclose.analysis import Analysis

__all__ = ["input_lines"]


def input_lines(result: Analysis, captures: Sequence[str]) -> list[str]:
    """One line per capture issue, then one warning naming the first analysis issue and how many
    more there are (the rest are in ``--json``)."""
    lines = [f"halfclose analyze: {issue}" for issue in result.capture_issues]
    if result.issues:
        first = result.issues[0]
        where = captures[first.file_index] if first.file_index < len(captures) else "input"
        more = f" ({len(result.issues) - 1} more like it, see --json)" if len(result.issues) > 1 else ""
        lines.append(f"halfclose analyze: warning: {where} frame {first.frame}: {first.message}{more}")
    return lines
