"""Byte sources: compression told by content, mapped windows, streamed windows."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from pathlib import Path

import numpy as np
import pytest
import zstandard

from halfclose.capture.source import Compression, MappedFile, StreamFile, detect_compression, open_source
from halfclose.errors import InputError

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
