"""What the probe reads from real files: pcap and pcapng shapes, and dumpcap ring files of one
interface, renamed, found to be one capture by their section headers and times."""

from __future__ import annotations

import http.client
import http.server
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcap import generate, tshark_stream_packets, unsplit_connections
from halfclose.errors import InputError
from halfclose.fleet._engine import AnalysisKnobs, analyze_files, probe
from halfclose.fleet.runner import plan


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"x" * 300
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """dumpcap's ring buffer on the loopback interface, 12 packets a file, over keep-alive HTTP."""
    if shutil.which("dumpcap") is None:
        pytest.skip("dumpcap is not installed")
    folder = tmp_path_factory.mktemp("ring")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cap = subprocess.Popen(
        ["dumpcap", "-q", "-i", "lo", "-f", f"tcp port {port}", "-b", "packets:12", "-w", str(folder / "lo.pcapng")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not list(folder.glob("lo_*.pcapng")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for _ in range(4):
                conn.request("GET", "/")
                conn.getresponse().read()
                time.sleep(0.05)
            conn.close()
        time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGTERM)
        _, err = cap.communicate(timeout=20)
        server.shutdown()
        server.server_close()
    files = sorted(folder.glob("lo_*.pcapng"))
    assert len(files) >= 3, err
    yield files


def test_pcapng_ring_renamed_is_one_capture_by_interface_and_time(ring: list[Path], tmp_path: Path) -> None:
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    names = [f"{chr(ord('z') - i)}-part.pcapng" for i in range(len(ring))]  # name order against time order
    for src, name in zip(ring, names, strict=True):
        shutil.copy(src, renamed / name)
    first = probe(str(renamed / names[0]))
    assert first.interface == "lo" and first.shape.startswith("pcapng/") and "if=lo/" in first.shape
    assert first.first_ts_ns is not None and first.last_ts_ns is not None
    assert first.first_ts_ns <= first.last_ts_ns
    (one,) = plan([str(renamed)]).sets
    assert [Path(p).name for p in one.paths] == names
    merged = tmp_path / "merged.pcapng"
    subprocess.run(["mergecap", "-w", str(merged), *map(str, ring)], check=True)
    analysis = analyze_files(list(one.paths), AnalysisKnobs())
    cols = analysis.connections.to_pylist()
    assert Counter(r["orig_pkts"] + r["resp_pkts"] for r in cols) == tshark_stream_packets(merged)
    assert len(cols) == 2
    where = {"file", "file_index", "first_frame", "run_id"}
    assert sorted(({k: v for k, v in r.items() if k not in where} for r in cols), key=repr) == unsplit_connections(
        merged
    )


def test_same_interface_overlapping_in_time_stays_apart(ring: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "phones"
    folder.mkdir()
    shutil.copy(ring[0], folder / "phone-a.pcapng")
    shutil.copy(ring[0], folder / "phone-b.pcapng")  # the same times: two machines, not one capture
    shutil.copy(ring[1], folder / "phone-c.pcapng")
    assert len(plan([str(folder)]).sets) == 3


def test_pcap_shape_and_first_packet(tmp_path: Path) -> None:
    pcap = generate(tmp_path / "g.pcap", 2_000, seed=5)
    f = probe(str(pcap))
    assert f.shape == "pcap/1/128/us" and f.interface == "" and f.last_ts_ns is None
    assert f.size == pcap.stat().st_size and f.first_ts_ns is not None and f.first_ts_ns > 1_600_000_000 * 10**9
    (tmp_path / "x.pcap").write_bytes(b"nope")
    with pytest.raises(InputError, match=r"x\.pcap"):
        probe(str(tmp_path / "x.pcap"))
