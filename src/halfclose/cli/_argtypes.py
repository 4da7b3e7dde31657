"""Option types shared by the subcommands: each turns one option's text into its value, or says
what is wrong with it as :class:`argparse.ArgumentTypeError` (argparse prints the usage and that
line, and exits with status 2)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from halfclose.errors import UsageError

if TYPE_CHECKING:
    from halfclose.reap.metrics import MetricsAddress

__all__ = ["metrics_address", "port", "port_list", "seconds", "seconds_or_zero"]


def _number_of_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def seconds(text: str) -> float:
    """A number of seconds above 0."""
    value = _number_of_seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0 seconds")
    return value


def seconds_or_zero(text: str) -> float:
    """A number of seconds, 0 or more."""
    value = _number_of_seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} must not be negative")
    return value


def port(text: str) -> int:
    """One TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 1-65535")
    return value


def port_list(text: str) -> tuple[int, ...]:
    """Comma-separated TCP ports (like ``80,443``)."""
    try:
        ports = tuple(int(p) for p in text.split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of port numbers like 80,443") from None
    if not ports or not all(1 <= p <= 65535 for p in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: ports are 1-65535")
    return ports


def metrics_address(text: str) -> MetricsAddress:
    """Where to serve Prometheus metrics: ``PORT``, ``ADDR:PORT`` or ``[IPv6]:PORT``."""
    from halfclose.reap.metrics import parse_address

    try:
        return parse_address(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
