"""Writing an analysis to files: the JSON document, connection tables (CSV, Parquet), the profile.

Every file is written atomically: into a temporary file beside the target, then renamed over it,
so a reader never sees half a file and a failed write leaves nothing behind. ``-`` writes to
standard output.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from halfclose.analysis import Analysis
from halfclose.analysis._common import MISSING_CODE, MISSING_INT
from halfclose.analysis.document import BLOCK_LISTS, FindingGroup, to_document
from halfclose.analysis.records import Block, Coded, Column, Ints, Texts, plain_values
from halfclose.analysis.tcp import CONNECTION_FIELDS
from halfclose.errors import EnvironmentProblem, UsageError

__all__ = ["atomic_file", "json_written_meanwhile", "write_connections", "write_json", "write_profile"]


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[IO[Any]]:
    """A file object whose content replaces *path* only when the block ends without an error."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write {path}: {exc.strerror}: choose a writable path") from exc
    try:
        text = "b" not in mode
        with os.fdopen(fd, mode, encoding="utf-8" if text else None, newline="" if text else None) as fh:
            yield fh
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise EnvironmentProblem(f"cannot write {path}: {exc.strerror or exc}: choose a writable path") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_file(path) as fh:
        fh.write(text)


#: Above this many connections the JSON document is compact and written block by block.
_INDENTED_MAX = 2000
_JSON_BLOCK = 1000
#: Records written by the compiled kernel go this many at a time.
_KERNEL_BLOCK = 2048


#: A character orjson escapes in a string (anything not ASCII is left to orjson too).
_ESCAPED = re.compile(r'[\x00-\x1f"\\]')


def _quoted(values: list[Any]) -> bool:
    """Whether *values* are all strings that orjson writes as they are, between quotes."""
    try:
        joined = "".join(values)
    except TypeError:
        return False
    return joined.isascii() and _ESCAPED.search(joined) is None


def _template_values(col: Column, dumps: Callable[[Any], bytes]) -> tuple[str, list[Any]]:
    """How a template writes the column's values (``%s``, or ``"%s"`` for strings that need no
    escaping) and the values to fill in: ints and such strings as they are, anything else as its
    JSON text (as orjson writes it in the record's dict)."""
    if isinstance(col, Texts):
        values = col.texts
    elif isinstance(col, Ints):
        ints: list[Any] = col.values.tolist()
        if col.optional:
            for i in np.flatnonzero(col.values == MISSING_INT).tolist():
                ints[i] = "null"
        return "%s", ints
    elif len(col.table) <= col.codes.shape[0]:
        # a small table: each of its values encoded once, MISSING_CODE (-1) picking the missing one
        table = list(col.table)
        texts = np.empty(len(table) + 1, dtype=object)
        if _quoted(table):
            texts[:] = [f'"{v}"' for v in table] + [dumps(col.missing).decode()]
        else:
            texts[:] = [dumps(v).decode() for v in (*table, col.missing)]
        encoded: list[Any] = texts[col.codes].tolist()
        return "%s", encoded
    else:
        values = plain_values(col)
    if _quoted(values):
        return '"%s"', values
    return "%s", [dumps(v).decode() for v in values]


def _rows_json(block: Block) -> bytes:
    """The records of *block* as JSON objects separated by commas (the inside of a list): the
    bytes orjson writes for ``plain_rows(block)``, made by one template per record (every key
    written once, its values filled in column by column) instead of a dict per record."""
    import orjson

    parts = [_template_values(col, orjson.dumps) for col in block.values()]
    if not parts or not parts[0][1]:
        return b""
    keys = [orjson.dumps(name).decode().replace("%", "%%") for name in block]
    template = "{" + ",".join(f"{key}:{spec}" for key, (spec, _) in zip(keys, parts, strict=True)) + "}"
    n = len(parts[0][1])
    rows = zip(*(values for _, values in parts), strict=True)
    return (",".join([template] * n) % tuple(itertools.chain.from_iterable(rows))).encode()


U8 = np.ndarray[Any, np.dtype[np.uint8]]
I64 = np.ndarray[Any, np.dtype[np.int64]]
#: One column's pre-encoded entries: their bytes one after another, and each one's length.
_Entries = tuple[bytes, I64]


