"""systemd's notification protocol, by hand: one datagram to ``$NOTIFY_SOCKET`` per message.

``sd_notify(3)``: the service sends newline-separated ``KEY=VALUE`` assignments (``READY=1``,
``RELOADING=1``, ``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=...``, ``MONOTONIC_USEC=...``) as one
datagram on the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract name when
it starts with ``@``). ``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID`` naming us, when set) asks for
``WATCHDOG=1`` more often than that. Without ``$NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings that systemd asks of this process (half its
    ``WatchdogSec=``), or None when no watchdog is set for us."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """Sends notifications to the service manager; a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        name = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if name and (name.startswith(("@", "/"))):
            self._address = "\0" + name[1:] if name.startswith("@") else name
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog = watchdog_interval(env)
        self._last_ping = float("-inf")

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._sock is not None

    def send(self, **assignments: str | int) -> None:
        """Send ``KEY=VALUE`` lines (keyword names upper-cased) as one datagram."""
        if self._sock is None or self._address is None:
            return
        text = "\n".join(f"{k.upper()}={v}" for k, v in assignments.items())
        with contextlib.suppress(OSError):  # the manager went away: the work does not depend on it
            self._sock.sendto(text.encode(), self._address)

    def ready(self, status: str) -> None:
        """``READY=1`` with a status line."""
        self.send(ready=1, status=status)

    def reloading(self) -> None:
        """``RELOADING=1`` (with ``MONOTONIC_USEC``, as ``Type=notify-reload`` wants it)."""
        self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        """``STOPPING=1``."""
        self.send(stopping=1)

    def ping(self, now: float) -> None:
        """``WATCHDOG=1`` if the watchdog asks for one by clock reading *now* (monotonic)."""
        if self.watchdog is not None and now - self._last_ping >= self.watchdog:
            self._last_ping = now
            self.send(watchdog=1)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
