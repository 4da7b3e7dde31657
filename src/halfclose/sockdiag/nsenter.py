"""Run a block of code with the calling thread inside a named network namespace.

Sockets keep the namespace they were created in, so the usual pattern is: enter, create the
netlink (or TCP) socket, leave, and use the socket from the original namespace. Only the calling
thread switches (``setns(2)`` is per thread); it is switched back even when the block raises.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

from halfclose.errors import EnvironmentProblem, UsageError

__all__ = ["CLONE_NEWNET", "netns_entered", "setns"]

CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/run/netns"


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """``setns(2)`` for the calling thread (``os.setns`` only exists from Python 3.12)."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, nstype)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns_entered(name: str | None) -> Iterator[None]:
    """Run the block inside network namespace *name* (``ip netns`` name); None runs it here.

    Raises:
        UsageError: no namespace of that name exists.
        EnvironmentProblem: switching is not permitted (needs CAP_SYS_ADMIN).
    """
    if name is None:
        yield
        return
    if "/" in name or name in {"", ".", ".."}:
        raise UsageError(f"{name!r} is not a network namespace name (see 'ip netns list')")
    try:
        target = os.open(os.path.join(_NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"no network namespace named {name!r} (see 'ip netns list')") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                setns(target)
            except PermissionError:
                raise EnvironmentProblem(
                    f"entering network namespace {name!r} needs root (CAP_SYS_ADMIN): run as root"
                ) from None
            try:
                yield
            finally:
                setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)