def _entries(values: Any, dumps: Callable[[Any], bytes]) -> _Entries:
    """*values* as JSON texts, one after another (as orjson writes each of them)."""
    values = list(values)
    if not values:  # (not the two quotes of an empty join)
        return b"", np.empty(0, dtype=np.int64)
    if _quoted(values):  # one join and one encode for all of them
        return ('"' + '""'.join(values) + '"').encode(), np.fromiter(map(len, values), np.int64, len(values)) + 2
    # each text appended as soon as it is made: orjson's bytes objects hold 4 KiB each
    buf = bytearray()
    lengths: list[int] = []
    for v in values:
        text = dumps(v)
        buf += text
        lengths.append(len(text))
    return bytes(buf), np.array(lengths, dtype=np.int64)


def _joined(parts: list[_Entries]) -> tuple[U8, I64, I64]:
    """Entries one after another: their bytes, offsets (one more than entries) and lengths."""
    lengths = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, dtype=np.int64)
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.frombuffer(b"".join(p[0] for p in parts), dtype=np.uint8), offsets, lengths


def _length(col: Column) -> int:
    """How many records the column holds."""
    if isinstance(col, Texts):
        return len(col.texts)
    return int((col.codes if isinstance(col, Coded) else col.values).shape[0])


class _RowWriter:
    """Writes a block's records with the compiled :func:`~halfclose.report._jsonkernel.write_rows`
    (the bytes of :func:`_rows_json`). A table longer than the block (names, shared by the blocks
    of a document) is encoded once, into the shared entries, the first time a block uses it;
    shorter ones (enum texts, a block's own DNS answers) with the block's own entries, those of a
    tuple (an enum's texts) encoded once too."""

    def __init__(self) -> None:
        import orjson

        self._dumps = orjson.dumps
        # id -> (the table, kept alive so that no other takes its id; its missing value; its first shared entry)
        self._tables: dict[int, tuple[Sequence[Any], Any, int]] = {}
        self._shared: list[_Entries] = []
        self._shared_count = 0
        self._shared_arrays: tuple[U8, I64, I64] | None = None
        # id -> (a tuple table, kept alive; its missing value; its entries)
        self._small: dict[int, tuple[Sequence[Any], Any, _Entries]] = {}

    def _own_table(self, col: Coded) -> _Entries:
        """:meth:`_table`, encoded once for a table that is a tuple (it cannot change)."""
        if not isinstance(col.table, tuple):
            return self._table(col)
        cached = self._small.get(id(col.table))
        if cached is None or cached[0] is not col.table or cached[1] is not col.missing:
            cached = self._small[id(col.table)] = (col.table, col.missing, self._table(col))
        return cached[2]

    def _shared_table(self, col: Coded) -> int:
        """The index of the first of the column's table's shared entries (its missing value after
        the table's, for code MISSING_CODE = -1)."""
        cached = self._tables.get(id(col.table))
        if cached is None or cached[0] is not col.table or cached[1] != col.missing:
            entries = self._table(col)
            cached = self._tables[id(col.table)] = (col.table, col.missing, self._shared_count)
            self._shared.append(entries)
            self._shared_count += entries[1].shape[0]
            self._shared_arrays = None
        return cached[2]

    def _table(self, col: Coded) -> _Entries:
        """The entries of the column's table, then its missing value."""
        buf, lengths = _entries(col.table, self._dumps)
        missing = self._dumps(col.missing)
        return buf + missing, np.append(lengths, len(missing))

    def _shared_entries(self) -> tuple[U8, I64, I64]:
        """The shared entries: their bytes, offsets and lengths."""
        if self._shared_arrays is None:
            self._shared_arrays = _joined(self._shared)
        return self._shared_arrays

    def rows(self, block: Block) -> bytes | memoryview:
        """The records of *block* as JSON objects separated by commas (as :func:`_rows_json`)."""
        return self.prepare(block)()

    def prepare(self, block: Block, *, pieces: list[bytes] | None = None, ends: bool = False) -> _Rows:
        """:meth:`rows`, its kernel not run yet: the arguments made (here, holding the GIL), the
        call that writes the records (releasing it) left to the caller. *pieces* (one more than
        the columns) are written around the values instead of the keys in braces; with *ends*
        the call also keeps where each record ends."""
        from halfclose.report._jsonkernel import ENTRY, INT, OPTIONAL_INT, SHARED

        cols = list(block.values())
        n = 0 if not cols else _length(cols[0])
        vals = np.empty((len(cols), n), dtype=np.int64)
        kinds = np.empty(len(cols), dtype=np.int64)
        own: list[_Entries] = []
        base = 0
        size = 0
        for c, col in enumerate(cols if n else ()):
            if isinstance(col, Ints):
                kinds[c] = OPTIONAL_INT if col.optional else INT
                vals[c] = col.values
                size += 20 * n  # "-9223372036854775808"
                continue
            if isinstance(col, Coded) and len(col.table) > n:
                kinds[c] = SHARED
                first = self._shared_table(col)
                np.add(col.codes, first, out=vals[c])
                vals[c][col.codes == MISSING_CODE] = first + len(col.table)
                size += int(self._shared_entries()[2][vals[c]].sum())
                continue
            kinds[c] = ENTRY
            if isinstance(col, Texts):
                entries = _entries(col.texts, self._dumps)
                vals[c] = np.arange(base, base + n)
            else:
                entries = self._own_table(col)
                np.add(col.codes, base, out=vals[c])
                vals[c][col.codes == MISSING_CODE] = base + len(col.table)
            size += int(entries[1][vals[c] - base].sum())
            own.append(entries)
            base += entries[1].shape[0]
        if pieces is None:
            keys = [self._dumps(name) for name in block]
            pieces = [b"{" + keys[0] + b":", *(b"," + key + b":" for key in keys[1:]), b"}"] if keys else [b"{}"]
        template, template_off, _ = _joined([(b"".join(pieces), np.array([len(p) for p in pieces], dtype=np.int64))])
        entries_u8, entry_off, _ = _joined(own)
        shared, shared_off, _ = self._shared_entries()
        return _Rows(size=size + n * (int(template_off[-1]) + 1), ends=np.empty(n if ends else 0, dtype=np.int64),
                     args=(vals, kinds, template, template_off, entries_u8, entry_off, shared, shared_off))  # fmt: skip

    def findings(self, groups: list[FindingGroup]) -> Callable[[], bytes | memoryview]:
        """Findings by kind (:func:`~halfclose.analysis.document.finding_groups`) as the JSON
        objects of their dicts, separated by commas, in the block's order (the bytes orjson
        writes for them), the kernels not run yet: each kind's records written by
        :func:`~halfclose.report._jsonkernel.write_rows`, then put in order by
        :func:`~halfclose.report._jsonkernel.write_spans`."""
        from halfclose.report._jsonkernel import write_spans

        parts: list[tuple[I64, _Rows]] = []
        for g in groups:
            common = [self._dumps(name) for name in g.common]
            evidence = [self._dumps(name) for name in g.evidence]
            pieces = [b'{"kind":' + self._dumps(g.kind) + b"," + common[0] + b":"]
            pieces += [b"," + key + b":" for key in common[1:]]
            pieces += [b',"evidence":{' + key + b":" if i == 0 else b"," + key + b":" for i, key in enumerate(evidence)]
            pieces.append((b"}" if evidence else b',"evidence":{}') + b',"remedies":' + self._dumps(g.remedies) + b"}")
            parts.append((g.rows, self.prepare({**g.common, **g.evidence}, pieces=pieces, ends=True)))
        n = sum(int(rows.shape[0]) for rows, _ in parts)

        def write() -> bytes | memoryview:
            if not n:
                return b""
            starts = np.empty(n, dtype=np.int64)
            stops = np.empty(n, dtype=np.int64)
            written: list[memoryview] = []
            base = 0
            for rows, records in parts:
                written.append(records())
                stops[rows] = records.ends + base
                starts[rows[0]] = base
                starts[rows[1:]] = records.ends[:-1] + (base + 1)
                base += len(written[-1])
            src = np.frombuffer(b"".join(written), dtype=np.uint8)
            out = np.empty(base + n, dtype=np.uint8)
            return out.data[: write_spans(out, src, starts, stops)]

        return write


