from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture_bytes import Rec, eth, ipv4, pcap, tcp
from halfclose.analysis import FindingKind
from halfclose.analysis_io import analyze
from halfclose.netns import Claim
from halfclose.proc import run
from realcap import RealCapture, make_capture, tshark_counts, workdir

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "halfclose", "analyze", *args], capture_output=True, env=env, timeout=120,
        input=stdin, check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


@pytest.fixture(scope="module", params=[False, True], ids=["ipv4", "ipv6"])
def capture(request: pytest.FixtureRequest) -> Iterator[RealCapture]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with Claim() as claim:
        yield make_capture(claim, workdir(claim), ipv6=bool(request.param))


@pytest.mark.root
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_counts_equal_tsharks(capture: RealCapture, fmt: str, tmp_path: Path) -> None:
    path = capture.pcap
    if fmt == "pcapng":
        path = tmp_path / "c.pcapng"
        run(["editcap", "-F", "pcapng", str(capture.pcap), str(path)])
    oracle = tshark_counts(path)
    result = analyze([path])
    s = result.summary
    assert s.tcp_connections == oracle.connections == 4
    assert s.server_closed_first == oracle.server_closed_first == 2
    assert s.stale_reuse == oracle.client_data_after_server_fin == 1
    assert s.fin_retransmits == oracle.fin_retransmits
    assert s.dns_queries == oracle.dns_queries == 2


@pytest.mark.root
def test_findings_on_real_nginx(capture: RealCapture) -> None:
    result = analyze([capture.pcap])
    (server,) = result.servers
    assert server.server == "img.lab.test"
    # nginx's 2 s timer: never early, late by however long it waited for a CPU (0.3 s allowed)
    assert -0.1 <= server.idle_timeout_s - 2.0 <= 0.3
    assert server.samples == 2
    (stale,) = [f for f in result.findings if f.kind is FindingKind.STALE_REUSE]
    assert stale.outcome == "rst"
    assert stale.replacement_uid is not None
    assert stale.dns_lookups == 1
    assert isinstance(stale.wasted_ns, int) and stale.wasted_ns > 0
    silent = [f for f in result.findings if f.kind is FindingKind.SILENT_HALF_CLOSE]
    assert sorted(str(f.ended_by) for f in silent) == ["client_fin", "server_rst"]
    waited = next(f for f in silent if f.ended_by == "client_fin")
    # 2.5 s sleep - 2 s timeout = 0.5 s, give or take 0.3 s of either side's scheduling (closing at
    # once would be ~0, waiting for the whole sleep 2.5 s)
    assert 0.2e9 < int(waited.close_wait_ns or 0) < 0.8e9
    by_uid = {c.uid: c for c in result.connections}
    assert by_uid[stale.uids[0]].conn_state.value == "RSTR"
    assert all(c.handshake_rtt_ns is not None for c in result.connections)
    assert result.summary.headline.startswith("1 request paid for a dead connection")


@pytest.mark.root
def test_cli_outputs(capture: RealCapture, tmp_path: Path) -> None:
    j, conns, prof = tmp_path / "a.json", tmp_path / "c.csv", tmp_path / "p.json"
    done = _cli(str(capture.pcap), "--json", str(j), "--conns", str(conns), "--profile", str(prof))
    assert done.returncode == 0, done.stderr
    assert "1 request paid for a dead connection" in done.stdout
    assert "Best remedy for this capture:" in " ".join(done.stdout.split())
    doc = json.loads(j.read_text())
    (stale,) = [f for f in doc["findings"] if f["kind"] == "stale_reuse"]
    assert stale["remedies"] == ["rules", "reap", "guard", "server-rst"]
    assert set(doc) >= {"summary", "connections", "findings", "servers", "dns", "issues"}
    for key in ("tcp_connections", "server_closed_first", "stale_reuse", "fin_retransmits", "dns_queries"):
        assert key in doc["summary"]
    assert doc["servers"][0]["server"] == "img.lab.test"
    assert {"server", "idle_timeout_s", "samples"} <= set(doc["servers"][0])
    with conns.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == doc["summary"]["tcp_connections"]
    assert json.loads(prof.read_text()).keys() == {"img.lab.test"}
    # stdin, JSON to stdout
    done = _cli("-", "--json", "-", "-q", stdin=capture.pcap.read_bytes())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["stale_reuse"] == 1


@pytest.mark.root
def test_truncated_capture_is_a_warning_and_still_analysed(capture: RealCapture, tmp_path: Path) -> None:
    data = capture.pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-7])
    done = _cli(str(cut), "--json", "-", "-q")
    assert done.returncode == 0, done.stderr
    assert "cut.pcap" in done.stderr and "byte" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["summary"]["tcp_connections"] == 4


