"""The stderr lines of ``halfclose analyze`` about its input."""

from __future__ import annotations

import dataclasses

from halfclose.analysis import AnalysisIssue, analyze_batches
from halfclose.capture import Severity
from halfclose.capture.reader import CaptureIssue
from halfclose.report.analysis_lines import input_lines


def _issue(frame: int) -> AnalysisIssue:
    return AnalysisIssue(kind="dns_truncated", file_index=1, frame=frame, message="DNS message cut short")


def test_capture_issues_each_a_line_then_one_warning_for_the_analysis_issues() -> None:
    empty = analyze_batches([])
    cap = CaptureIssue(file="b.pcap", file_index=1, offset=24, severity=Severity.ERROR, message="truncated record")
    result = dataclasses.replace(empty, capture_issues=(cap,), issues=(_issue(7), _issue(9), _issue(12)))
    assert input_lines(result, ["a.pcap", "b.pcap"]) == [
        "halfclose analyze: b.pcap: error at byte 24: truncated record",
        "halfclose analyze: warning: b.pcap frame 7: DNS message cut short (2 more like it, see --json)",
    ]


def test_one_issue_has_no_count_and_an_unknown_file_is_the_input() -> None:
    result = dataclasses.replace(analyze_batches([]), issues=(_issue(3),))
    assert input_lines(result, ["-"]) == ["halfclose analyze: warning: input frame 3: DNS message cut short"]
    assert input_lines(analyze_batches([]), ["a.pcap"]) == []