@dataclass(frozen=True, slots=True)
class _Rows:
    """A block's records ready for :func:`~halfclose.report._jsonkernel.write_rows`: calling it
    writes them (releasing the GIL) into a buffer of *size* bytes (at most) made then, so that
    blocks made ahead hold no output yet, and returns their bytes (*ends*, unless empty, then
    says where each record ends)."""

    size: int
    ends: I64
    args: tuple[Any, ...]

    def __call__(self) -> memoryview:
        from halfclose.report._jsonkernel import write_rows

        if self.args[0].shape[1] == 0:
            return memoryview(b"")
        out = np.empty(self.size, dtype=np.uint8)
        return out.data[: write_rows(out, self.ends, *self.args)]


#: A piece of the document: its bytes, or the call that makes them (the records' kernel).
_Piece = bytes | memoryview | Callable[[], bytes | memoryview]
#: Pieces made ahead of the writing thread (each block of records holds a few MB until written).
_AHEAD = 2
#: How often the interpreter hands the GIL over while a document is written by two threads.
_SWITCH_S = 0.0005
#: Pieces of at least this many bytes have their blocks reserved before they are written.
_RESERVED_FROM = 64 * 1024


def _json_pieces(result: Analysis) -> Iterator[_Piece]:
    """The compact JSON document (encoded by orjson, several times faster than the standard
    library), its long lists (:data:`~halfclose.analysis.document.BLOCK_LISTS`) :data:`_JSON_BLOCK`
    items at a time so that their values are never all in memory; lists of records held
    column-wise are written by the compiled kernel (:class:`_RowWriter`, :data:`_KERNEL_BLOCK` at
    a time) once the kernels run compiled (left to the writer to run: :func:`_write_pieces`),
    else by :func:`_rows_json`."""
    import orjson

    from halfclose.capture.compiling import compiled

    # compiled, the records are written by a kernel; else (a small capture) by templates
    writer = _RowWriter() if compiled() else None
    rows_json: Callable[[Block], _Piece] = _rows_json if writer is None else writer.prepare
    lists = {b.path: b for b in BLOCK_LISTS}
    parents = {b.path[:i] for b in BLOCK_LISTS for i in range(1, len(b.path))}

    def encode(value: Any, path: tuple[str, ...]) -> Iterator[_Piece]:
        if (spec := lists.get(path)) is not None:
            yield b"["
            by_kernel = writer is not None and (spec.columns is not None or spec.groups is not None)
            step = _KERNEL_BLOCK if by_kernel else _JSON_BLOCK
            for start in range(0, spec.count(result), step):
                rows = slice(start, start + step)
                if start:
                    yield b","
                if spec.columns is not None:
                    yield rows_json(spec.columns(result, rows))
                elif writer is not None and spec.groups is not None:
                    yield writer.findings(spec.groups(result, rows))
                else:
                    yield orjson.dumps((spec.encodable or spec.block)(result, rows))[1:-1]
            yield b"]"
        elif path in parents or not path:
            yield b"{"
            for i, (key, item) in enumerate(value.items()):
                yield (b"," if i else b"") + orjson.dumps(key) + b":"
                yield from encode(item, (*path, key))
            yield b"}"
        else:
            yield orjson.dumps(value)

    yield from encode(to_document(result, blocks=False), ())
    yield b"\n"