def test_not_a_capture_is_one_line_and_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, this is not a capture\n" * 10)
    done = _cli(str(bad))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "notes.txt" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_file_is_status_2(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "nope.pcap"))
    assert done.returncode == 2 and "nope.pcap" in done.stderr and "Traceback" not in done.stderr


def test_bad_conns_name_is_status_2(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "x.pcap"), "--conns", str(tmp_path / "c.xlsx"))
    assert done.returncode == 2 and ".csv or .parquet" in done.stderr


def _records(data: bytes) -> list[int]:
    import struct

    off, out = 24, []
    while off + 16 <= len(data):
        out.append(off)
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    return out


@pytest.mark.root
def test_corrupt_record_is_an_error_with_offset_and_the_rest_still_analysed(
    capture: RealCapture, tmp_path: Path
) -> None:
    import struct

    data = bytearray(capture.pcap.read_bytes())
    recs = _records(bytes(data))
    last_tcp_conn_start = recs[-1]  # the corruption goes near the end: earlier connections survive
    struct.pack_into("<I", data, last_tcp_conn_start + 8, 0x7FFFFFFF)
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(bytes(data))
    done = _cli(str(bad), "--json", "-", "-q")
    assert done.returncode == 2
    assert f"corrupt.pcap: error at byte {last_tcp_conn_start}" in done.stderr
    assert "Traceback" not in done.stderr
    doc = json.loads(done.stdout)
    assert doc["summary"]["tcp_connections"] == 4
    assert doc["issues"][0]["offset"] == last_tcp_conn_start


@pytest.mark.root
def test_unknown_link_type_is_reported(capture: RealCapture, tmp_path: Path) -> None:
    import struct

    data = bytearray(capture.pcap.read_bytes())
    struct.pack_into("<I", data, 20, 147)  # LINKTYPE_USER0
    odd = tmp_path / "user0.pcap"
    odd.write_bytes(bytes(data))
    done = _cli(str(odd), "-q")
    assert done.returncode == 0
    assert "user0.pcap" in done.stderr and "147" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stream_in_a_dataset_run_is_one_line_and_status_2(tmp_path: Path) -> None:
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "halfclose", "analyze", str(fifo), "--dataset", str(tmp_path / "ds")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "is a stream" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ds").exists()


@pytest.mark.root
def test_traffic_all_inside_an_undecoded_tunnel_is_a_warning_with_its_count_in_the_summary(tmp_path: Path) -> None:
    from l2tpcap import l2tp_capture

    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with Claim() as claim:
        _check_undecoded(l2tp_capture(claim, workdir(claim), connections=3))


def _check_undecoded(pcap: Path) -> None:
    # tshark decodes L2TPv2: three TCP connections inside, every tunnel packet carries one of their segments
    conv = run(["tshark", "-n", "-q", "-r", str(pcap), "-z", "conv,tcp"]).stdout
    assert sum(" <-> " in line for line in conv.splitlines()) == 3
    inside = len(run(["tshark", "-n", "-r", str(pcap), "-Y", "l2tp && ppp && tcp", "-T", "fields",
                      "-e", "frame.number"]).stdout.split())  # fmt: skip
    assert inside >= 3 * 7
    done = _cli(str(pcap), "--json", "-", "-q")
    assert done.returncode == 0, done.stderr
    assert f"{inside} packets inside an encapsulation that is not decoded" in done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)["summary"]
    assert summary["tcp_connections"] == 0
    assert summary["encap_undecoded"] == inside


def test_the_reading_thread_starts_before_the_analysis_stages_load(tmp_path: Path) -> None:
    """`halfclose analyze` opens the capture and starts reading first; the stages load meanwhile."""
    p = tmp_path / "one.pcap"
    p.write_bytes(pcap([Rec(ts_ns=1_700_000_000 * 10**9, data=eth(0x0800, ipv4(6, tcp(40000, 80))))]))
    watch = (
        "import sys, threading\n"
        "started, seen = [], []\n"
        "start = threading.Thread.start\n"
        "def record(thread):\n"
        "    started.append(thread.name)\n"
        "    start(thread)\n"
        "threading.Thread.start = record\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'halfclose.analysis.engine':\n"
        "            seen.append(list(started))\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from halfclose.cli import main\n"
        "status = main(['analyze', '-q', sys.argv[1]])\n"
        "print(status, seen)\n"
    )
    done = subprocess.run([sys.executable, "-c", watch, str(p)], capture_output=True, text=True, check=True,
                          timeout=120)  # fmt: skip
    status, seen = done.stdout.split(" ", 1)
    assert status == "0"
    assert "halfclose-capture-reader" in seen, seen
