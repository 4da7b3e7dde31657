"""Byte sources: a capture file (memory-mapped window by window), a compressed file or stdin.

A source hands out *windows*: read-only ``uint8`` arrays holding the file's bytes from some
offset on. Readers walk records inside a window and ask for the next one starting at the first
record that did not fit. Old windows are never reused or overwritten, so packet columns that
point into one stay valid for as long as someone holds them, and memory stays bounded by the
windows still referenced.

Plain files are memory-mapped one window at a time (no copy); streams (stdin, pipes, FIFOs,
process substitutions) and compressed files (gzip, zstd, xz, bzip2, detected by their magic
bytes, never by name) are read in chunks. This is the capture package's only I/O edge: no other
module of it opens files.
"""

from __future__ import annotations

import bz2
import enum
import io
import lzma
import mmap
import os
import stat
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from halfclose.errors import InputError

__all__ = [
    "DEFAULT_WINDOW",
    "STDIN",
    "ByteSource",
    "Compression",
    "Window",
    "detect_compression",
    "open_source",
]

#: Name that means standard input.
STDIN = "-"

#: Default window size: large enough that per-window overhead vanishes (a few thousand packets), small
#: enough that the windows the batches in flight point into stay a few MB.
DEFAULT_WINDOW = 2 * 1024 * 1024


@enum.unique
class Compression(enum.Enum):
    """How a capture file is compressed (told by its first bytes)."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    XZ = "xz"
    BZIP2 = "bzip2"


_MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"BZh", Compression.BZIP2),
)


def detect_compression(head: bytes) -> Compression:
    """Tell the compression of a file from its first (up to 6) bytes."""
    for magic, kind in _MAGICS:
        if head.startswith(magic):
            return kind
    return Compression.NONE


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """File bytes ``[start, start + len(data))``; *eof* when nothing follows them."""

    data: npt.NDArray[np.uint8]
    start: int
    eof: bool


class ByteSource(Protocol):
    """Where a reader gets windows from."""

    name: str
    compression: Compression
    #: Size of the underlying file in bytes (compressed size if compressed), None for a stream.
    total_bytes: int | None
    #: False for a stream (stdin, a pipe): its bytes can be read only once.
    rereadable: bool
    #: Bytes read ahead per window (settable: a first look at a file needs only a small one).
    window_size: int

    def window(self, start: int, min_size: int) -> Window:
        """Bytes from file offset *start* on (at least *min_size* unless the file ends first).

        *start* never goes backwards between calls.
        """

    def raw_position(self) -> int:
        """How many bytes of the underlying (possibly compressed) file were consumed."""

    def close(self) -> None:
        """Release the file; windows already handed out stay valid."""


class MappedFile:
    """A plain file, mapped window by window."""

    def __init__(self, name: str, fh: BinaryIO, size: int, window: int = DEFAULT_WINDOW) -> None:
        self.name = name
        self.compression = Compression.NONE
        self.total_bytes: int | None = size
        self.rereadable = True
        self.window_size = window
        self._fh = fh
        self._size = size
        self._done = 0

    def window(self, start: int, min_size: int) -> Window:
        if start >= self._size:
            empty = np.zeros(0, dtype=np.uint8)
            empty.flags.writeable = False
            return Window(data=empty, start=start, eof=True)
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        length = min(self._size - aligned, max(self.window_size, min_size + (start - aligned)))
        mapped = mmap.mmap(self._fh.fileno(), length, access=mmap.ACCESS_READ, offset=aligned)
        data = np.frombuffer(mapped, dtype=np.uint8)[start - aligned :]
        data.flags.writeable = False
        self._done = aligned + length
        return Window(data=data, start=start, eof=aligned + length >= self._size)

    def raw_position(self) -> int:
        return self._done

    def close(self) -> None:
        self._fh.close()


class StreamFile:
    """A stream (stdin, a pipe, or a decompressor over a file), read in chunks into fresh buffers."""

    def __init__(
        self,
        name: str,
        stream: BinaryIO,
        *,
        raw: BinaryIO | None,
        compression: Compression,
        total_bytes: int | None,
        window: int = DEFAULT_WINDOW,
        consumed: _Prefixed | None = None,
        rereadable: bool = True,
    ) -> None:
        self.name = name
        self.compression = compression
        self.total_bytes = total_bytes
        self.rereadable = rereadable
        self.window_size = window
        self._stream = stream
        self._raw = raw
        self._consumed = consumed
        self._buf = np.zeros(0, dtype=np.uint8)
        self._buf.flags.writeable = False
        self._start = 0  # file offset of self._buf[0]
        self._eof = False

    def window(self, start: int, min_size: int) -> Window:
        have = self._start + self._buf.shape[0]
        if not self._start <= start <= have:
            raise ValueError(f"stream window at {start} outside {self._start}..{have}")
        keep = self._buf[start - self._start :]
        if self._eof or keep.shape[0] >= max(min_size, 1):
            return Window(data=keep, start=start, eof=self._eof)
        size = max(self.window_size, min_size)
        fresh = bytearray(size)
        fresh[: keep.shape[0]] = keep.tobytes()
        filled = keep.shape[0]
        view = memoryview(fresh)
        while filled < size:
            got = self._read_into(view[filled:])
            if got == 0:
                self._eof = True
                break
            filled += got
        view.release()
        arr = np.frombuffer(fresh if filled == size else bytes(fresh[:filled]), dtype=np.uint8)
        arr.flags.writeable = False
        self._buf = arr
        self._start = start
        return Window(data=arr, start=start, eof=self._eof)

    def _read_into(self, view: memoryview) -> int:
        return int(self._stream.readinto(view) or 0)  # type: ignore[attr-defined]

    def stream_error(self) -> str | None:
        """Why the (compressed) stream ended early, if it did."""
        raw = getattr(self._stream, "raw", None)
        return raw.error if isinstance(raw, _Decompressing) else None

    def raw_position(self) -> int:
        if self._consumed is not None:
            return self._consumed.consumed
        if self._raw is not None:
            try:
                return self._raw.tell()
            except (OSError, ValueError):
                return 0
        return self._start + self._buf.shape[0]

    def close(self) -> None:
        self._stream.close()
        if self._raw is not None:
            self._raw.close()


class _Prefixed(io.RawIOBase):
    """A readable stream that yields *prefix* and then the rest of *rest*."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest
        #: Bytes handed out so far.
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
        else:
            n = int(self._rest.readinto(b) or 0)  # type: ignore[attr-defined]
        self.consumed += n
        return n


