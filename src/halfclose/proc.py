"""The one process runner: external programs with timeouts and clear errors.

Every call to ``ip``, ``nft``, ``iptables-restore``, ``tcpdump``, ``adb`` and friends goes
through :func:`run` (or :func:`spawn` for long-running ones), so that a missing program or a
failing command becomes an :class:`~halfclose.errors.EnvironmentProblem` with one clear line.
Arguments are always passed as a list: nothing is interpreted by a shell here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from halfclose.errors import CommandFailed, EnvironmentProblem

__all__ = ["in_netns", "require_program", "require_root", "run", "spawn"]

#: Debian package that provides each program the project runs, for the "what to do" part of errors.
PACKAGES: Mapping[str, str] = {
    "ip": "iproute2",
    "ss": "iproute2",
    "nft": "nftables",
    "iptables": "iptables",
    "iptables-restore": "iptables",
    "iptables-legacy": "iptables",
    "iptables-legacy-restore": "iptables",
    "iptables-nft-restore": "iptables",
    "ip6tables-restore": "iptables",
    "tcpdump": "tcpdump",
    "tshark": "tshark",
    "nginx": "nginx-light",
    "dnsmasq": "dnsmasq-base",
    "setpriv": "util-linux",
    "ethtool": "ethtool",
    "chromium": "chromium",
    "apache2": "apache2",
    "haproxy": "haproxy",
    "caddy": "caddy",
    "go": "golang-go",
    "node": "nodejs",
    "curl": "curl",
    "certutil": "libnss3-tools",
}


def require_program(name: str) -> str:
    """Return the full path of *name*, or raise saying which Debian package provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        package = PACKAGES.get(name, name)
        raise EnvironmentProblem(f"{name} is not installed: install it with 'apt-get install {package}'")
    return path


def require_root(what: str) -> None:
    """Raise unless running as root (network namespaces, netfilter and sock_diag need it)."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(f"{what} needs root (CAP_NET_ADMIN): run it with sudo or as root")


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """Prefix *argv* so that it runs inside network namespace *netns* (when given)."""
    if netns is None:
        return list(argv)
    return [require_program("ip"), "netns", "exec", netns, *argv]


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    input: str | None = None,
    timeout: float = 30.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a program to completion and return its result (text mode).

    Raises:
        EnvironmentProblem: the program is missing or timed out.
        CommandFailed: *check* is true and the program exited non-zero.
    """
    argv = list(argv)
    argv[0] = require_program(argv[0])
    full = in_netns(netns, argv)
    try:
        done = subprocess.run(
            full, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(f"{' '.join(argv[:3])} did not finish within {timeout:g} s") from exc
    if check and done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stderr)
    return done


def spawn(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running program (a server, tcpdump, an app emulator) in its own session."""
    argv = list(argv)
    argv[0] = require_program(argv[0])
    return subprocess.Popen(
        in_netns(netns, argv),
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,
    )
