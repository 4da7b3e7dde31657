"""sd_notify by hand: datagrams on $NOTIFY_SOCKET (path or abstract), the watchdog interval."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from halfclose.reap.sdnotify import Notifier, watchdog_interval


def test_messages_reach_a_path_socket(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "n"))
        sock.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "2000000"})
        assert n.enabled and n.watchdog == 1.0
        n.ready("reaping")
        assert sock.recv(100) == b"READY=1\nSTATUS=reaping"
        n.reloading()
        text = sock.recv(100).decode()
        assert text.startswith("RELOADING=1\nMONOTONIC_USEC=") and text.split("=")[-1].isdigit()
        n.ping(100.0)
        n.ping(100.5)  # too soon: nothing sent
        n.ping(101.0)
        assert sock.recv(100) == b"WATCHDOG=1" and sock.recv(100) == b"WATCHDOG=1"
        n.close()


def test_abstract_socket_names_start_with_at() -> None:
    name = f"halfclose-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.stopping()
        assert sock.recv(100) == b"STOPPING=1"
        n.close()


def test_without_a_manager_nothing_happens() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog is None
    n.ready("x")
    n.ping(0.0)
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "2"}, pid=2) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
