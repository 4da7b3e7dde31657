"""Rendering records and findings for people: terminal tables and a self-contained HTML page.

No analysis happens here: every figure shown is computed by :mod:`halfclose.analysis` or
:mod:`halfclose.lab.compare`.
"""

from __future__ import annotations

__all__ = ["analysis_html", "comparison_html", "comparison_table"]

from halfclose.report.html import analysis_html, comparison_html
from halfclose.report.terminal import comparison_table
