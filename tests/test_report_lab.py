"""The lab's sentences, from made-up figures."""

from __future__ import annotations

import dataclasses

from halfclose.lab.app import RequestRecord
from halfclose.lab.compare import REMEDIES, Outcome
from halfclose.report.lab import clean_lines, outcome_line, request_line, waits_line, wire_line
from labfigures import figures


def test_request_line_says_how_the_connection_was_found() -> None:
    record = RequestRecord(index=1, start_ns=0, latency_ns=85_400_000, ok=True, status=200, body_bytes=20000,
                           reused=True, reused_dead=True, attempts=2, error="RemoteDisconnected", local_port=40001,
                           dns_lookups=1)
    assert request_line(record) == "  request 2:     85.4 ms  DEAD CONNECTION, retried ok"
    failed = dataclasses.replace(record, ok=False, reused_dead=False, error="timed out")
    assert request_line(failed).endswith("reused                   FAILED: timed out")


def test_waits_and_wire_lines() -> None:
    f = figures(post_idle_wait_ms=102.5, post_idle_wait_rtts=2.05, stale_writes=2, rsts=2, dns_queries=6)
    assert waits_line(f) == ("post-idle requests waited 102.5 ms = 2.0 round trips (median) for a live connection "
                             "(finding the old one dead, DNS, a new handshake); the first request waited 150.0 ms")
    unmatched = dataclasses.replace(f, post_idle_wait_ms=None, post_idle_wait_rtts=None)
    assert waits_line(unmatched) == "no post-idle request was matched to a connection in the capture"
    assert wire_line(f.wire) == ("on the wire: 6 TCP connections, 2 with client payload after the server's FIN, "
                                 "2 reset by the server, 0 server FIN retransmissions, 6 DNS queries; "
                                 "handshake RTT median 50.00 ms")


def test_outcome_and_clean_lines() -> None:
    skipped = Outcome(remedy=REMEDIES[1], result=None, skipped="nft is not installed")
    assert outcome_line(skipped) == "  rules     skipped: nft is not installed"
    assert clean_lines([]) == ["nothing to clean"]
    assert clean_lines(["namespace hc-1-phone"]) == ["removed namespace hc-1-phone"]
