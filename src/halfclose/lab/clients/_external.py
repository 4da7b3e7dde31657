"""Clients that are programs of their own (curl, Node.js, Go): run one as a child of the app and turn
each line it writes about a request into a record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from halfclose.lab.app import RequestRecord
from halfclose.lab.clients._common import Outcome, record

__all__ = ["from_json_line", "run_program"]

_OUTCOME_FIELDS = frozenset(Outcome.__dataclass_fields__)


def from_json_line(line: str) -> RequestRecord | None:
    """A record from a JSON line of a client program (``index``, ``start_ns``, ``latency_ns`` and
    :class:`Outcome` fields); None for any other line."""
    if not line.startswith("{"):
        return None
    data = json.loads(line)
    outcome = Outcome(**{k: v for k, v in data.items() if k in _OUTCOME_FIELDS})
    return record(int(data["index"]), int(data["start_ns"]), int(data["latency_ns"]), outcome)


def run_program(
    argv: Sequence[str],
    parse: Callable[[str], RequestRecord | None],
    emit: Callable[[RequestRecord], None],
    *,
    channel: str = "stdout",
    env: Mapping[str, str] | None = None,
    echo: Callable[[str], bool] = lambda line: bool(line.strip()),
) -> tuple[int, int]:
    """Run a client program, emitting a record for each line *parse* understands.

    *channel* is the stream the program reports on ("stdout" or "stderr"); the other one passes
    through to the app's stderr, and so do the lines of *channel* that give no record and that
    *echo* accepts. Returns the program's exit status and how many records it gave.
    """
    full_env = dict(os.environ) | dict(env or {})
    on_stdout = channel == "stdout"
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, env=full_env,
                            stdout=subprocess.PIPE if on_stdout else sys.stderr,
                            stderr=sys.stderr if on_stdout else subprocess.PIPE)
    stream: IO[bytes] | None = proc.stdout if on_stdout else proc.stderr
    assert stream is not None
    count = 0
    try:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            parsed = parse(line)
            if parsed is None:
                if echo(line):
                    print(line, file=sys.stderr, flush=True)
                continue
            emit(parsed)
            count += 1
    finally:
        if proc.poll() is None:
            proc.terminate()
        status = proc.wait()
    return status, count
