"""The analysis on a generated capture (bench/gen_capture.py), IPv4 and IPv6 mixed, against tshark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from halfclose.analysis_io import analyze
from realcap import tshark_counts

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("fmt", "link"), [("pcap", "ethernet"), ("pcapng", "sll2")])
def test_generated_capture_counts_equal_tsharks(fmt: str, link: str, tmp_path: Path) -> None:
    out = tmp_path / f"gen.{fmt}"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gen_capture.py"), str(out), "--packets", "60000", "--format", fmt,
         "--link", link, "--seed", "7"],
        check=True, stdout=subprocess.DEVNULL, timeout=120,
    )
    oracle = tshark_counts(out)
    s = analyze([out]).summary
    assert s.tcp_connections == oracle.connections > 100
    assert s.server_closed_first == oracle.server_closed_first > 0
    assert s.stale_reuse == oracle.client_data_after_server_fin > 0
    assert s.fin_retransmits == oracle.fin_retransmits > 0
    assert s.dns_queries == oracle.dns_queries > 0
