"""Loading a report page in headless Chromium, offline, as the HTML tests do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def load(page_path: Path, shot: Path, selectors: Sequence[str]) -> tuple[list[str], dict[str, tuple[float, float]]]:
    """Open *page_path* with every network request refused; return the console errors and the
    size of the first element each of *selectors* finds (0 x 0 when none), after a screenshot."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    sizes: dict[str, tuple[float, float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Offline: any request leaving the file is refused and would show up as an error.
            page.route("http*://**", lambda route: route.abort())
            page.goto(page_path.as_uri())
            page.wait_for_selector(".main-svg", timeout=30_000)
            for selector in selectors:
                element = page.query_selector(selector)
                box = element.bounding_box() if element else None
                sizes[selector] = (box["width"], box["height"]) if box else (0.0, 0.0)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return errors, sizes
