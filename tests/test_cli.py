from __future__ import annotations

import os
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


def _threads_after_numpy(command: str, env_value: str | None) -> int:
    code = (
        "import os; from halfclose.cli import COMMANDS, process_settings; "
        f"process_settings(COMMANDS[{command!r}]); import numpy; print(len(os.listdir('/proc/self/task')))"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"}}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return int(out.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no threads on one CPU")
def test_analyze_starts_no_blas_threads_but_keeps_a_users_setting() -> None:
    assert _threads_after_numpy("lab", None) > 1  # numpy's OpenBLAS starts threads of its own
    assert _threads_after_numpy("analyze", None) == 1
    assert _threads_after_numpy("analyze", "2") == 2
