"""open_captures end to end: tshark as the oracle on real and generated captures, issues, inputs."""

from __future__ import annotations

import gzip
import itertools
import json
import lzma
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture_bytes import ETH_IPV4, Rec, epb, eth, idb, ipv4, ipv6, pcap, shb, spb, tcp, udp
from halfclose.capture import CaptureReader, PacketBatch, Severity, open_captures
from halfclose.errors import InputError, UsageError

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# The shared corpus sits beside the checkout (or beside the folder of worktrees).
CORPUS = next(
    (d / "shared" / "corpus" / "tcpdump-tests" for d in REPO.parents if (d / "shared" / "corpus").is_dir()),
    REPO.parent / "shared" / "corpus" / "tcpdump-tests",
)

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


# ---------------------------------------------------------------------------------------------
# helpers


def read_all(paths: list[str | Path], **kw: Any) -> tuple[dict[str, np.ndarray], CaptureReader]:
    with open_captures(paths, **kw) as reader:
        batches = list(reader)
    names = [f for f in PacketBatch.__dataclass_fields__ if f != "data"]
    if not batches:
        return {n: np.zeros(0) for n in names}, reader
    cols = {n: np.concatenate([getattr(b, n) for b in batches]) for n in names}
    cols["payload"] = np.array([b.payload(i) for b in batches for i in range(len(b))], dtype=object)
    return cols, reader


def _ip_to_halves(text: str) -> tuple[int, int]:
    packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    if len(packed) == 4:
        packed = b"\x00" * 10 + b"\xff\xff" + packed
    return int.from_bytes(packed[:8], "big"), int.from_bytes(packed[8:], "big")


TSHARK_FIELDS = [
    "frame.number",
    "frame.time_epoch",
    "ip.src",
    "ipv6.src",
    "ip.dst",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.flags",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.len",
    "tcp.window_size_value",
    "udp.length",
    "ip.proto",
]


def tshark_rows(path: Path) -> dict[int, dict[str, str]]:
    argv = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]
    for f in TSHARK_FIELDS:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    rows = {}
    for line in out.splitlines():
        values = dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True))
        rows[int(values["frame.number"])] = values
    return rows


def assert_same_as_tshark(path: Path, *, expect_packets: int | None = None) -> dict[str, np.ndarray]:
    """Every delivered row equals tshark's fields; every TCP/UDP frame tshark shows is delivered."""
    cols, reader = read_all([path])
    oracle = tshark_rows(path)
    assert reader.stats.total.packets == len(oracle)
    if expect_packets is not None:
        assert len(oracle) == expect_packets
    transport = {n for n, r in oracle.items() if r["tcp.srcport"] or r["udp.srcport"]}
    assert set(cols["frame"].tolist()) == transport
    for i in range(len(cols["frame"])):
        t = oracle[int(cols["frame"][i])]
        assert int(cols["ts_ns"][i]) == int(Decimal(t["frame.time_epoch"]) * 10**9), t
        src = t["ip.src"] or t["ipv6.src"]
        dst = t["ip.dst"] or t["ipv6.dst"]
        assert (int(cols["src_hi"][i]), int(cols["src_lo"][i])) == _ip_to_halves(src), t
        assert (int(cols["dst_hi"][i]), int(cols["dst_lo"][i])) == _ip_to_halves(dst), t
        assert int(cols["ip_version"][i]) == (4 if t["ip.src"] else 6)
        if t["tcp.srcport"]:
            assert int(cols["proto"][i]) == 6
            got = (int(cols["sport"][i]), int(cols["dport"][i]), int(cols["tcp_flags"][i]))
            assert got == (int(t["tcp.srcport"]), int(t["tcp.dstport"]), int(t["tcp.flags"], 16) & 0xFF), t
            assert int(cols["seq"][i]) == int(t["tcp.seq_raw"]), t
            assert int(cols["ack"][i]) == int(t["tcp.ack_raw"] or 0), t
            assert int(cols["payload_len"][i]) == int(t["tcp.len"]), t
            assert int(cols["window"][i]) == int(t["tcp.window_size_value"]), t
        else:
            assert int(cols["proto"][i]) == 17
            assert (int(cols["sport"][i]), int(cols["dport"][i])) == (
                int(t["udp.srcport"]),
                int(t["udp.dstport"]),
            )
            assert int(cols["payload_len"][i]) == int(t["udp.length"]) - 8, t
    return cols


