"""``halfclose report``: the fleet view of a dataset as a self-contained HTML page."""

from __future__ import annotations

import argparse
import os

from halfclose.errors import ExitStatus, UsageError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``halfclose report``."""
    parser.add_argument("dataset", metavar="DIR", help="the dataset folder (or fsspec URL)")
    parser.add_argument("--html", metavar="FILE", required=True, help="write the page here")


def run(args: argparse.Namespace) -> int:
    """Query the dataset and write the page atomically."""
    from halfclose.fleet.dataset import write_text_atomic
    from halfclose.fleet.query import fleet_figures
    from halfclose.report.fleet import fleet_html

    if not os.path.isdir(os.path.dirname(os.path.abspath(args.html))):
        raise UsageError(f"--html {args.html}: its folder does not exist")
    figures = fleet_figures(args.dataset)
    page = fleet_html(f"halfclose fleet: {args.dataset}", **figures)
    write_text_atomic(args.html, page)
    return int(ExitStatus.OK)
