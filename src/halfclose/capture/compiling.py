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

Ahead of time: ``python -m halfclose.kernelbuild`` (run by scripts/setup) compiles the same
kernels with numba's ahead-of-time compiler into extension modules beside these sources (their
table is read by :mod:`halfclose.capture.aot`), for the argument types a run passes them. When
those modules are present and were built from the sources as they are now, compiling means
loading them (under a millisecond, a few MB, numba never imported); a call with argument types
they were not built for goes to numba's JIT instead, with the same result.
``HALFCLOSE_KERNELS=jit`` skips the built modules, ``=python`` keeps the kernels plain Python;
:func:`backend` says which ran.
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

__all__ = [
    "COMPILE_FROM_BYTES",
    "backend",
    "compile_for",
    "compiled",
    "compiled_global",
    "declared",
    "kernel",
    "signature_key",
    "use_compiled",
]

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
    #: The ahead-of-time compiled forms, by :func:`signature_key` of their arguments (the name of
    #: a form's module until its first call imports it).
    built: dict[Any, Callable[..., Any] | str] | None = None

    @property
    def name(self) -> str:
        """The kernel's name in the ahead-of-time module's table: declaring module, function."""
        return f"{self.module['__name__']}.{self.py_func.__name__}"


@dataclass(slots=True)
class _State:
    kernels: list[_Kernel] = field(default_factory=list)
    #: Module globals rebound before numba compiles (see :func:`compiled_global`): module, name, value.
    globals: list[tuple[dict[str, Any], str, Any]] = field(default_factory=list)
    compiled: bool = False
    tried: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The ahead-of-time module's kernels by name (None: not loaded), and whether numba's JIT ran.
    built: dict[str, dict[Any, Callable[..., Any] | str]] | None = None
    jit: bool = False


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
            if _STATE.built is not None and entry.dispatcher is None:
                if entry.built is None:  # declared after the switch (its module imported later)
                    entry.built = _STATE.built.get(entry.name, {})
                key = signature_key(args)
                built_f = entry.built.get(key) or _fitting(entry.built, key)
                if isinstance(built_f, str):  # the form's module, imported at its first call
                    built_f = _import_form(built_f)
                    if built_f is not None:
                        entry.built[key] = built_f
                if built_f is not None:
                    return built_f(*args)
                _use_jit()  # argument types the module was not built for (or it does not load)
            elif entry.dispatcher is None and _STATE.compiled:
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


def compiled_global(name: str, python: Any, compiled: Any) -> Any:
    """A global *name* of the calling module that holds *python* while its kernels run as plain
    Python and is rebound to *compiled* before numba compiles them (numba reads a global as a
    constant when it compiles): for a step that is free in one form and costly in the other, with
    the same result. Returns *python*: ``_U = compiled_global("_U", int, np.uint64)``."""
    _STATE.globals.append((sys._getframe(1).f_globals, name, compiled))
    return python


def compiled() -> bool:
    """True once the kernels run compiled (built ahead of time or by numba; work large enough)."""
    return _STATE.compiled


def backend() -> str:
    """How the kernels ran: ``python``, ``aot`` (the module built ahead of time), ``jit`` (numba),
    or ``aot+jit`` (some calls had argument types the module was not built for)."""
    if not _STATE.compiled:
        return "python"
    if _STATE.built is None:
        return "jit"
    return "aot+jit" if _STATE.jit else "aot"


_SCALAR_KEYS: dict[type, str] = {bool: "bool", np.bool_: "bool", int: "<i8", float: "<f8"}


def signature_key(args: Any) -> Any:
    """The types of *args* as numba would type them, as a hashable key: an array's dtype,
    dimensions, layout and writability; a scalar's dtype; a named tuple's name and fields."""
    keys: list[Any] = []
    for a in args:
        if isinstance(a, np.ndarray):
            flags = a.flags
            layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
            keys.append((a.dtype.str, a.ndim, layout, bool(flags.writeable)))
        elif (scalar := _SCALAR_KEYS.get(type(a))) is not None:
            keys.append(scalar)
        elif isinstance(a, np.generic):
            keys.append(a.dtype.str)
        elif isinstance(a, tuple):
            keys.append((type(a).__name__, signature_key(a)))
        else:
            keys.append(type(a).__name__)
    return tuple(keys)


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


def declared() -> list[tuple[str, Callable[..., Any], Callable[..., Any] | None]]:
    """Every declared kernel: its name, its Python function and its numba dispatcher (None
    until the JIT compiled it). For the ahead-of-time build."""
    return [(entry.name, entry.py_func, entry.dispatcher) for entry in _STATE.kernels]


def _compile_pending() -> None:
    """Make dispatchers for the kernels that have none and rebind their names (numba imported)."""
    import numba

    with _STATE.lock:
        for module, name, value in _STATE.globals:
            module[name] = value
        pending = [entry for entry in _STATE.kernels if entry.dispatcher is None]
        dispatchers = {id(entry): _njit(numba, entry) for entry in pending}
        for entry in pending:
            for name, value in list(entry.module.items()):
                if getattr(value, "kernel", None) is entry:
                    entry.module[name] = dispatchers[id(entry)]
        for entry in pending:
            entry.dispatcher = dispatchers[id(entry)]


def _fits(arg: Any, form: Any) -> bool:
    """Can a value of key *arg* go where the compiled form expects key *form*? The same types,
    but a writable array also where a read-only one is expected (the code never writes it)."""
    if arg == form:
        return True
    if not (isinstance(arg, tuple) and isinstance(form, tuple) and len(arg) == len(form)):
        return False
    if len(arg) == 4 and isinstance(arg[1], int):  # an array: dtype, dimensions, layout, writable
        return bool(arg[:3] == form[:3] and arg[3] and not form[3])
    return all(_fits(a, f) for a, f in zip(arg, form, strict=True))


def _import_form(module: str) -> Callable[..., Any] | None:
    """The compiled form in the built module *module*, or None when it does not load."""
    from halfclose.capture import aot

    try:
        return aot.function(module)
    except (ImportError, AttributeError, OSError):
        return None


def _fitting(forms: dict[Any, Callable[..., Any] | str], key: Any) -> Callable[..., Any] | str | None:
    """The compiled form *key*'s arguments fit (remembered under *key*), or None."""
    for form, f in list(forms.items()):
        if _fits(key, form):
            forms[key] = f
            return f
    return None


def use_compiled() -> bool:
    """Compile every declared kernel, and those declared later (once per process): load the
    module built ahead of time, else numba's JIT; False when neither is there, or disabled."""
    with _STATE.lock:
        if _STATE.tried:
            return _STATE.compiled
        _STATE.tried = True
        choice = os.environ.get("HALFCLOSE_KERNELS", "")
        if choice == "python" or os.environ.get("NUMBA_DISABLE_JIT", "0") not in {"", "0"}:
            return False
        if choice != "jit":
            from halfclose.capture import aot

            _STATE.built = aot.load()
            if _STATE.built is not None:
                for entry in _STATE.kernels:
                    entry.built = _STATE.built.get(entry.name, {})
                _STATE.compiled = True
                return True
    return _use_jit()


def _use_jit() -> bool:
    """Switch to numba's JIT (once): every kernel not yet compiled gets its dispatcher."""
    with _STATE.lock:
        already = _STATE.jit
    if already:
        _compile_pending()  # kernels declared since
        return True
    with _STATE.lock:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a declared dependency
            return False
        if numba.config.DISABLE_JIT:  # type: ignore[attr-defined]
            return False
        _STATE.compiled = _STATE.jit = True
    _compile_pending()
    return True
