"""An Android device as a :class:`~halfclose.netfilter.install.Host`: programs run over ``adb`` as root.

Every command becomes ``adb -s SERIAL shell "su -c '<program> <args>'"``, and the device's shell parses
that string. So every word is checked against a strict pattern first (program names and arguments
from a fixed vocabulary, serials and package names by pattern, uids as numbers): nothing from the
command line reaches a shell unchecked. Rule text travels on stdin, never in the command line.

Placement on the device (netd owns most chains, see the package docstring): mangle OUTPUT (tag),
mangle PREROUTING (server FIN) and the top of filter OUTPUT (reject); netd never flushes those, and
none of our rules lives in a chain netd manages.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from halfclose.errors import EnvironmentProblem, UsageError
from halfclose.netfilter.policy import Target
from halfclose.proc import run

__all__ = [
    "PACKAGE_PATTERN",
    "SERIAL_PATTERN",
    "AdbHost",
    "check_package",
    "check_serial",
    "lookup_uid",
    "parse_package_list",
    "shell_command",
]

#: adb serials: USB serials, ``emulator-5554``, ``192.168.1.20:5555``, mDNS names.
SERIAL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: Android application ids: two or more dot-separated Java identifiers.
PACKAGE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)+")
#: One word of a device command: program names, options, table names, plain numbers.
_WORD = re.compile(r"[A-Za-z0-9/][A-Za-z0-9_.,:/=+-]*|-[A-Za-z0-9-]*")
_STATUS_FILE = re.compile(r"/proc/[0-9]+/status")
#: The one ``date`` command allowed: the device's clock in nanoseconds since the epoch.
_DEVICE_CLOCK = ["date", "+%s%N"]
_PROGRAMS = frozenset(
    {
        "iptables-restore",
        "ip6tables-restore",
        "iptables-save",
        "ip6tables-save",
        "cmd",
        "pm",
        "id",
        "pidof",
        "cat",
        "tcpdump",
        "date",
    }
)


def check_serial(serial: str) -> str:
    """Return *serial* if it looks like an adb serial, else raise :class:`UsageError`."""
    if not SERIAL_PATTERN.fullmatch(serial):
        raise UsageError(
            f"adb serial {serial!r} is not a device serial (letters, digits, '.', ':', '-', '_'): "
            "see 'adb devices'"
        )
    return serial


def check_package(package: str) -> str:
    """Return *package* if it is a valid Android package name, else raise :class:`UsageError`."""
    if len(package) > 255 or not PACKAGE_PATTERN.fullmatch(package):
        raise UsageError(f"{package!r} is not an Android package name (like com.example.app)")
    return package


def shell_command(argv: Sequence[str]) -> str:
    """The ``su -c '...'`` string for *argv* after every word was checked (see the module doc).

    Raises:
        UsageError: a program outside the fixed list, or a word that is not plain.
    """
    return _shell_command(argv)


def _shell_command(argv: Sequence[str]) -> str:
    if not argv or argv[0] not in _PROGRAMS:
        raise UsageError(f"refusing to run {argv[0] if argv else 'nothing'!r} on the device")
    if list(argv) == _DEVICE_CLOCK:
        return "su -c '" + " ".join(argv) + "'"
    for word in argv:
        if not _WORD.fullmatch(word):
            raise UsageError(f"refusing to pass {word!r} to the device's shell")
    if argv[0] == "date":
        raise UsageError("on the device, date only reads the clock (date +%s%N)")
    if argv[0] == "cat" and not all(_STATUS_FILE.fullmatch(word) for word in argv[1:]):
        raise UsageError("on the device, cat reads only /proc/PID/status")
    return "su -c '" + " ".join(argv) + "'"


@dataclass(frozen=True, slots=True, kw_only=True)
class AdbHost:
    """The Android device with adb serial *serial*; commands run as root through ``su -c``."""

    serial: str
    target: Target = Target.ANDROID

    def __post_init__(self) -> None:
        check_serial(self.serial)

    def run(self, argv: Sequence[str], *, input: str | None = None, check: bool = True) -> (
        subprocess.CompletedProcess[str]
    ):
        return run(["adb", "-s", self.serial, "shell", _shell_command(argv)], input=input, check=check)

    def has(self, program: str) -> bool:
        # Android ships iptables(-restore/-save) and cmd; their absence shows as a failing command.
        return program in _PROGRAMS

    def describe(self) -> str:
        return f"device {self.serial}"


def parse_package_list(text: str, package: str) -> int | None:
    """The uid of exactly *package* in ``cmd package list packages -U`` output, if listed."""
    for line in text.splitlines():
        fields = dict(part.split(":", 1) for part in line.split() if ":" in part)
        if fields.get("package") == package:
            uid = fields.get("uid", "").split(",")[0]
            if uid.isdigit():
                return int(uid)
    return None


def lookup_uid(package: str, *, serial: str) -> int:
    """The uid of app *package* on device *serial*.

    Asks ``cmd package list packages -U PACKAGE`` (Android 8 and later), falling back to
    ``pm list packages -U PACKAGE`` when ``cmd`` fails.
    """
    check_package(package)
    host = AdbHost(serial=serial)
    done = host.run(["cmd", "package", "list", "packages", "-U", package], check=False)
    if done.returncode != 0:
        done = host.run(["pm", "list", "packages", "-U", package])
    uid = parse_package_list(done.stdout, package)
    if uid is None:
        raise EnvironmentProblem(
            f"package {package} is not installed on device {serial}: check the name with "
            "'adb shell pm list packages'"
        )
    return uid
