"""Kernels run as plain Python for small inputs (numba never imported) and compiled for large
ones: from the modules built ahead of time (numba never imported either) when they match the
sources, else by numba's JIT, whose code is cached on disk for any user. All three give the same
analysis."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from capture_bytes import Rec, eth, ipv4, pcap, tcp
from halfclose.capture import aot
from halfclose.capture.compiling import COMPILE_FROM_BYTES

REPO = Path(__file__).resolve().parents[1]

_PROBE = textwrap.dedent(
    """
    import sys
    from halfclose.analysis_io import analyze
    from halfclose.capture import compiling
    a = analyze(sys.argv[1:])
    print(a.summary.tcp_connections, "numba" in sys.modules, compiling.compiled(), compiling.backend())
    """
)


def _capture(path: Path, connections: int) -> Path:
    recs = []
    for i in range(connections):
        src, dst = ("198.18.0.10", 20000 + i % 40000), ("198.18.0.1", 443)
        seg = tcp(src[1], dst[1], seq=1000 + i, flags=0x02)
        frame = eth(0x0800, ipv4(6, seg, src=src[0], dst=dst[0]))
        recs.append(Rec(ts_ns=1_700_000_000_000_000_000 + i * 1000, data=frame))
    path.write_bytes(pcap(recs))
    return path


def _probe(*captures: Path, kernels: str = "") -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HALFCLOSE_KERNELS=kernels)
    env.pop("NUMBA_DISABLE_JIT", None)
    out = subprocess.run([sys.executable, "-c", _PROBE, *map(str, captures)], env=env, capture_output=True,
                         text=True, check=True, timeout=600)  # fmt: skip
    return out.stdout.split()


def test_a_small_capture_never_imports_numba_a_large_one_runs_compiled(tmp_path: Path) -> None:
    """A large capture runs the modules built ahead of time (scripts/setup builds them), without
    numba; ``HALFCLOSE_KERNELS=jit`` runs numba's JIT instead."""
    small = _capture(tmp_path / "small.pcap", 10)
    large = _capture(tmp_path / "large.pcap", 5000)
    assert small.stat().st_size < COMPILE_FROM_BYTES <= large.stat().st_size
    assert _probe(small) == ["10", "False", "False", "python"]
    assert aot.load() is not None, "the kernels are not built ahead of time: run ./scripts/setup"
    assert _probe(large) == ["5000", "False", "True", "aot"]
    assert _probe(large, kernels="jit") == ["5000", "True", "True", "jit"]
    assert _probe(large, kernels="python") == ["5000", "False", "False", "python"]


_DOCUMENT = textwrap.dedent(
    """
    import sys
    from halfclose.capture import compiling
    from halfclose.cli import main
    compiling.use_compiled()  # whatever the captures' size
    status = main(["analyze", *sys.argv[1:]])
    print(compiling.backend(), status)
    """
)


def test_built_jit_and_python_kernels_give_the_same_analysis(tmp_path: Path) -> None:
    """The same generated captures (pcap with enough connections that the flow table grows, pcapng
    of Linux cooked frames, a gzip-compressed copy read as a stream) analysed with the modules built
    ahead of time, numba's JIT and plain Python: the same summary and connections, record by record."""
    gen = REPO / "bench" / "gen_capture.py"
    many, sll2 = tmp_path / "many.pcap", tmp_path / "sll2.pcapng"
    subprocess.run([sys.executable, str(gen), str(many), "--packets", "30000", "--connections", "3000", "--seed", "7"],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    subprocess.run([sys.executable, str(gen), str(sll2), "--packets", "3000", "--format", "pcapng", "--link", "sll2",
                    "--nano", "--seed", "8"], check=True, capture_output=True, timeout=300)  # fmt: skip
    packed = tmp_path / "many.pcap.gz"
    packed.write_bytes(gzip.compress(many.read_bytes()))
    outs: dict[str, list[bytes]] = {}
    for kernels in ("", "jit", "python"):
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HALFCLOSE_KERNELS=kernels)
        env.pop("NUMBA_DISABLE_JIT", None)
        outs[kernels] = []
        for path in (many, sll2, packed):
            doc = tmp_path / f"{path.name}.{kernels or 'aot'}.json"
            run = subprocess.run([sys.executable, "-c", _DOCUMENT, str(path), "--json", str(doc)], env=env,
                                 capture_output=True, text=True, check=True, timeout=600)  # fmt: skip
            assert run.stdout.split()[-2:] == [kernels or "aot", "0"], run.stdout[-300:]
            outs[kernels].append(doc.read_bytes())
    assert outs[""] == outs["jit"] == outs["python"]
    assert json.loads(outs[""][0])["summary"]["tcp_connections"] > 2000


def test_an_edited_kernel_makes_the_built_modules_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table names the digest of the kernels' sources: once one differs, nothing is loaded."""
    assert aot.load() is not None, "the kernels are not built ahead of time: run ./scripts/setup"
    package = tmp_path / "halfclose"
    for name in aot.FILES:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(aot.TABLE.parents[1] / name, package / name)
    monkeypatch.setattr(aot, "_PACKAGE", package)
    assert aot.load() is not None
    kernels = package / "capture" / "_kernels.py"
    kernels.write_text(kernels.read_text().replace("_MAX_DEPTH = 8", "_MAX_DEPTH = 9"))
    assert aot.load() is None


