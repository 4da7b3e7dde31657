"""The analysis's I/O edge: capture files in, :class:`~halfclose.analysis.Analysis` out.

:mod:`halfclose.analysis` is pure (packet batches in, records out); this module opens the
captures through :func:`halfclose.capture.open_captures` (the capture package's reading edge)
and reads them in a second thread while the analysis runs (:func:`prefetch`). It is the only
place of the analysis path that opens files or starts threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:  # (the stages are loaded by analyze(): prefetch needs only the capture package)
    from halfclose.analysis.engine import Analysis, AnalysisOptions

__all__ = ["analyze", "prefetch"]

T = TypeVar("T")


def analyze(
    sources: Sequence[str | Path] | str | Path,
    options: AnalysisOptions | None = None,
    *,
    progress: Callable[[int, int | None], None] | None = None,
) -> Analysis:
    """Read capture files (``"-"`` for stdin) and analyse them.

    *progress*, if given, is called as ``progress(bytes_done, bytes_total_or_None)``.

    Raises:
        InputError: a file cannot be opened or is not a capture (the message names it).
    """
    from halfclose.analysis.engine import analyze_batches
    from halfclose.capture import open_captures

    names = [sources] if isinstance(sources, str | Path) else list(sources)
    # the reading thread is stopped on the way out, also when the analysis fails
    with open_captures(names, progress=progress) as reader, contextlib.closing(prefetch(reader)) as batches:
        return analyze_batches(
            batches, options, capture_issues=lambda: reader.issues, capture_stats=lambda: reader.stats.total
        )


_DONE = object()


@dataclass(frozen=True, slots=True)
class _Failed:
    exc: BaseException


def prefetch(batches: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """*batches*, produced by a worker thread up to *depth* batches ahead.

    The compiled capture and flow kernels release the GIL, so reading the next batch overlaps
    analysing this one (on two cores, most of the reading time). The worker's exceptions are
    raised here; closing the iterator early stops the worker before returning.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for batch in batches:
                q.put(batch)  # blocks while the queue is full; the consumer drains it to stop us
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(_Failed(exc))

    worker = threading.Thread(target=work, name="halfclose-capture-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            batch = cast(T, item)
            del item
            yield batch
            del batch  # not kept alive while waiting for the next one
    finally:
        stop.set()
        while worker.is_alive():  # a worker blocked on a full queue gets room to see the stop
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
        worker.join()