def _traffic() -> None:
    """TCP over IPv4 and IPv6 (a large transfer, so the kernel builds big segments), UDP both ways."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        srv = socket.socket(family, socket.SOCK_STREAM)
        srv.bind((host, 0))
        srv.listen()
        port = srv.getsockname()[1]

        def serve(s: socket.socket = srv) -> None:
            conn, _ = s.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"r" * 200_000)

        th = threading.Thread(target=serve)
        th.start()
        with socket.create_connection((host, port)) as c:
            c.sendall(b"GET / HTTP/1.1\r\n\r\n")
            got = 0
            while got < 200_000:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
        th.join()
        srv.close()
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.bind((host, 0))
        u.sendto(b"q" * 33, u.getsockname()[:2])
        u.recv(100)
        u.close()


def _wait_until_capturing(out: Path) -> None:
    """Send UDP probes over loopback until tcpdump has written one (it may start late)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        for _ in range(100):
            probe.sendto(b"probe", probe.getsockname())
            probe.recv(16)
            time.sleep(0.05)
            if out.exists() and out.stat().st_size > 24:
                return
    pytest.fail("tcpdump wrote no packet within 5 s")


def _tcpdump(out: Path, *args: str) -> None:
    argv = ["tcpdump", "-U", "--immediate-mode", "-B", "16384", "-n", "-w", str(out), *args]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline().decode()
            while "listening on" not in line:
                if not line:
                    pytest.skip(f"tcpdump could not start: {proc.stderr.read().decode()[:200]}")
                line = proc.stderr.readline().decode()
            _wait_until_capturing(out)
            _traffic()
            time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Real captures made here with tcpdump on loopback and 'any', converted by tshark/editcap."""
    if os.geteuid() != 0 or shutil.which("tcpdump") is None or shutil.which("tshark") is None:
        pytest.skip("needs root, tcpdump and tshark")
    d = tmp_path_factory.mktemp("live")
    files = {
        "lo": d / "lo.pcap",
        "any_nano": d / "any_nano.pcap",
        "any_sll1": d / "any_sll1.pcap",
    }
    _tcpdump(files["lo"], "-i", "lo", "-s", "128")
    _tcpdump(
        files["any_nano"],
        "-i",
        "any",
        "-s",
        "200",
        "--time-stamp-precision",
        "nano",
        "host 127.0.0.1 or host ::1",
    )
    _tcpdump(files["any_sll1"], "-i", "any", "-s", "200", "-y", "LINUX_SLL", "host 127.0.0.1 or host ::1")
    files["lo_ng"] = d / "lo.pcapng"
    subprocess.run(["tshark", "-r", files["lo"], "-F", "pcapng", "-w", files["lo_ng"]], check=True, capture_output=True)
    files["merged"] = d / "merged.pcapng"  # two interfaces: Ethernet (µs) and Linux cooked v2 (ns)
    subprocess.run(
        ["mergecap", "-F", "pcapng", "-w", files["merged"], files["lo"], files["any_nano"]],
        check=True,
        capture_output=True,
    )
    files["any_ng"] = d / "any.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", files["any_nano"], files["any_ng"]], check=True, capture_output=True)
    yield files


# ---------------------------------------------------------------------------------------------
# tshark as the oracle


@pytest.mark.root
@pytest.mark.parametrize("name", ["lo", "any_nano", "any_sll1", "lo_ng", "any_ng", "merged"])
def test_real_captures_match_tshark(live: dict[str, Path], name: str) -> None:
    cols = assert_same_as_tshark(live[name])
    if name == "merged":
        _, reader = read_all([live[name]])
        assert set(reader.stats.total.link_types) == {1, 276}
    # Live captures on 'any' may drop packets; what was captured must be there and equal.
    assert int((cols["proto"] == 6).sum()) >= 5 and int((cols["proto"] == 17).sum()) >= 1


@pytest.mark.root
def test_compressed_and_plain_give_the_same_columns(live: dict[str, Path], tmp_path: Path) -> None:
    raw = live["any_ng"].read_bytes()
    gz = tmp_path / "a.cap"  # no telling suffix: detection is by content
    gz.write_bytes(gzip.compress(raw))
    zs = tmp_path / "b.cap"
    zs.write_bytes(zstandard.ZstdCompressor().compress(raw))
    xz = tmp_path / "c.cap"
    xz.write_bytes(lzma.compress(raw))
    plain, _ = read_all([live["any_ng"]])
    for f, kind in ((gz, "gzip"), (zs, "zstd"), (xz, "xz")):
        cols, reader = read_all([f])
        assert reader.stats.files[0].compression == kind
        for name in plain:
            if name == "payload_off":
                continue
            assert np.array_equal(cols[name], plain[name]), (kind, name)


GENERATED = [
    ("pcap", "ethernet", False),
    ("pcapng", "sll2", True),
    ("pcap", "sll2", True),
    ("pcapng", "ethernet", False),
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, bool], Path]:
    sys.path.insert(0, str(BENCH))
    try:
        import gen_capture
    finally:
        sys.path.remove(str(BENCH))
    d = tmp_path_factory.mktemp("gen")
    out = {}
    for fmt, link, nano in GENERATED:
        path = d / f"g_{fmt}_{link}_{int(nano)}.{fmt}"
        cfg = gen_capture.GeneratorConfig(packets=3000, seed=7, fmt=fmt, link=link, nano=nano, snaplen=96)
        gen_capture.generate(cfg, path)
        out[(fmt, link, nano)] = path
    return out


@needs_tshark
@pytest.mark.parametrize("key", GENERATED)
def test_generated_captures_match_tshark(generated: dict[tuple[str, str, bool], Path], key: Any) -> None:
    path = generated[key]
    cols = assert_same_as_tshark(path, expect_packets=3000)
    truth = json.loads(Path(str(path) + ".truth.json").read_text())
    assert int((cols["proto"] == 6).sum()) == truth["tcp_packets"]
    assert int(((cols["tcp_flags"] & 0x01) != 0).sum()) == truth["fin_packets"]
    dns = cols["payload"][(cols["proto"] == 17)]
    assert all(len(p) >= 36 for p in dns)  # DNS captured in full despite the 96-byte snap length


# ---------------------------------------------------------------------------------------------
# several files, windows, progress, stdin


def test_several_files_tiny_windows_and_progress(generated: dict[tuple[str, str, bool], Path]) -> None:
    paths = [generated[("pcap", "ethernet", False)], generated[("pcapng", "sll2", True)]]
    whole, r1 = read_all(paths)
    seen: list[tuple[int, int | None]] = []
    small, r2 = read_all(paths, window_bytes=4096, batch_packets=100, progress=lambda d, t: seen.append((d, t)))
    for name in whole:
        if name != "payload_off":
            assert np.array_equal(whole[name], small[name]), name
    assert set(whole["file_index"].tolist()) == {0, 1}
    assert r1.stats == r2.stats
    assert [f.packets for f in r1.stats.files] == [3000, 3000] and r1.stats.total.packets == 6000
    total = sum(p.stat().st_size for p in paths)
    assert seen[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    assert r1.issues == ()


def _run_stdin(data: bytes) -> dict[str, Any]:
    code = (
        "import json, numpy as np; from halfclose.capture import open_captures\n"
        "with open_captures(['-']) as r:\n"
        "    bs = list(r)\n"
        "print(json.dumps({'n': sum(len(b) for b in bs), 'seq': int(sum(int(b.seq.astype(np.int64).sum()) "
        "for b in bs)), 'packets': r.stats.total.packets, 'issues': [str(i) for i in r.issues]}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", code], input=data, capture_output=True, env=env, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr.decode()
    return dict(json.loads(out.stdout))


def test_stdin_plain_and_gzip(generated: dict[tuple[str, str, bool], Path]) -> None:
    path = generated[("pcapng", "ethernet", False)]
    cols, _ = read_all([path])
    want = {
        "n": len(cols["seq"]),
        "seq": int(cols["seq"].astype(np.int64).sum()),
        "packets": 3000,
        "issues": [],
    }
    assert _run_stdin(path.read_bytes()) == want
    assert _run_stdin(gzip.compress(path.read_bytes())) == want


# ---------------------------------------------------------------------------------------------
# issues and errors

PKT = eth(ETH_IPV4, ipv4(6, tcp(1000, 80, flags=0x18, payload=b"x" * 20)))


def test_truncated_last_record_is_a_warning(tmp_path: Path) -> None:
    data = pcap([Rec(ts_ns=i * 10**9, data=PKT) for i in range(3)])
    f = tmp_path / "cut.pcap"
    f.write_bytes(data[:-10])
    cols, reader = read_all([f])
    assert len(cols["frame"]) == 2
    (issue,) = reader.issues
    assert issue.severity is Severity.WARNING and issue.offset == 24 + 2 * (16 + len(PKT))
    assert "cut short" in issue.message and str(f) in str(issue)


def test_corrupt_record_stops_the_file_but_keeps_what_came_before(tmp_path: Path) -> None:
    data = bytearray(pcap([Rec(ts_ns=i * 10**9, data=PKT) for i in range(3)]))
    at = 24 + 16 + len(PKT)
    data[at + 8 : at + 12] = (50_000_000).to_bytes(4, "little")
    f = tmp_path / "bad.pcap"
    f.write_bytes(bytes(data))
    g = tmp_path / "good.pcap"
    g.write_bytes(pcap([Rec(ts_ns=5, data=PKT)]))
    cols, reader = read_all([f, g])
    assert cols["file_index"].tolist() == [0, 1]
    (issue,) = reader.issues
    assert issue.severity is Severity.ERROR and issue.offset == at and issue.file_index == 0


def test_modified_pcap_records_have_24_byte_headers(tmp_path: Path) -> None:
    header = bytes.fromhex("34cdb2a1") + struct.pack("<HHiIII", 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII", 7, 250, len(PKT), len(PKT)) + struct.pack("<IHBx", 2, 0x0800, 0) + PKT
    f = tmp_path / "kuz.pcap"
    f.write_bytes(header + record * 2)
    cols, reader = read_all([f])
    assert cols["ts_ns"].tolist() == [7_000_250_000] * 2 and cols["sport"].tolist() == [1000, 1000]
    assert reader.issues == ()


def test_unknown_link_type_is_reported_once(tmp_path: Path) -> None:
    f = tmp_path / "radiotap.pcap"
    f.write_bytes(pcap([Rec(ts_ns=1, data=b"\x00\x00\x08\x00\x00\x00\x00\x00" + PKT)] * 4, linktype=127))
    cols, reader = read_all([f])
    assert len(cols["frame"]) == 0
    assert reader.stats.total.unknown_link == 4 and reader.stats.total.link_types == {127: 4}
    (issue,) = reader.issues
    assert "link type 127 is not decoded: 4 packets counted" in issue.message


def test_pcapng_sections_interfaces_and_resolutions(tmp_path: Path) -> None:
    p4 = ipv4(6, tcp(1, 2))
    data = (
        shb()
        + idb(linktype=1, tsresol=9)
        + idb(linktype=101, tsresol=0x80 | 20, tsoffset=100)
        + epb(0, 5, eth(ETH_IPV4, p4))
        + epb(1, 1 << 20, p4)
        + epb(7, 1, p4)  # no such interface
        + shb(big=True)
        + idb(big=True, linktype=229, snaplen=60)
        + epb(0, 3_000_000, ipv6(17, udp(5, 53, b"a" * 30)), big=True)
        + spb(ipv6(17, udp(6, 53, b"b" * 30)), big=True)
    )
    f = tmp_path / "multi.pcapng"
    f.write_bytes(data)
    cols, reader = read_all([f])
    assert cols["frame"].tolist() == [1, 2, 4, 5]
    assert cols["ts_ns"].tolist() == [5, 101_000_000_000, 3_000_000_000, 0]
    assert cols["sport"].tolist() == [1, 1, 5, 6]
    assert cols["payload_caplen"].tolist() == [0, 0, 30, 60 - 48]  # simple block cut to the snap length
    assert reader.stats.total.link_types == {1: 1, 101: 1, 229: 2}
    assert reader.stats.total.packets == 5
    (issue,) = reader.issues
    assert "interface" in issue.message and issue.offset == len(shb()) + len(idb(tsresol=9)) + len(
        idb(linktype=101, tsresol=0x80 | 20, tsoffset=100)
    ) + len(epb(0, 5, eth(ETH_IPV4, p4))) + len(epb(1, 1 << 20, p4))


def test_huge_block_length_stops_the_file_without_reading_on(tmp_path: Path) -> None:
    good = epb(0, 1, ipv4(6, tcp(1, 2)))
    bogus = bytearray(good)
    bogus[4:8] = (1 << 30).to_bytes(4, "little")
    f = tmp_path / "huge.pcapng"
    f.write_bytes(shb() + idb(linktype=101) + good + bytes(bogus) + good * 3000)
    cols, reader = read_all([f], window_bytes=4096)
    assert len(cols["frame"]) == 1
    (issue,) = reader.issues
    assert issue.severity is Severity.ERROR and "length 1073741824" in issue.message


def test_many_issues_are_capped_with_a_count(tmp_path: Path) -> None:
    p4 = ipv4(6, tcp(1, 2))
    f = tmp_path / "many.pcapng"
    f.write_bytes(shb() + idb(linktype=101) + epb(3, 1, p4) * 25)
    _, reader = read_all([f])
    assert len(reader.issues) == 11
    assert "15 more issues like 'bad interface'" in reader.issues[-1].message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"hello, world\n" * 10, "not a pcap or pcapng file (starts with 68 65 6c 6c at byte 0)"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "bad pcap file header at byte 0"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00", "byte-order magic"),
        (gzip.compress(b"not a capture at all"), "not a pcap or pcapng file"),
        (b"\x1f\x8b\x08\x00garbage", "cannot decompress"),
    ],
)
def test_not_a_capture_raises_one_line_input_error(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "x.pcap"
    f.write_bytes(content)
    with pytest.raises(InputError) as err:
        open_captures([f])
    text = str(err.value)
    assert message in text and str(f) in text and "\n" not in text


def test_unreadable_inputs_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        open_captures([tmp_path / "missing.pcap"])
    with pytest.raises(InputError, match="is a directory"):
        open_captures([tmp_path])
    with pytest.raises(UsageError):
        open_captures([])
    with pytest.raises(UsageError):
        open_captures(["-", "-"])
    f = tmp_path / "ok.pcap"
    f.write_bytes(pcap([Rec(ts_ns=1, data=PKT)]))
    with pytest.raises(UsageError):
        open_captures([f], batch_packets=0)
    reader = open_captures([f])
    list(reader)
    with pytest.raises(UsageError):
        list(reader)


def test_truncated_gzip_delivers_what_came_before(tmp_path: Path) -> None:
    data = pcap([Rec(ts_ns=i, data=PKT) for i in range(2000)])
    f = tmp_path / "t.gz"
    f.write_bytes(gzip.compress(data)[:-20])
    cols, reader = read_all([f])
    assert 0 < len(cols["frame"]) < 2000
    assert any(i.severity is Severity.ERROR and "gzip" in i.message for i in reader.issues)


# ---------------------------------------------------------------------------------------------
# the tcpdump test corpus and fuzzing


def _read_or_input_error(path: Path | str, **kw: Any) -> CaptureReader | None:
    try:
        with open_captures([path], **kw) as reader:
            for batch in reader:
                assert batch.payload_off.shape == batch.frame.shape
                if len(batch):
                    assert int(batch.payload_off.max()) <= batch.data.shape[0]
                    ends = batch.payload_off.astype(np.int64) + batch.payload_caplen
                    assert int(ends.max()) <= batch.data.shape[0]
        return reader
    except InputError as exc:
        assert "\n" not in str(exc)
        return None


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"capture corpus not found at {CORPUS}")
def test_tcpdump_corpus_reads_without_crashing() -> None:
    files = sorted(CORPUS.iterdir())
    assert len(files) > 800
    read = refused = delivered = with_issues = 0
    for f in files:
        reader = _read_or_input_error(f)
        if reader is None:
            refused += 1
            continue
        read += 1
        delivered += reader.stats.total.delivered
        with_issues += bool(reader.issues)
    assert read > 780 and delivered > 3_000
    assert with_issues > 10  # the corpus has cut and corrupt files on purpose


_SEED = pcap([Rec(ts_ns=i * 1000, data=PKT) for i in range(4)])
_SEED_NG = shb() + idb(linktype=1, tsresol=9) + epb(0, 5, PKT) + spb(PKT) + epb(0, 6, PKT)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from([_SEED, _SEED_NG]),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 400),
    window=st.sampled_from([4096, 1 << 20]),
    compress=st.booleans(),
)
def test_fuzz_mutated_files(
    tmp_path: Path, *, base: bytes, edits: list[tuple[int, int]], cut: int, window: int, compress: bool
) -> None:
    data = bytearray(base)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    f = tmp_path / "fuzz.cap"
    content = bytes(data[: len(data) - cut % (len(data) + 1)])
    f.write_bytes(gzip.compress(content) if compress else content)  # compressed: the streamed path
    _read_or_input_error(f, window_bytes=window)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.sampled_from([_SEED[:24], _SEED_NG[: 28 + 40], b""]), tail=st.binary(max_size=600))
def test_fuzz_random_bytes(tmp_path: Path, head: bytes, tail: bytes) -> None:
    f = tmp_path / "rand.cap"
    f.write_bytes(head + tail)
    _read_or_input_error(f, window_bytes=4096)


_DIGEST = (
    "import hashlib, sys\n"
    "from halfclose.capture import open_captures\n"
    "from halfclose.capture import _kernels\n"
    "from halfclose.capture.compiling import use_compiled\n"
    "use_compiled()  # whatever the files' size (a no-op with NUMBA_DISABLE_JIT=1)\n"
    "h = hashlib.sha256()\n"
    "with open_captures(sys.argv[1:]) as r:\n"
    "    for b in r:\n"
    "        for f in ('frame', 'ts_ns', 'src_lo', 'dst_hi', 'sport', 'dport', 'tcp_flags', 'seq', 'ack',\n"
    "                  'window', 'payload_len', 'payload_caplen', 'fragment'):\n"
    "            h.update(getattr(b, f).tobytes())\n"
    "print(_kernels.compiled(), r.stats.total, h.hexdigest())\n"
)


def test_plain_python_kernels_give_the_same_result(generated: dict[tuple[str, str, bool], Path]) -> None:
    """Without numba (here: its JIT disabled) the same functions run as Python, with the same result."""
    paths = [str(generated[("pcapng", "sll2", True)]), str(generated[("pcap", "ethernet", False)])]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outs = []
    for disable in ("0", "1"):
        run = subprocess.run(
            [sys.executable, "-c", _DIGEST, *paths],
            env=dict(env, NUMBA_DISABLE_JIT=disable),
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        outs.append(run.stdout.split(" ", 1))
    assert outs[0][0] == "True" and outs[1][0] == "False"
    assert outs[0][1] == outs[1][1]