def _write_pieces(pieces: Iterator[_Piece], write: Callable[[bytes | memoryview], object]) -> None:
    """Write *pieces* in order with *write*: in a thread of its own, which also runs the records'
    kernels (they release the GIL), while the calling thread makes the next pieces (holding it).
    The pieces go over in batches, each ending with a kernel's, and meanwhile the interpreter
    hands the GIL over every :data:`_SWITCH_S` rather than every 5 ms: a thread coming back from
    a kernel, a write or the queue waits for the GIL up to that long. An error of either thread
    is raised here, the other stopped first."""
    import queue
    import threading

    ready: queue.Queue[list[_Piece] | None] = queue.Queue(maxsize=_AHEAD)
    failed: list[BaseException] = []

    def drain() -> None:
        done = False
        try:
            while (batch := ready.get()) is not None:
                for piece in batch:
                    write(piece() if callable(piece) else piece)
            done = True
        except BaseException as exc:  # raised in the calling thread
            failed.append(exc)
        while not done:  # the rest is dropped, so that the calling thread never waits
            done = ready.get() is None

    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, _SWITCH_S))
    writer = threading.Thread(target=drain, name="halfclose-json-write")
    writer.start()
    try:
        batch: list[_Piece] = []
        for piece in pieces:
            if failed:
                break
            batch.append(piece)
            if callable(piece):
                ready.put(batch)
                batch = []
        if batch and not failed:
            ready.put(batch)
    finally:
        ready.put(None)
        writer.join()
        sys.setswitchinterval(switch)
    if failed:
        raise failed[0]


