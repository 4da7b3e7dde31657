"""Byte sources: compression told by content, mapped windows, streamed windows."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zstandard

import runcli
from halfclose.capture.source import Compression, MappedFile, StreamFile, detect_compression, open_source
from halfclose.errors import InputError

BENCH = Path(__file__).resolve().parents[1] / "bench"

DATA = bytes(range(256)) * 400  # 102,400 bytes


@pytest.mark.parametrize(
    ("blob", "kind"),
    [
        (gzip.compress(b"x"), Compression.GZIP),
        (zstandard.ZstdCompressor().compress(b"x"), Compression.ZSTD),
        (lzma.compress(b"x"), Compression.XZ),
        (bz2.compress(b"x"), Compression.BZIP2),
        (b"\xd4\xc3\xb2\xa1", Compression.NONE),
        (b"", Compression.NONE),
    ],
)
def test_detect_compression(blob: bytes, kind: Compression) -> None:
    assert detect_compression(blob[:6]) is kind


def _walk(src: MappedFile | StreamFile, step: int) -> bytes:
    """Read the whole source by asking for windows that start at every *step*-th byte."""
    out = bytearray()
    pos = 0
    while True:
        win = src.window(pos, 1)
        assert win.start == pos
        assert not win.data.flags.writeable
        if win.data.shape[0] == 0:
            assert win.eof
            return bytes(out)
        take = min(step, win.data.shape[0])
        out += win.data[:take].tobytes()
        pos += take


def test_mapped_windows_cover_the_file_exactly(tmp_path: Path) -> None:
    f = tmp_path / "plain.bin"
    f.write_bytes(DATA)
    src = open_source(f, window=5000)
    assert isinstance(src, MappedFile) and src.total_bytes == len(DATA)
    assert _walk(src, 4099) == DATA
    big = src.window(10, 50_000)  # a window grows to what is asked for
    assert big.data.shape[0] >= 50_000 and big.data[:3].tolist() == [10, 11, 12]
    src.close()


@pytest.mark.parametrize(
    "compress",
    [gzip.compress, lzma.compress, bz2.compress, zstandard.ZstdCompressor().compress],
)
def test_compressed_streams(tmp_path: Path, compress: object) -> None:
    f = tmp_path / "c.bin"
    f.write_bytes(compress(DATA[:50_000]) + compress(DATA[50_000:]))  # type: ignore[operator]  # two members
    src = open_source(f, window=7000)
    assert isinstance(src, StreamFile)
    assert _walk(src, 3001) == DATA
    assert src.stream_error() is None
    assert src.raw_position() == f.stat().st_size
    src.close()


def test_cut_stream_keeps_what_was_decoded(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4, size=300_000, dtype=np.uint8).tobytes()
    f = tmp_path / "cut.gz"
    f.write_bytes(gzip.compress(data)[:-30])
    src = open_source(f)
    got = _walk(src, 1 << 20)
    assert 0 < len(got) < len(data) and data.startswith(got)
    assert src.stream_error() is not None
    src.close()


def test_stream_window_keeps_the_unread_tail() -> None:
    src = StreamFile(
        "s",
        io.BufferedReader(io.BytesIO(DATA)),
        raw=None,
        compression=Compression.NONE,
        total_bytes=None,
        window=1000,
    )  # type: ignore[arg-type]
    first = src.window(0, 1)
    assert first.data.shape[0] == 1000
    second = src.window(900, 200)  # 100 bytes kept, the rest read
    assert second.start == 900 and second.data[:100].tobytes() == DATA[900:1000]
    assert second.data.shape[0] >= 200 and second.data[100:200].tobytes() == DATA[1000:1100]
    assert first.data.tobytes() == DATA[:1000]  # an old window is never overwritten
    with pytest.raises(ValueError, match="outside"):
        src.window(10, 1)


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        open_source(tmp_path / "nope")
    with pytest.raises(InputError, match="directory"):
        open_source(tmp_path)


def test_a_fifo_is_a_stream_read_once(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    blob = gzip.compress(DATA)
    writer = threading.Thread(target=fifo.write_bytes, args=(blob,))
    writer.start()
    src = open_source(fifo, window=7000)
    assert isinstance(src, StreamFile) and not src.rereadable and src.total_bytes is None
    assert src.compression is Compression.GZIP
    assert _walk(src, 3001) == DATA
    assert src.raw_position() == len(blob)
    src.close()
    writer.join()


# ---------------------------------------------------------------------------------------------
# streams through the command a user types: a FIFO and bash's process substitution


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(BENCH))
    try:
        import gen_capture
    finally:
        sys.path.remove(str(BENCH))
    path = tmp_path_factory.mktemp("gen") / "g.pcapng"
    gen_capture.generate(gen_capture.GeneratorConfig(packets=4000, seed=11, fmt="pcapng"), path)
    return path


_COMPRESS = {"plain": (lambda b: b, "cat"), "gzip": (gzip.compress, "gzip -c"),
             "zstd": (zstandard.ZstdCompressor().compress, "zstd -q -c")}  # fmt: skip


def _analyze_json(proc: subprocess.CompletedProcess[str], name: str) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout.replace(name, "CAPTURE")


@pytest.mark.parametrize("kind", sorted(_COMPRESS))
def test_analyze_reads_a_fifo_as_the_file(generated: Path, tmp_path: Path, kind: str) -> None:
    want = _analyze_json(runcli.halfclose("analyze", "-q", "--json", "-", str(generated)), str(generated))
    assert '"tcp_connections": 0,' not in want
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)
    blob = _COMPRESS[kind][0](generated.read_bytes())
    with runcli.popen("analyze", "-q", "--json", "-", str(fifo)) as proc:
        with contextlib.suppress(BrokenPipeError):  # halfclose stopped reading: its stderr says why
            fifo.write_bytes(blob)  # blocks until halfclose opens the FIFO
        out, err = proc.communicate(timeout=300)
    got = _analyze_json(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), str(fifo))
    assert got == want


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
@pytest.mark.parametrize("kind", sorted(_COMPRESS))
def test_analyze_reads_a_process_substitution_as_the_file(generated: Path, kind: str) -> None:
    want = _analyze_json(runcli.halfclose("analyze", "-q", "--json", "-", str(generated)), str(generated))
    line = f"exec {shlex.join(runcli.argv('analyze', '-q', '--json', '-'))} <({_COMPRESS[kind][1]} {generated})"
    proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=300, env=runcli.env())
    got = _analyze_json(proc, "/dev/fd/")
    assert got == want
