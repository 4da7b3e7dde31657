"""The argument parser of the ``halfclose`` command and of the programs the lab starts.

Its errors are one line on stderr and exit status 2, like every other bad input. It lives
below :mod:`halfclose.cli` so that the lab's own programs (``python -m halfclose.lab.delay``)
use it without importing the command line.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from halfclose.errors import ExitStatus

__all__ = ["ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitStatus.BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
