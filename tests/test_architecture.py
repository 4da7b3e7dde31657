"""The import rules of docs/architecture.md hold in the code: each package imports only what its row lists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "halfclose"
DOC = ROOT / "docs" / "architecture.md"


def _allowed() -> dict[str, set[str] | None]:
    """Package -> the packages it may import (None: everything), from the doc's table."""
    allowed: dict[str, set[str] | None] = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `halfclose\.(\w+)` \|.*\|([^|]*)\|$", line)
        if match:
            cell = match.group(2).strip()
            allowed[match.group(1)] = None if cell == "everything" else set(re.findall(r"`(\w+)`", cell))
    return allowed


def _imports() -> dict[str, dict[str, set[str]]]:
    """Package -> imported halfclose package -> the files that import it (lazy imports included)."""
    found: dict[str, dict[str, set[str]]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if len(rel.parts) == 1 and rel.stem in {"__init__", "__main__"}:
            continue
        package = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "halfclose" and len(parts) > 1 and parts[1] != package:
                    found.setdefault(package, {}).setdefault(parts[1], set()).add(str(rel))
    return found


def test_the_doc_lists_every_package() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py") if p.stem not in {"__init__", "__main__"}}
    assert set(_allowed()) == packages


def test_each_package_imports_only_what_the_doc_allows() -> None:
    allowed = _allowed()
    wrong = [
        f"{package} imports {target} ({', '.join(sorted(files))})"
        for package, targets in _imports().items()
        for target, files in targets.items()
        if allowed[package] is not None and target not in allowed[package]  # type: ignore[operator]
    ]
    assert wrong == []


def test_lower_packages_never_import_the_lab_the_cli_or_report() -> None:
    allowed = _allowed()
    for package, may in allowed.items():
        if package in {"cli", "report", "lab", "fleet", "kernelbuild"}:
            continue
        assert may is not None and not may & {"lab", "cli", "report"}, package
    assert not (allowed["lab"] or set()) & {"cli", "report"}
    # The kernel build runs what `analyze --json` runs (the document's kernel included), and no
    # package imports it: it sits on top beside the CLI, never driving the lab or the CLI.
    assert not (allowed["kernelbuild"] or set()) & {"cli", "lab"}
    assert not any("kernelbuild" in (may or set()) for package, may in allowed.items() if package != "cli")
    # The fleet layer writes its dataset through report's writers; it never drives the lab or the CLI.
    assert not (allowed["fleet"] or set()) & {"cli", "lab"}
    assert "cli" not in (allowed["report"] or set())
