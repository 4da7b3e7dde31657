from __future__ import annotations

import subprocess
import sys

import pytest

from halfclose.cli import main


def test_overview_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "lab" in out


def test_unknown_command_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown command 'frobnicate'" in err


def test_no_command_is_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2


def test_help_does_not_import_subcommands() -> None:
    code = (
        "import sys; from halfclose.cli import main; main(['--help']); "
        "print(sorted(m for m in sys.modules if m.startswith('halfclose.') and m != 'halfclose.cli'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['halfclose.errors']"
