"""Errors that say whose fault they are, and the command's exit statuses.

Every error the command reports to a person derives from :class:`HalfcloseError` and carries
one line: what is wrong, where, and what to do. The CLI prints that line and exits with the
status :func:`exit_status` gives (:data:`EXIT_STATUS`, the one map from error kind to exit
status); anything else escaping is a bug in halfclose.
"""

from __future__ import annotations

import enum

__all__ = [
    "EXIT_STATUS",
    "CommandFailed",
    "EnvironmentProblem",
    "ExitStatus",
    "HalfcloseError",
    "InputError",
    "UsageError",
    "exit_status",
]


@enum.unique
class ExitStatus(enum.IntEnum):
    """Exit statuses of the ``halfclose`` command."""

    OK = 0
    #: The command ran but found or caused a failure (a check that did not hold).
    FAILURE = 1
    #: Bad input or environment: one line on stderr says what and what to do.
    BAD_INPUT = 2
    INTERRUPTED = 130


class HalfcloseError(Exception):
    """Base class: a problem reported to the user as one line, exit status 2."""


class UsageError(HalfcloseError):
    """The caller asked for something impossible (bad option value, wrong combination)."""


class InputError(HalfcloseError):
    """An input file is unreadable or not what it claims to be (the file's fault)."""


class EnvironmentProblem(HalfcloseError):
    """The host cannot do what was asked: not root, a program missing, a kernel feature absent."""


class CommandFailed(EnvironmentProblem):
    """An external program (ip, nft, tcpdump, ...) exited with an error."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        super().__init__(f"{' '.join(argv[:3])} failed with status {returncode}: {last}")


#: Error kind -> exit status, most specific first: the one place that says how each ends a command.
EXIT_STATUS: tuple[tuple[type[BaseException], ExitStatus], ...] = (
    (UsageError, ExitStatus.BAD_INPUT),
    (InputError, ExitStatus.BAD_INPUT),
    (EnvironmentProblem, ExitStatus.BAD_INPUT),
    (HalfcloseError, ExitStatus.BAD_INPUT),
    (KeyboardInterrupt, ExitStatus.INTERRUPTED),
)


def exit_status(exc: BaseException) -> ExitStatus:
    """The exit status a command ends with when *exc* stops it (see :data:`EXIT_STATUS`).

    Raises:
        TypeError: *exc* is of no kind in the map (a bug, not a user's problem).
    """
    for kind, status in EXIT_STATUS:
        if isinstance(exc, kind):
            return status
    raise TypeError(f"no exit status for {type(exc).__name__}") from exc
