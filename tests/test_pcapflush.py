"""The tests' capture stop (tests/pcapflush.py): nothing sent before the stop is lost, even when
tcpdump gets no CPU at that moment (here: it is stopped with SIGSTOP, as a loaded machine would)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import pcapflush
from halfclose.proc import run, spawn

pytestmark = pytest.mark.root


def _start(pcap: Path, port: int, marker: int) -> subprocess.Popen[bytes]:
    bpf = pcapflush.with_marker(f"udp and dst port {port}", host="127.0.0.1", port=marker)
    proc = spawn(["tcpdump", "-i", "lo", "-U", "--immediate-mode", *pcapflush.BUFFER, "-n", "-w", str(pcap), bpf])
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert b"listening on" in line, line
    return proc


def test_a_descheduled_tcpdump_still_writes_everything_before_it_is_stopped(tmp_path: Path) -> None:
    pcap = tmp_path / "held.pcap"
    port, marker = pcapflush.marker_port(), pcapflush.marker_port() + 1
    proc = _start(pcap, port, marker)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # capturing: one datagram written
            for _ in range(500):
                probe.sendto(b"first", ("127.0.0.1", port))
                time.sleep(0.01)
                if pcap.exists() and pcap.stat().st_size > 24:
                    break
            os.kill(proc.pid, signal.SIGSTOP)  # tcpdump holds what comes next in the kernel's ring
            for i in range(20):
                probe.sendto(f"datagram {i}".encode(), ("127.0.0.1", port))
        resume = threading.Timer(1.0, os.kill, (proc.pid, signal.SIGCONT))  # past the 0.2 s grace
        resume.start()
        pcapflush.stop(proc, pcap, pcapflush.udp_sender("127.0.0.1", marker))
        resume.join()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.communicate(timeout=10)
    payloads = run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "data.data"]).stdout.split()
    sent = [f"datagram {i}".encode().hex() for i in range(20)]
    assert payloads[-20:] == sent  # all twenty, in order, after the "first" probes
    assert {bytes.fromhex(p) for p in payloads[:-20]} == {b"first"}  # and no marker left in the file
