"""The kernels compiled ahead of time: extension modules beside these sources, and their table.

:mod:`halfclose.kernelbuild` (scripts/setup runs it) compiles each kernel, for each argument type
a run passes it, with numba's ahead-of-time compiler into an extension module
``_aot_<digest>_<n>`` here, and writes the table ``_aot.json``: the digest of the kernels' source
files and, per kernel, the argument types (as :func:`halfclose.capture.compiling.signature_key`
spells them) and module of each compiled form.

:func:`load` is what a run calls: the table, checked against the sources as they are now (an
edited kernel makes the modules stale: the JIT runs instead until the next build), with the
modules found; :func:`function` imports one when its kernel is first called (a run imports the
few it uses, in the thread that uses them). Loading them imports neither numba nor llvmlite.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

__all__ = ["FILES", "SYMBOL", "TABLE", "function", "load", "sources_digest"]

_PACKAGE = Path(__file__).resolve().parents[1]
#: The table of the built module.
TABLE = Path(__file__).with_name("_aot.json")
#: The source files the kernels' machine code depends on (relative to the package).
FILES = ("capture/_kernels.py", "capture/columns.py", "analysis/_flowkernel.py", "analysis/_common.py",
         "analysis/_tcpkernel.py", "report/_jsonkernel.py")
_FORMAT = 1
#: The name of the one function of each built module.
SYMBOL = "kernel"


def _cpu_flags() -> bytes:
    """The CPU's instruction set extensions (the modules are built for the machine's own CPU)."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            for line in f:
                if line.startswith((b"flags", b"Features")):
                    return line
    except OSError:
        pass
    return b""


def sources_digest() -> str:
    """sha256 of the kernels' source files, with the numpy major version the modules link to and
    the CPU's instruction set extensions they use."""
    h = hashlib.sha256(f"{_FORMAT} numpy {np.__version__.split('.')[0]}\n".encode() + _cpu_flags())
    for name in FILES:
        h.update(name.encode() + b"\0" + (_PACKAGE / name).read_bytes())
    return h.hexdigest()


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load() -> dict[str, dict[Any, Callable[..., Any] | str]] | None:
    """The built kernels by name, then by argument types: the module of each form (for
    :func:`function`); None when there is no module built from the sources as they are now."""
    try:
        table = json.loads(TABLE.read_text())
        if table.get("sources") != sources_digest():
            return None
        forms: dict[str, dict[Any, Callable[..., Any] | str]] = {
            name: {_tuples(key): module for key, module in entries} for name, entries in table["kernels"].items()
        }
        modules = {module for entries in table["kernels"].values() for _, module in entries}
        if any(importlib.util.find_spec(f"halfclose.capture.{module}") is None for module in modules):
            return None
        return forms
    except (OSError, ValueError, KeyError, ImportError, AttributeError):
        return None


def function(module: str) -> Callable[..., Any]:
    """The compiled form in built module *module* (imported now if it was not).

    Raises:
        ImportError: the module does not load.
    """
    return cast("Callable[..., Any]", getattr(importlib.import_module(f"halfclose.capture.{module}"), SYMBOL))
