"""Compile the capture and flow kernels ahead of time (scripts/setup runs this).

``python -m halfclose.kernelbuild CAPTURE...`` analyses the captures with numba's JIT, so that
every kernel gets compiled for each argument type a run passes it, then compiles the same Python
functions for those types with numba's ahead-of-time compiler (``numba.pycc``), one extension
module per form, into the capture package, with their table (:mod:`halfclose.capture.aot`). The
compiled forms release the GIL, as the JIT's do. ``--check`` exits 0 when the built modules match
the sources as they are now, 1 when they are missing or stale.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from halfclose.capture import aot

__all__ = ["build", "main"]


def _type_key(t: Any) -> Any:
    """:func:`~halfclose.capture.compiling.signature_key` of a value numba types as *t*."""
    types = _numba("numba.core.types")
    as_dtype = _numba("numba.np.numpy_support").as_dtype
    if isinstance(t, types.Array):
        return (as_dtype(t.dtype).str, t.ndim, t.layout, bool(t.mutable))
    if isinstance(t, types.Boolean):
        return "bool"
    if isinstance(t, types.Number):
        return as_dtype(t).str
    if isinstance(t, types.BaseNamedTuple):
        return (t.instance_class.__name__, tuple(_type_key(m) for m in t.types))
    if isinstance(t, types.BaseTuple):
        return ("tuple", tuple(_type_key(m) for m in t.types))
    raise TypeError(f"no ahead-of-time key for argument type {t}")


def _release_gil_flags() -> None:
    """Make numba.pycc's wrappers release the GIL around the compiled code, as ``nogil=True``
    does for the JIT (pycc has no option of its own for it)."""
    pycc_compiler = _numba("numba.pycc.compiler")
    flags: Any = _numba("numba.core.compiler").Flags

    class ReleasingFlags(flags):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.release_gil = True

    pycc_compiler.Flags = ReleasingFlags


def _numba(module: str) -> Any:
    """A numba module, untyped (numba has no annotations)."""
    return importlib.import_module(module)


def build(captures: Sequence[str]) -> Path:
    """Compile the kernels for the argument types an analysis of *captures* passes them; returns
    the table's path.

    Each compiled form is built in a fresh interpreter of its own (two at a time): numba's
    inlining of ``inline="always"`` helpers does not survive a second ahead-of-time compilation
    of the same helper in one process.
    """
    digest = aot.sources_digest()
    os.environ["HALFCLOSE_KERNELS"] = "jit"
    with tempfile.TemporaryDirectory(prefix="halfclose-aot-") as tmp:
        os.environ["NUMBA_CACHE_DIR"] = tmp  # compiled afresh: every form a run needs is seen
        from halfclose.analysis import _flowkernel  # noqa: F401  (declares its kernels)
        from halfclose.analysis_io import analyze
        from halfclose.capture import _kernels, compiling  # noqa: F401

        if not compiling.use_compiled():
            raise RuntimeError("numba's JIT is not available: nothing to compile ahead of time")
        from halfclose.report import _jsonkernel  # noqa: F401
        from halfclose.report.analysis_files import write_json

        # (the document's kernel runs for an analysis of over 2,000 connections)
        write_json(analyze(list(captures)), os.path.join(tmp, "document.json"))
        jobs: list[tuple[str, bytes, str, str]] = []
        kernels: dict[str, list[Any]] = {}
        for kname, _, jitted in compiling.declared():
            dispatcher: Any = jitted
            for args in dispatcher.signatures if dispatcher is not None else ():
                sig = dispatcher.overloads[args].signature
                module = f"_aot_{digest[:16]}_{len(jobs)}"
                jobs.append((kname, pickle.dumps(sig), module, tmp))
                kernels.setdefault(kname, []).append([tuple(_type_key(t) for t in args), module])
        with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
            built = list(pool.map(_build_one, jobs))
        target = aot.TABLE.parent
        for old in target.glob("_aot_*"):
            old.unlink()
        for path in built:
            _copy(Path(path), target / Path(path).name)
    table = {"sources": digest, "numba": _numba_version(), "kernels": kernels}
    fd, partial = tempfile.mkstemp(dir=aot.TABLE.parent, prefix=".aot-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(table, f, indent=1)
    os.chmod(partial, 0o644)
    os.replace(partial, aot.TABLE)
    return aot.TABLE


def _build_one(job: tuple[str, bytes, str, str]) -> str:
    """Compile kernel *kname* for one signature into module *module* in folder *out* (a fresh
    interpreter: see :func:`build`)."""
    kname, sig, module, out = job
    os.environ["HALFCLOSE_KERNELS"] = "jit"
    from halfclose.analysis import _flowkernel, _tcpkernel  # noqa: F401
    from halfclose.capture import _kernels, compiling  # noqa: F401
    from halfclose.report import _jsonkernel  # noqa: F401

    compiling.use_compiled()
    (py_func,) = [f for name, f, _ in compiling.declared() if name == kname]
    _release_gil_flags()
    cc = _numba("numba.pycc").CC(module)
    cc.output_dir = out
    cc.verbose = False
    cc.target_cpu = "host"  # the machine's own instructions, as the JIT's (the digest names the CPU)
    cc.export(aot.SYMBOL, pickle.loads(sig))(py_func)
    cc.compile()
    (path,) = Path(out).glob(f"{module}.*")
    return str(path)


def _copy(src: Path, dst: Path) -> None:
    partial = dst.with_name(f".{dst.name}.partial")
    partial.write_bytes(src.read_bytes())
    partial.chmod(0o755)
    os.replace(partial, dst)


def _numba_version() -> str:
    import numba

    return str(numba.__version__)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m halfclose.kernelbuild CAPTURE...``: build; ``--check``: exit 0 when the built
    module matches the sources, 1 when it is missing or stale."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--check"]:
        return 0 if aot.load() is not None else 1
    if not args or any(a.startswith("-") for a in args):
        print("usage: python -m halfclose.kernelbuild (--check | CAPTURE...)", file=sys.stderr)
        return 2
    print(build(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
