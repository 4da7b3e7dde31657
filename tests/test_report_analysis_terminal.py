from __future__ import annotations

import io

from rich.console import Console

from halfclose.analysis import analyze_batches
from halfclose.report.analysis_terminal import render
from pktbuild import MS, Builder, S
from test_engine import stale_scenario


def _text(b: Builder) -> str:
    out = io.StringIO()
    render(analyze_batches(b.batches(5)), Console(file=out, width=160, color_system=None))
    return out.getvalue()


def test_headline_counts_and_tables() -> None:
    text = _text(stale_scenario())
    assert "1 request paid for a dead connection: 1 RTT and 1 DNS lookup each, 10 ms in all." in text
    assert "Server idle timeouts" in text and "img.lab.test" in text and "2.000 s" in text
    assert "Requests written into half-closed connections" in text


def test_ipv6_addresses_are_not_taken_for_markup() -> None:
    b = Builder()
    c = b.tcp(("fd12:3456:789a::2", 40000), ("fd12:3456:789a::1", 8080))
    c.handshake(0)
    c.data(20 * MS, True, 10)
    c.data(30 * MS, False, 10)
    c.fin(5 * S + 30 * MS, False)
    assert "[fd12:3456:789a::1]:8080" in _text(b)
