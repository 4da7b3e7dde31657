"""The analysis's I/O edge: capture files in, analysis out; the reading thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from capture_bytes import Rec, eth, ipv4, pcap, tcp
from halfclose.analysis_io import analyze
from halfclose.errors import InputError


def test_prefetch_keeps_order_and_raises_the_readers_errors() -> None:
    import threading
    from collections.abc import Iterator

    from halfclose.analysis_io import prefetch
    from halfclose.errors import InputError

    def items(fail_at: int | None) -> Iterator[int]:
        for i in range(10):
            if i == fail_at:
                raise InputError("cut")
            yield i

    assert list(prefetch(items(None))) == list(range(10))
    got: list[int] = []
    with pytest.raises(InputError, match="cut"):
        got.extend(prefetch(items(4)))
    assert got == [0, 1, 2, 3]
    it = prefetch(items(None), depth=1)
    assert next(it) == 0
    it.close()  # stops the worker
    assert not any(t.name == "halfclose-capture-reader" for t in threading.enumerate())


def test_analyze_reads_capture_files(tmp_path: Path) -> None:
    c, sv = ("198.18.40.2", 41000), ("198.18.40.1", 80)

    def seg(t_ms: int, from_client: bool, flags: int, seq: int, *, ack: int, payload: bytes = b"") -> Rec:
        (src, sp), (dst, dp) = (c, sv) if from_client else (sv, c)
        body = tcp(sp, dp, seq=seq, ack=ack, flags=flags, payload=payload)
        t = 1_800_000_000_000_000_000 + t_ms * 1_000_000
        return Rec(ts_ns=t, data=eth(0x0800, ipv4(6, body, src=src, dst=dst)))

    records = [
        seg(0, True, 0x02, 100, ack=0), seg(5, False, 0x12, 500, ack=101), seg(10, True, 0x10, 101, ack=501),
        seg(20, True, 0x18, 101, ack=501, payload=b"GET / HTTP/1.1\r\nHost: io.lab.test\r\n\r\n"),
        seg(30, False, 0x18, 501, ack=139, payload=b"HTTP/1.1 200 OK\r\n\r\n"), seg(2030, False, 0x11, 520, ack=139),
    ]
    pcap_file = tmp_path / "s.pcap"
    pcap_file.write_bytes(pcap(records))
    result = analyze([pcap_file])
    assert result.summary.packets == 6 and result.summary.server_closed_first == 1
    (conn,) = result.connections
    assert (conn.server_name, conn.idle_before_close_ns) == ("io.lab.test", 2000 * 1_000_000)
    assert result.profile() == {"io.lab.test": 2.0}
    assert analyze(pcap_file).summary == result.summary  # one name, not a list


def test_a_missing_file_is_one_clear_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.pcap"):
        analyze([tmp_path / "missing.pcap"])


def test_an_error_while_reading_stops_every_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors in the reading thread and in the analysing one (with the reader ahead of it, blocked
    on a full queue) reach the caller, and leave no thread behind."""
    import functools
    import threading
    import time

    import halfclose.capture
    from halfclose.analysis.dns import DnsCollector

    body = tcp(41000, 80, seq=1, ack=0, flags=0x02)
    records = [Rec(ts_ns=1_800_000_000_000_000_000 + k, data=eth(0x0800, ipv4(6, body))) for k in range(40)]
    pcap_file = tmp_path / "s.pcap"
    pcap_file.write_bytes(pcap(records))
    monkeypatch.setattr(
        halfclose.capture, "open_captures", functools.partial(halfclose.capture.open_captures, batch_packets=2)
    )

    def progress(done: int, total: int | None) -> None:
        raise RuntimeError("stop here")

    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="stop here"):
        analyze([pcap_file], progress=progress)
    assert set(threading.enumerate()) <= before

    def feed(self: DnsCollector, *args: object) -> None:
        time.sleep(0.2)  # the reader meanwhile fills the queue and blocks
        raise RuntimeError("stop there")

    with monkeypatch.context() as m:
        m.setattr(DnsCollector, "feed", feed)
        try:
            analyze([pcap_file])
        except RuntimeError as exc:
            kept = exc  # its traceback keeps the analysis's frames alive
        assert "stop there" in str(kept)
        assert set(threading.enumerate()) <= before
    assert analyze([pcap_file]).summary.packets == 40
    assert set(threading.enumerate()) <= before
