from __future__ import annotations

import pytest

from halfclose.errors import CommandFailed, EnvironmentProblem
from halfclose.proc import in_netns, require_program, run


def test_missing_program_names_the_package() -> None:
    with pytest.raises(EnvironmentProblem, match="apt-get install"):
        require_program("surely-not-a-program-here")


def test_failure_carries_the_last_stderr_line() -> None:
    with pytest.raises(CommandFailed, match="status 3: boom"):
        run(["sh", "-c", "echo first >&2; echo boom >&2; exit 3"])


def test_unchecked_failure_returns_the_result() -> None:
    assert run(["sh", "-c", "exit 4"], check=False).returncode == 4


def test_timeout_is_an_environment_problem() -> None:
    with pytest.raises(EnvironmentProblem, match="did not finish"):
        run(["sleep", "5"], timeout=0.2)


def test_in_netns_prefix() -> None:
    assert in_netns(None, ["x"]) == ["x"]
    assert in_netns("ns1", ["x"])[1:] == ["netns", "exec", "ns1", "x"]