def _reserving(fh: IO[bytes]) -> Callable[[bytes | memoryview], None]:
    """A writer into the new regular file *fh* that reserves the blocks of each large piece just
    before writing it (``posix_fallocate``, exactly the piece: the file never grows past what is
    written). Renamed over an old file, a file of delayed-allocation blocks is flushed by ext4
    then and there (its ``auto_da_alloc``: some 20-50 ms for 30 MB, waiting for the disk), a
    reserved one is not, and writing into reserved blocks costs less. Where reserving fails the
    writes go on as they are."""
    fd = fh.fileno()
    pos = 0
    reserving = True

    def write(data: bytes | memoryview) -> None:
        nonlocal pos, reserving
        size = len(data)
        if reserving and size >= _RESERVED_FROM:
            try:
                os.posix_fallocate(fd, pos, size)
            except OSError:  # (no room for it, or a file that cannot reserve)
                reserving = False
        fh.write(data)
        pos += size

    return write


def _write_document(result: Analysis, fh: IO[bytes]) -> None:
    """The compact document into the new regular file *fh*."""
    _write_pieces(_json_pieces(result), _reserving(fh))


def write_json(result: Analysis, path: str) -> None:
    """Write the JSON document to *path* (``-`` for standard output); indented up to 2,000
    connections, compact above."""
    # Indented for people when small; compact (and written block by block) when large.
    if len(result.connections) <= _INDENTED_MAX:
        _write_text(path, json.dumps(to_document(result), indent=1) + "\n")  # one C-encoded string
        return
    if path == "-":
        sys.stdout.flush()
        _write_pieces(_json_pieces(result), sys.stdout.buffer.write)
        sys.stdout.buffer.flush()
        return
    with atomic_file(path, "wb") as fh:
        _write_document(result, fh)


@contextlib.contextmanager
def json_written_meanwhile(result: Analysis, path: str) -> Iterator[None]:
    """Write the JSON document to *path* as :func:`write_json` does, a large one in threads of
    their own while the block runs (its records' kernel releases the GIL): the file is created at
    once (an unwritable path fails before the block), complete when the block ends, and replaces
    *path* then, whether the block failed or not. The writer's error is raised at the block's end
    (the block's own error, if any, as its context); a small document, or one for standard
    output, is written before the block."""
    if len(result.connections) <= _INDENTED_MAX or path == "-":
        write_json(result, path)
        yield
        return
    import threading

    failed: list[BaseException] = []
    block_error: BaseException | None = None
    with atomic_file(path, "wb") as fh:

        def write() -> None:
            try:
                _write_document(result, fh)
            except BaseException as exc:  # raised in the calling thread, at the block's end
                failed.append(exc)

        writer = threading.Thread(target=write, name="halfclose-json")
        writer.start()
        try:
            yield
        except BaseException as exc:
            block_error = exc
        finally:
            writer.join()
        if failed:
            if block_error is not None:
                failed[0].__context__ = block_error
            raise failed[0]
    if block_error is not None:
        raise block_error


def _csv(result: Analysis, fh: IO[Any]) -> None:
    cols = result.connections.columns()
    w = csv.writer(fh)
    w.writerow(list(cols))
    w.writerows(zip(*cols.values(), strict=True))


def connections_arrow(result: Analysis) -> Any:
    """The connection records as a ``pyarrow.Table`` typed from their declaration."""
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise EnvironmentProblem(
            "writing Parquet needs pyarrow: install it with 'pip install pyarrow' or use a .csv name"
        ) from exc
    schema = pa.schema([pa.field(s.name, s.arrow_type(pa)) for s in CONNECTION_FIELDS])
    return pa.Table.from_pydict(result.connections.columns(), schema=schema)


def _parquet(result: Analysis, path: str) -> None:
    table = connections_arrow(result)
    import pyarrow.parquet as pq

    with atomic_file(path, "wb") as fh:
        pq.write_table(table, fh)


def write_connections(result: Analysis, path: str) -> None:
    """Write connection records as CSV (``.csv``) or Parquet (``.parquet``/``.pq``)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        with atomic_file(path) as fh:
            _csv(result, fh)
        return
    if suffix in (".parquet", ".pq"):
        _parquet(result, path)
        return
    raise UsageError(f"--conns {path}: unknown table format {suffix or '(none)'}: name it .csv or .parquet")


def write_profile(result: Analysis, path: str) -> None:
    """Write ``{server name: idle timeout in seconds}`` as JSON (``-`` for standard output)."""
    _write_text(path, json.dumps(result.profile(), indent=1, sort_keys=True) + "\n")
