from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        pytest.fail("tshark is not installed: run ./scripts/setup")
    return path


@pytest.fixture(scope="session")
def compare_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One `lab compare` with all five strategies, as in the README (--rtt 50, 6 requests, 3 s gaps)."""
    import json

    from runcli import halfclose

    out = tmp_path_factory.mktemp("compare")
    result = halfclose(
        "lab", "compare", "--rtt", "50", "--requests", "6", "--gap", "3", "--idle-timeout", "2",
        "--out", str(out / "runs"), "--json", str(out / "compare.json"), "--html", str(out / "report.html"),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "json": json.loads((out / "compare.json").read_text()),
        "html": out / "report.html",
    }
