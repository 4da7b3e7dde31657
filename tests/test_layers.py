"""The layers: lower packages never import the lab, the CLI or report, and the pure packages do no
I/O except at their named edges (checked on the source with ast, imports inside functions too)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "halfclose"

LOWER = ("capture", "analysis", "sockdiag", "netfilter", "client")
UPPER = ("halfclose.lab", "halfclose.cli", "halfclose.report")
#: The only modules of the pure packages that may open files or start threads.
EDGES = {"capture/source.py", "capture/aot.py"}
PURE = ("capture", "analysis")

#: Calls that open files or start threads: a bare name, or an attribute (method or module function).
BARE = {"open", "Thread", "fdopen", "mkstemp", "NamedTemporaryFile", "TemporaryFile", "mmap"}
ATTRS = {"open", "read_bytes", "read_text", "write_bytes", "write_text", "Thread", "fdopen", "mkstemp",
         "NamedTemporaryFile", "TemporaryFile", "mkdtemp", "mmap", "start_new_thread", "submit", "touch"}  # fmt: skip


def modules(package: str) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted((SRC / package).rglob("*.py")):
        yield str(path.relative_to(SRC)), ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module, module: str) -> Iterator[str]:
    package = module.rsplit("/", 1)[0].replace("/", ".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = f"halfclose.{package}".split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


@pytest.mark.parametrize("package", LOWER)
def test_lower_packages_never_import_lab_cli_or_report(package: str) -> None:
    bad = [
        f"{name}: {target}"
        for name, tree in modules(package)
        for target in imported(tree, name)
        if any(target == u or target.startswith(u + ".") for u in UPPER)
    ]
    assert bad == []


def io_calls(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in BARE:
            yield f"{f.id}() at line {node.lineno}"
        elif isinstance(f, ast.Attribute) and f.attr in ATTRS:
            yield f".{f.attr}() at line {node.lineno}"


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io_outside_their_edge(package: str) -> None:
    bad = [f"{name}: {call}" for name, tree in modules(package) if name not in EDGES for call in io_calls(tree)]
    assert bad == []


def test_the_checks_see_what_they_look_for() -> None:
    tree = ast.parse(
        "import threading\nfrom halfclose.lab import runner\nfrom ..report import html\n"
        "def f(p):\n    open(p)\n    p.read_bytes()\n    threading.Thread(target=f).start()\n    gzip.open(p)\n"
    )
    assert len(list(io_calls(tree))) == 4
    targets = set(imported(tree, "analysis/x.py"))
    assert {"halfclose.lab", "halfclose.report"} <= targets
    assert any(t.startswith("halfclose.lab") for t in targets)


def test_the_analysis_edge_is_outside_the_pure_package() -> None:
    (SRC / "analysis_io.py").stat()
    edge = ast.parse((SRC / "analysis_io.py").read_text())
    assert any("Thread" in call for call in io_calls(edge))  # the prefetch thread lives there
