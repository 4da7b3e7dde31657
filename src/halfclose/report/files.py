"""Writing a report where the user asked: a file replaced atomically, or standard output for ``-``."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["is_stdout", "write_text"]


def is_stdout(path: Path | None) -> bool:
    """True when *path* is ``-``: the report goes to standard output."""
    return path is not None and str(path) == "-"


def write_text(path: Path, text: str) -> None:
    """Write *text* to *path* (``-``: standard output) so that readers see the old file or the new one whole."""
    if is_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = path.absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
