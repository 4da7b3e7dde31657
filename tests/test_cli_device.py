"""``halfclose device`` against the stand-in Android device: the field report's app (the lab's
``reuse`` client) runs in the device's namespace as its uid; its capture is streamed over the
stand-in ``adb exec-out tcpdump``; the fix goes in mid-run and comes out at Ctrl-C."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests import _android_device as android
from tests import _rules_lab as lab

from halfclose.cli import main
from halfclose.device import PcapTail, parse_status_uid
from halfclose.errors import InputError
from halfclose.proc import spawn

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_pcap_tail_follows_whole_records() -> None:
    import struct

    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack("<IIII", 100, 5, 3, 3) + b"abc"
    tail = PcapTail()
    stream = header + rec + rec[:10]
    for i in range(0, len(stream), 7):
        tail.feed(stream[i : i + 7])
    assert (tail.complete, tail.packets, tail.last_ts_ns) == (24 + 19, 1, 100_000_005_000)
    tail.feed(rec[10:] + struct.pack("<IIII", 101, 0, 0, 0))
    assert tail.packets == 3 and tail.last_ts_ns == 101_000_000_000
    with pytest.raises(InputError, match="not a pcap stream"):
        PcapTail().feed(b"x" * 24)


def test_status_uid_is_the_real_uid() -> None:
    assert parse_status_uid("Name:\tapp\nUid:\t10400\t10400\t10400\t10400\nGid:\t1\n") == 10400
    assert parse_status_uid("Name:\tx\n") is None


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["device", "--adb", "x;reboot", "--package", "com.example.app"], "is not a device serial"),
        (["device", "--adb", "emulator-5554", "--package", "example"], "not an Android package name"),
        (["device", "--adb", "emulator-5554", "--package", "com.x.y", "--fix-after", "3"], "only goes with"),
        (["device", "--adb", "emulator-5554", "--package", "com.x.y", "--port", "0"], "ports are 1-65535"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def _wait_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float = 30) -> bytes:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            seen += line
            if needle in line:
                return seen
            if not line:
                break
    raise AssertionError(f"no {needle!r} in {seen!r}")


@pytest.mark.root
def test_device_run_shows_stale_writes_before_the_fix_and_none_after(tmp_path: Path) -> None:
    with lab.bench() as b:
        subnet4 = b.v4[1].rsplit(".", 1)[0] + ".0/24"
        subnet6 = b.v6[1].rsplit("::", 1)[0] + "::/64"
        with android.device(tmp_path, b.client, b.client_if, app_uid=lab.APP_UID, subnet4=subnet4,
                            subnet6=subnet6) as d:
            env = dict(android.env_with_adb(d), PYTHONPATH=SRC)
            before = d.save()
            pcap = tmp_path / "streamed.pcap"
            tool = subprocess.Popen(
                [sys.executable, "-m", "halfclose", "device", "--adb", d.serial, "--package", android.PACKAGE,
                 "--fix", "rules", "--fix-after", "6.5", "--port", "80", "--refresh", "1", "--out", str(pcap)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
            try:
                head = _wait_line(tool, b"capturing")
                assert b"com.example.app is uid 10400 on emulator-5554 (not running yet)" in head
                app = spawn(["setpriv", "--reuid", str(lab.APP_UID), "--regid", str(lab.APP_UID), "--clear-groups",
                             "--", "env", f"PYTHONPATH={SRC}", "/usr/bin/python3", "-m", "halfclose.lab.app",
                             "--client", "reuse", "--host", b.v4[1], "--requests", "9", "--gap", "1.5"],
                            netns=b.client, stdout=subprocess.PIPE)
                d.pidfile.write_text(f"{app.pid}\n")
                out, err = app.communicate(timeout=60)
                assert app.returncode == 0, err
                records = [json.loads(line) for line in out.decode().splitlines()]
                time.sleep(1.5)
                tool.send_signal(signal.SIGINT)
                report, rest = tool.communicate(timeout=60)
            finally:
                if tool.poll() is None:
                    os.killpg(tool.pid, signal.SIGKILL)
                    tool.wait()
            assert tool.returncode == 0, rest
            text = report.decode()
            rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:] if line and line[0] != "r"}
            stale_before, stale_after = map(int, rows["stale_reuse"])
            conns_before, conns_after = map(int, rows["connections"])
            assert conns_before >= 2, text
            assert stale_before >= 2, text
            assert stale_after == 0, text
            assert conns_after >= 1, (text, records)
            assert "rules: applied at" in text and "removed again" in text
            # the app saw both worlds: stale connections before, failed writes (EPIPE) after
            assert any("RemoteDisconnected" in r["error"] or "ConnectionReset" in r["error"] for r in records[:4])
            assert any("BrokenPipe" in r["error"] for r in records[5:]), records
            assert all(r["ok"] for r in records)
            assert d.save() == before or "HALFCLOSE" not in d.save()  # rules out again
            calls = [" ".join(c) for c in d.adb_calls()]
            assert f"-s {d.serial} exec-out su -c 'tcpdump -i any -U -w -'" in calls
            assert any("cat /proc/" not in c for c in calls)
            assert pcap.stat().st_size > 24