_KERNEL_MODULE = textwrap.dedent(
    """
    from halfclose.capture.compiling import kernel, use_compiled

    namespace = {}
    exec("def generated(a):\\n    return a", namespace)  # no source file: never cached
    generated = kernel()(namespace["generated"])

    @kernel()
    def add(a, b):
        return generated(a) + b

    assert use_compiled()
    print(add(2, 3), type(add).__name__)
    """
)


def test_kernels_are_cached_beside_their_sources_when_that_is_writable(tmp_path: Path) -> None:
    """A kernel of generated source (not cacheable) declared first does not send the others'
    cache elsewhere: a writable source folder keeps them in its ``__pycache__``."""
    (tmp_path / "own_kernels.py").write_text(_KERNEL_MODULE)
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}:{tmp_path}")
    env.pop("NUMBA_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-c", "import own_kernels"], env=env, capture_output=True, text=True,
                         timeout=300, check=True)  # fmt: skip
    assert run.stdout.split() == ["5", "CPUDispatcher"]
    assert [p.name.split("-")[0] for p in (tmp_path / "__pycache__").glob("*.nbi")] == ["own_kernels.add"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_user_who_can_write_neither_the_sources_nor_a_home_gets_a_private_cache() -> None:
    """The kernels' folder not writable, no home: the machine code goes to a per-uid folder
    under the temporary directory (mode 0700), and a second run finds it there."""
    src = Path(tempfile.mkdtemp(prefix="hc-kernels-", dir="/tmp"))  # (pytest's folders are root's only)
    src.chmod(0o755)
    (src / "nobody_kernels.py").write_text(_KERNEL_MODULE)
    cache = Path("/tmp") / "halfclose-numba-65534"
    shutil.rmtree(cache, ignore_errors=True)
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "PYTHONPATH": f"{REPO / 'src'}:{src}",
           "TMPDIR": "/tmp"}  # fmt: skip
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
            "import nobody_kernels"]  # fmt: skip
    try:
        first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd="/")
        assert first.returncode == 0, first.stderr
        assert first.stdout.split() == ["5", "CPUDispatcher"]
        assert cache.stat().st_mode & 0o777 == 0o700 and cache.stat().st_uid == 65534
        cached = sorted(p.name for p in cache.rglob("*.nbi"))
        assert cached and all("nobody_kernels.add" in name for name in cached)
        assert not (src / "__pycache__").exists()
        hits = [*argv[:-1], "import nobody_kernels; print(nobody_kernels.add.stats.cache_hits)"]
        second = subprocess.run(hits, env=env, capture_output=True, text=True, timeout=300, cwd="/")
        assert second.returncode == 0, second.stderr
        assert second.stdout.split()[-1] != "Counter()"  # loaded from the cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)


_GLOBAL_MODULE = textwrap.dedent(
    """
    import numpy as np
    from halfclose.capture.compiling import compiled_global, kernel, use_compiled

    _U = compiled_global("_U", int, np.uint64)

    @kernel()
    def index_type(buf, p):
        return buf[_U(p)], _U(p) - _U(1) > _U(0)  # unsigned: 0 - 1 wraps to a large number

    buf = np.arange(4, dtype=np.uint8)
    print(index_type(buf, 2)[0], index_type(buf, 0)[1])  # plain Python: int
    assert use_compiled()
    print(index_type(buf, 2)[0], index_type(buf, 0)[1], type(index_type).__name__)
    """
)


def test_a_compiled_global_is_rebound_before_numba_compiles(tmp_path: Path) -> None:
    """``compiled_global``: the plain-Python value while kernels run as Python (an int index, quick
    there), the compiled one in the machine code (an unsigned index: numba does not wrap it)."""
    (tmp_path / "global_kernels.py").write_text(_GLOBAL_MODULE)
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}:{tmp_path}", HALFCLOSE_KERNELS="jit",
               NUMBA_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    run = subprocess.run([sys.executable, "-c", "import global_kernels"], env=env, capture_output=True, text=True,
                         timeout=300, check=True)  # fmt: skip
    assert run.stdout.split() == ["2", "False", "2", "True", "CPUDispatcher"]


_IMPORTED = textwrap.dedent(
    """
    import sys
    from halfclose.capture import compiling, open_captures
    assert compiling.use_compiled() and compiling.backend() == "aot"
    built = lambda: sorted(m for m in sys.modules if m.startswith("halfclose.capture._aot_"))
    before = built()
    with open_captures(sys.argv[1:]) as r:
        rows = sum(len(b) for b in r)
    print(len(before), len(built()), rows)
    """
)


def test_a_built_module_is_imported_at_its_kernels_first_call(tmp_path: Path) -> None:
    """Switching to the built kernels imports none of their modules; reading a pcap file imports the
    pcap walker's (the flow, pcapng and document kernels' modules stay unloaded)."""
    assert aot.load() is not None, "the kernels are not built ahead of time: run ./scripts/setup"
    large = _capture(tmp_path / "large.pcap", 5000)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HALFCLOSE_KERNELS="")
    out = subprocess.run([sys.executable, "-c", _IMPORTED, str(large)], env=env, capture_output=True, text=True,
                         check=True, timeout=300)  # fmt: skip
    before, after, rows = map(int, out.stdout.split())
    assert (before, rows) == (0, 5000)
    assert after == 1  # one form of walk_pcap (the walker loop it calls is compiled into it)
