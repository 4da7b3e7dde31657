"""Rendering records and findings for people: terminal text and tables, self-contained HTML pages.

No analysis happens here: every figure shown is computed by :mod:`halfclose.analysis` or
:mod:`halfclose.lab.figures`. Import the module you need (this package loads none of them, so
that sentences come without plotly): :mod:`~halfclose.report.analysis_terminal` and
:mod:`~halfclose.report.html` (pages), :mod:`~halfclose.report.lab` (the lab's sentences),
:mod:`~halfclose.report.terminal` and :mod:`~halfclose.report.matrix` (the lab's tables),
:mod:`~halfclose.report.files` (writing a report atomically).
"""

from __future__ import annotations

__all__: list[str] = []