def _read_head(fh: BinaryIO, n: int) -> bytes:
    head = b""
    while len(head) < n:
        chunk = fh.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


class _Decompressing(io.RawIOBase):
    """Incremental decompression of concatenated members/frames; keeps every byte decoded.

    (gzip.GzipFile and friends drop the data of a read call that hits a cut-short stream.)
    """

    _RAW_CHUNK = 1 << 20

    def __init__(self, kind: Compression, raw: BinaryIO) -> None:
        self._kind = kind
        self._raw = raw
        self._dec: Any = self._new()
        self._pending = b""
        self._raw_eof = False
        self.error: str | None = None

    def _new(self) -> Any:
        if self._kind is Compression.GZIP:
            return zlib.decompressobj(wbits=31)
        if self._kind is Compression.XZ:
            return lzma.LZMADecompressor()
        if self._kind is Compression.BZIP2:
            return bz2.BZ2Decompressor()
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._pending:
            if self._raw_eof or self.error is not None:
                return 0
            chunk = self._raw.read(self._RAW_CHUNK)
            if not chunk:
                self._raw_eof = True
                if not self._dec.eof and self.error is None:
                    self.error = "the compressed data ends before its end marker"
                return 0
            self._feed(chunk)
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _feed(self, chunk: bytes) -> None:
        out = []
        try:
            while chunk:
                out.append(self._dec.decompress(chunk))
                if not self._dec.eof:
                    break
                chunk = self._dec.unused_data
                if chunk.strip(b"\x00"):
                    self._dec = self._new()  # another member / stream / frame follows
                else:
                    chunk = b""
        except Exception as exc:  # zlib.error, lzma.LZMAError, OSError, zstandard.ZstdError
            self.error = f"{type(exc).__name__}: {exc}"
        self._pending += b"".join(out)


def _stream(name: str, fh: BinaryIO, *, window: int, owned: bool) -> StreamFile:
    """A source over a stream that cannot seek (stdin, a pipe, a FIFO, a character device)."""
    head = _read_head(fh, 6)
    kind = detect_compression(head)
    counted = _Prefixed(head, fh)
    raw: BinaryIO = io.BufferedReader(counted, buffer_size=1 << 20)
    if kind is not Compression.NONE:
        raw = io.BufferedReader(_Decompressing(kind, raw), buffer_size=1 << 20)
    return StreamFile(
        name,
        raw,
        raw=fh if owned else None,
        compression=kind,
        total_bytes=None,
        window=window,
        consumed=counted,
        rereadable=False,
    )


def open_source(source: str | Path, *, window: int = DEFAULT_WINDOW) -> MappedFile | StreamFile:
    """Open a file name (or ``"-"`` for stdin) as a byte source.

    Regular files are mapped (or decompressed from the start); anything else that can be opened
    (a FIFO, a process substitution's ``/dev/fd/N``, a character device) is read once as a
    stream, as stdin is: such a source's :attr:`rereadable` is false, and it must be kept open
    between the check of its first bytes and reading it.

    Raises:
        InputError: the file cannot be opened or read.
    """
    name = str(source)
    if name == STDIN:
        return _stream("<stdin>", sys.stdin.buffer, window=window, owned=False)
    try:
        fh = open(name, "rb")  # noqa: SIM115 - owned by the returned source
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a capture file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return _stream(name, fh, window=window, owned=True)
        head = _read_head(fh, 6)
        fh.seek(0)
    except OSError as exc:
        fh.close()
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    kind = detect_compression(head)
    if kind is Compression.NONE:
        if st.st_size == 0:
            # Files of /proc and the like report no size and cannot be mapped: stream them.
            return StreamFile(name, fh, raw=None, compression=kind, total_bytes=None, window=window)
        return MappedFile(name, fh, st.st_size, window)
    stream = io.BufferedReader(_Decompressing(kind, fh), buffer_size=1 << 20)
    return StreamFile(name, stream, raw=fh, compression=kind, total_bytes=st.st_size, window=window)
