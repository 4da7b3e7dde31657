"""The I/O of ``halfclose device``: the app's uid and process, a capture streamed from the device,
the fix put in place and taken out again (everything through adb, every word checked by
:mod:`halfclose.netfilter.android`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from halfclose.analysis import Analysis
from halfclose.analysis_io import analyze
from halfclose.device.compare import PcapTail
from halfclose.errors import EnvironmentProblem, InputError
from halfclose.netfilter import Policy, Strategy, apply, remove
from halfclose.netfilter.android import AdbHost, check_package, lookup_uid, shell_command

__all__ = ["DeviceSession", "parse_status_uid"]

#: What the device runs to stream its capture: every interface, each packet written at once.
CAPTURE = ["tcpdump", "-i", "any", "-U", "-w", "-"]


def parse_status_uid(text: str) -> int | None:
    """The real uid in ``/proc/PID/status`` text (``Uid:\\treal effective saved fs``)."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    return None


class DeviceSession:
    """One run against device *serial* for app *package*: call :meth:`start`, then :meth:`close`."""

    def __init__(self, *, serial: str, package: str, ports: tuple[int, ...], out: Path | None = None) -> None:
        self.host = AdbHost(serial=serial)
        self.package = check_package(package)
        self.ports = ports
        self.uid = lookup_uid(package, serial=serial)
        self._tmp = Path(tempfile.mkdtemp(prefix="halfclose-device-"))
        self.pcap = out if out is not None else self._tmp / "device.pcap"
        self.tail = PcapTail()
        self.fixed = False
        self.fix_ts_ns: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._error: Exception | None = None

    def app_process(self) -> tuple[int, int | None] | None:
        """The app's pid and the uid its ``/proc/PID/status`` shows, or None when it is not running."""
        done = self.host.run(["pidof", self.package], check=False)
        pids = [int(w) for w in done.stdout.split() if w.isdigit()]
        if done.returncode != 0 or not pids:
            return None
        status = self.host.run(["cat", f"/proc/{pids[0]}/status"], check=False)
        return pids[0], parse_status_uid(status.stdout)

    def start(self) -> None:
        """Start the capture on the device; returns once its first bytes (the pcap header) came."""
        argv = ["adb", "-s", self.host.serial, "exec-out", shell_command(CAPTURE)]
        if shutil.which("adb") is None:
            raise EnvironmentProblem("adb is not installed: install it (Debian package adb) and connect the device")
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self._reader = threading.Thread(target=self._copy, name="device-capture", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 15
        while self.tail.complete == 0:
            if self._error is not None:
                raise self._error
            if self._proc.poll() is not None and not self._reader.is_alive():
                err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
                last = err.splitlines()[-1] if err else "no message"
                raise EnvironmentProblem(f"the capture on device {self.host.serial} ended at once ({last}): "
                                         "is the device rooted, with tcpdump installed?")
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"device {self.host.serial} sent no capture within 15 s")
            time.sleep(0.05)

    def _copy(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            with self.pcap.open("wb") as out:
                while True:
                    chunk = os.read(self._proc.stdout.fileno(), 1 << 16)
                    if not chunk:
                        return
                    out.write(chunk)
                    out.flush()
                    with self._lock:
                        self.tail.feed(chunk)
        except (OSError, InputError) as exc:
            self._error = exc

    def analyze_now(self) -> Analysis | None:
        """Analyse the whole packets captured so far (None before the first one)."""
        with self._lock:
            complete, packets = self.tail.complete, self.tail.packets
        if packets == 0:
            return None
        snapshot = self._tmp / "snapshot.pcap"
        with self.pcap.open("rb") as src, snapshot.open("wb") as dst:
            dst.write(src.read(complete))
        return analyze([snapshot])

    def apply_fix(self) -> None:
        """Put the netfilter fix (strategy reject) in place for the app's uid, then read the
        device's clock (``date +%s%N``, the clock of the capture's timestamps): connections the
        capture shows starting later were opened with the rules in place."""
        apply(Policy(uids=(self.uid,), ports=self.ports, strategy=Strategy.REJECT), host=self.host)
        self.fixed = True
        done = self.host.run(["date", "+%s%N"], check=False)
        text = done.stdout.strip()
        self.fix_ts_ns = int(text) if done.returncode == 0 and text.isdigit() else time.time_ns()

    def stop_capture(self) -> None:
        """End the capture and wait for its last bytes."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        for pipe in (self._proc.stdout, self._proc.stderr) if self._proc is not None else ():
            if pipe is not None:
                pipe.close()

    def close(self) -> None:
        """Stop the capture, take the fix out, remove the temporary files."""
        try:
            self.stop_capture()
        finally:
            try:
                if self.fixed:
                    remove(host=self.host)
                    self.fixed = False
            finally:
                shutil.rmtree(self._tmp, ignore_errors=True)
