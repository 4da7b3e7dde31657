from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from halfclose.errors import EnvironmentProblem
from halfclose.lab import gobuild

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="golang-go is not installed")


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "hello.go"
    path.write_text(f'package main\n\nimport "fmt"\n\nfunc main() {{ fmt.Println("{tmp_path.name}") }}\n')
    yield path
    shutil.rmtree(gobuild.binary(path, "hello").parent, ignore_errors=True)


def test_a_program_is_built_once_into_the_cache_for_every_uid(source: Path) -> None:
    built = gobuild.build(source, "hello")
    assert built == gobuild.binary(source, "hello")
    assert built.parent.parent == gobuild.CACHE
    assert stat.S_IMODE(built.stat().st_mode) == 0o755
    assert subprocess.run([built], capture_output=True, text=True, check=True).stdout.strip() == source.parent.name
    mtime = built.stat().st_mtime_ns
    assert gobuild.build(source, "hello") == built
    assert built.stat().st_mtime_ns == mtime  # not built again


def test_a_source_that_does_not_build_says_why(source: Path) -> None:
    source.write_text("package main\n\nfunc main() { undefined() }\n")
    with pytest.raises(EnvironmentProblem, match=r"hello\.go does not build with .*undefined"):
        gobuild.build(source, "hello")
    assert not gobuild.binary(source, "hello").exists()
