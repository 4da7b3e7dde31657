"""Compiled kernels, compiled only when the work is large enough to pay for it.

The inner loops of capture reading and flow building are written once, in the subset of Python
that numba compiles. Importing numba and loading even cached machine code costs about 0.25 s and
50-90 MB; a capture of a few packets is read faster as plain Python. So a kernel is declared with
:func:`kernel` and starts as plain Python (64-bit integer products wrapping silently, as in the
compiled code); :func:`compile_for` switches every declared kernel to its compiled form, once per
process, when a piece of work is at least :data:`COMPILE_FROM_BYTES` (or of unknown size, as
stdin is). Results are identical either way (the tests compare the two).

Compiling means: numba is imported, and in each module that declared kernels every global bound
to one is rebound to its numba dispatcher, so that compiled kernels call each other compiled;
Python callers that imported a kernel by name are forwarded to the dispatcher. Machine code is
cached on disk: beside the sources where that is writable (a clone of one's own), else in
numba's per-user cache directory, else (no writable home, as for a service user) in a per-uid
directory under the system's temporary directory, so that any user compiles only once. With
numba missing or ``NUMBA_DISABLE_JIT=1`` the kernels stay plain Python.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np

__all__ = ["COMPILE_FROM_BYTES", "compile_for", "compiled", "kernel", "use_compiled"]

F = TypeVar("F", bound=Callable[..., Any])

#: Work of at least this many input bytes (or of unknown size) runs compiled: below it, plain
#: Python finishes before numba would have loaded (about 2,000 packets of a typical capture).
COMPILE_FROM_BYTES = 256 * 1024


@dataclass(slots=True)
class _Kernel:
    py_func: Callable[..., Any]
    inline: Literal["never", "always"]
    module: dict[str, Any]
    dispatcher: Callable[..., Any] | None = None


@dataclass(slots=True)
class _State:
    kernels: list[_Kernel] = field(default_factory=list)
    compiled: bool = False
    tried: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE = _State()


def kernel(inline: Literal["never", "always"] = "never") -> Callable[[F], F]:
    """Declare *f* a kernel (``inline="always"``: inlined into compiled callers, for small helpers).

    The kernel runs as plain Python until :func:`use_compiled`; it is registered with the module
    that declares it (the caller's globals), where its name is rebound when compiling.
    """
    module = sys._getframe(1).f_globals

    def declare(f: F) -> F:
        entry = _Kernel(py_func=f, inline=inline, module=module)
        _STATE.kernels.append(entry)

        @functools.wraps(f)
        def run(*args: Any) -> Any:
            if entry.dispatcher is None and _STATE.compiled:
                _compile_pending()  # declared after the switch (its module imported later)
            compiled_f = entry.dispatcher
            if compiled_f is not None:
                return compiled_f(*args)
            with np.errstate(over="ignore"):
                return f(*args)

        run.py_func = f  # type: ignore[attr-defined]
        run.kernel = entry  # type: ignore[attr-defined]
        return cast(F, run)

    return declare


def compiled() -> bool:
    """True once the kernels run compiled (numba present, not disabled, and work large enough)."""
    return _STATE.compiled


def compile_for(nbytes: int | None) -> bool:
    """Compile the kernels when work of *nbytes* (None: unknown, as a stream) is coming; returns
    :func:`compiled`."""
    if nbytes is None or nbytes >= COMPILE_FROM_BYTES:
        return use_compiled()
    return _STATE.compiled


def _private_cache() -> str | None:
    """A per-uid cache directory under the temporary directory (mode 0700, owned by this uid)."""
    path = Path(tempfile.gettempdir()) / f"halfclose-numba-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError:
        return None
    return str(path) if st.st_uid == os.getuid() and path.is_dir() and not path.is_symlink() else None


def _njit(numba: Any, entry: _Kernel) -> Callable[..., Any]:
    """The dispatcher of one kernel, cached on disk where some cache directory can be had."""
    try:
        return cast("Callable[..., Any]", numba.njit(cache=True, nogil=True, inline=entry.inline)(entry.py_func))
    except RuntimeError:  # no writable cache directory found for its source
        pass
    source = entry.py_func.__code__.co_filename
    if os.path.isfile(source) and not numba.config.CACHE_DIR and (private := _private_cache()) is not None:
        numba.config.CACHE_DIR = private  # neither the sources' folder nor a home cache is writable
        return _njit(numba, entry)
    # generated source (exec'd: nothing to key a cache on), or no cache directory at all: compiled each run
    return cast("Callable[..., Any]", numba.njit(nogil=True, inline=entry.inline)(entry.py_func))


def _compile_pending() -> None:
    """Make dispatchers for the kernels that have none and rebind their names (numba imported)."""
    import numba

    with _STATE.lock:
        pending = [entry for entry in _STATE.kernels if entry.dispatcher is None]
        dispatchers = {id(entry): _njit(numba, entry) for entry in pending}
        for entry in pending:
            for name, value in list(entry.module.items()):
                if getattr(value, "kernel", None) is entry:
                    entry.module[name] = dispatchers[id(entry)]
        for entry in pending:
            entry.dispatcher = dispatchers[id(entry)]


def use_compiled() -> bool:
    """Compile every declared kernel, and those declared later (once per process); False when
    numba is missing or disabled."""
    with _STATE.lock:
        if _STATE.tried:
            return _STATE.compiled
        _STATE.tried = True
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a declared dependency
            return False
        if numba.config.DISABLE_JIT:  # type: ignore[attr-defined]
            return False
        _STATE.compiled = True
    _compile_pending()
    return True
