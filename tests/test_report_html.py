"""The HTML report in headless Chromium: it loads offline without errors and shows its charts."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser import CHROMIUM, load
from runcli import halfclose

SELECTORS = ("table", "#chart-0 .main-svg", "#chart-1 .main-svg", "#chart-0 .bars path",
             "#chart-0 .scatterlayer .point")


def _load(page_path: Path, shot: Path) -> tuple[list[str], dict[str, tuple[float, float]]]:
    return load(page_path, shot, SELECTORS)


@pytest.mark.root
def test_compare_report_in_chromium(compare_run: dict[str, object], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: run ./scripts/setup")
    html = compare_run["html"]
    assert isinstance(html, Path)
    text = html.read_text()
    assert "<script src=\"http" not in text, "plotly.js is embedded, not fetched"
    shot = tmp_path / "report.png"
    errors, sizes = _load(html, shot)
    assert errors == []
    for selector, (width, height) in sizes.items():
        assert width > 0 and height > 0, selector
    assert shot.stat().st_size > 50_000
    for name in ("none", "rules", "reap", "guard", "requests"):
        assert f"{name} (" in text


@pytest.mark.root
def test_analyze_html_in_chromium(compare_run: dict[str, object], tmp_path: Path) -> None:
    data = compare_run["json"]
    assert isinstance(data, dict)
    pcap = data["strategies"][0]["pcap"]
    out = tmp_path / "analysis.html"
    result = halfclose("analyze", pcap, "--html", str(out), "-q")
    assert result.returncode == 0, result.stderr
    errors, sizes = _load(out, tmp_path / "analysis.png")
    assert errors == []
    assert sizes["#chart-0 .main-svg"][0] > 0
    assert sizes["#chart-0 .bars path"][1] > 0
