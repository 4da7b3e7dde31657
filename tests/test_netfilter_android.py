"""The Android target: checked values only reach the device shell, and the rule text behaves.

A stand-in ``adb`` on PATH runs the ``su -c`` command it is given inside a namespace we created,
with ``iptables-restore``/``iptables-save`` being iptables-legacy (as on a device) and a ``cmd``
that answers ``cmd package list packages -U``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests import _android_device as android
from tests import _rules_lab as lab

from halfclose.cli import main
from halfclose.errors import UsageError
from halfclose.netfilter import Policy, Target, render
from halfclose.netfilter.android import AdbHost, check_package, check_serial, parse_package_list
from halfclose.netns import Claim
from halfclose.proc import run

FAKE_ADB = """#!/usr/bin/python3
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
if len(args) != 4 or args[0] != "-s" or args[2] != "shell":
    sys.stderr.write("adb: unexpected arguments\\n")
    sys.exit(1)
env = dict(os.environ, PATH={bin!r} + ":/usr/sbin:/usr/bin:/sbin:/bin")
os.execvpe("ip", ["ip", "netns", "exec", {ns!r}, "/bin/sh", "-c", args[3]], env)
"""
FAKE_SU = '#!/bin/sh\n[ "$1" = "-c" ] || exit 1\nexec /bin/sh -c "$2"\n'
FAKE_CMD = """#!/bin/sh
[ "$1 $2 $3 $4" = "package list packages -U" ] || exit 1
echo "package:com.example.app.beta uid:10999"
echo "package:com.example.app uid:10400"
"""


def _adb(tmp: Path, netns: str) -> Path:
    """Install the stand-in adb for *netns* under *tmp*; return the log of its invocations."""
    bindir, device = tmp / "bin", tmp / "device"
    bindir.mkdir()
    device.mkdir()
    log = tmp / "adb.log"
    (bindir / "adb").write_text(FAKE_ADB.format(log=str(log), bin=str(device), ns=netns))
    (device / "su").write_text(FAKE_SU)
    (device / "cmd").write_text(FAKE_CMD)
    for name in ("adb",):
        (bindir / name).chmod(0o755)
    for name in ("su", "cmd"):
        (device / name).chmod(0o755)
    for name in ("iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"):
        (device / name).symlink_to("/usr/sbin/xtables-legacy-multi")
    return log


def cli(argv: list[str]) -> int:
    """Run the command line like the console script does (argparse errors exit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    yield tmp_path


def test_serial_and_package_patterns() -> None:
    assert check_serial("emulator-5554") == "emulator-5554"
    assert check_serial("192.168.1.20:5555") == "192.168.1.20:5555"
    for bad in ("", "a b", "x;reboot", "$(id)", "'", "-s"):
        with pytest.raises(UsageError):
            check_serial(bad)
    assert check_package("com.example.app") == "com.example.app"
    for bad in ("example", "com.example;reboot", "com..x", "com.example.app'", "1com.x"):
        with pytest.raises(UsageError):
            check_package(bad)


def test_device_commands_are_checked_word_by_word() -> None:
    host = AdbHost(serial="emulator-5554")
    for argv in (["sh", "-c", "id"], ["iptables-save", "-t", "mangle;reboot"], ["iptables-save", "'"],
                 ["date", "010100002020"], ["cat", "/data/system/packages.list"], ["cat", "/proc/1/environ"]):
        with pytest.raises(UsageError):
            host.run(argv)


def test_package_list_parsing_takes_the_exact_name() -> None:
    text = "package:com.example.app.beta uid:10999\npackage:com.example.app uid:10400\n"
    assert parse_package_list(text, "com.example.app") == 10400
    assert parse_package_list(text, "com.example") is None
    assert parse_package_list("package:com.x uid:10001,10002\n", "com.x") == 10001


def test_android_refuses_netd_mark_bits() -> None:
    with pytest.raises(UsageError, match="netd"):
        render(Policy(uids=(10400,), tag_mask=0x01000000), target=Target.ANDROID)


def test_android_placement_is_mangle_and_filter_output_only() -> None:
    text = render(Policy(uids=(10400,)), target=Target.ANDROID)
    jumps = [line for line in text.splitlines() if line.startswith("-I ")]
    assert jumps == ["-I OUTPUT 1 -j HALFCLOSE-OUT", "-I PREROUTING 1 -j HALFCLOSE-PRE",
                     "-I OUTPUT 1 -j HALFCLOSE-REJECT"] * 2
    assert "# iptables-restore --noflush -w" in text and "# ip6tables-restore --noflush -w" in text
    assert "MARK --set" not in text.replace("CONNMARK --set", "")  # the packet mark is never written
    assert "INPUT" not in text


@pytest.mark.root
def test_android_rules_over_adb_behave(on_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with lab.bench() as b:
        log = _adb(on_path, b.client)
        foreign = "*filter\n-A OUTPUT -p udp --dport 9 -j ACCEPT\nCOMMIT\n" \
            "*mangle\n-A OUTPUT -p udp -j ACCEPT\nCOMMIT\n"
        run(["iptables-legacy-restore", "--noflush"], netns=b.client, input=foreign)
        before = run(["iptables-legacy-save"], netns=b.client).stdout
        assert main(["rules", "uid", "com.example.app", "--adb", "emulator-5554"]) == 0
        uid = int(capsys.readouterr().out.strip())
        assert uid == lab.APP_UID
        assert main(["rules", "apply", "--uid", str(uid), "--port", "80", "--adb", "emulator-5554"]) == 0
        assert "iptables-legacy" in capsys.readouterr().out
        saved = run(["iptables-legacy-save"], netns=b.client).stdout
        assert "-A OUTPUT -j HALFCLOSE-REJECT" in saved.split("*filter")[1].splitlines()[5]
        app = lab.finish(lab.start_client(b, "ipv4"))
        assert app["error"] == "BrokenPipeError" and app["phase"] == "request"
        assert main(["rules", "status", "--json", "--adb", "emulator-5554"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["installed"] and st["counters"]["fin_flagged"] == 1 and st["counters"]["rejected"] >= 1
        assert main(["rules", "remove", "--adb", "emulator-5554"]) == 0
        after = run(["iptables-legacy-save"], netns=b.client).stdout

        def strip(text: str) -> list[str]:
            return [line.split("[")[0] for line in text.splitlines() if not line.startswith("#")]

        assert strip(after) == strip(before)
        # Every device command was one checked word list behind "su -c".
        for call in _calls(log):
            assert call[:3] == ["-s", "emulator-5554", "shell"] and call[3].startswith("su -c '")


def test_nothing_unchecked_reaches_adb(on_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _adb(on_path, "nonexistent-namespace")
    bad = [
        ["rules", "apply", "--uid", "10400", "--adb", "x;touch /tmp/hc-pwned"],
        ["rules", "uid", "com.example;reboot", "--adb", "emulator-5554"],
        ["rules", "uid", "com.example.app", "--adb", "$(reboot)"],
        ["rules", "status", "--adb", "a b"],
        ["rules", "apply", "--uid", "10400;reboot", "--adb", "emulator-5554"],
        ["rules", "apply", "--uid", "10400", "--port", "80;reboot", "--adb", "emulator-5554"],
    ]
    for argv in bad:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
    assert _calls(log) == []


@pytest.mark.root
def test_uid_lookup_falls_back_to_pm(on_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Claim() as claim:
        ns = claim.add_netns("adb")
        log = _adb(on_path, ns)
        device = on_path / "device"
        (device / "cmd").write_text("#!/bin/sh\necho 'cmd: Failure calling service package' >&2\nexit 255\n")
        (device / "pm").write_text("#!/bin/sh\n[ \"$1 $2 $3\" = \"list packages -U\" ] || exit 1\n"
                                   "echo package:com.example.app uid:10400\n")
        (device / "pm").chmod(0o755)
        assert cli(["rules", "uid", "com.example.app", "--adb", "emulator-5554"]) == 0
        assert capsys.readouterr().out.strip() == "10400"
        assert [c[3] for c in _calls(log)] == [
            "su -c 'cmd package list packages -U com.example.app'",
            "su -c 'pm list packages -U com.example.app'",
        ]
        assert cli(["rules", "uid", "com.example.other", "--adb", "emulator-5554"]) == 2
        assert "com.example.other is not installed" in capsys.readouterr().err


# -- the stand-in device with netd's layout (tests/_android_device.py) --------------------------

WATCH_MARKS = """table inet markwatch {{
  chain out_last {{ type filter hook output priority 300; policy accept;
    oifname "{dev}" meta skuid {uid} meta mark & 0xfffff == 0x{mark:x} counter comment "out_marked";
    oifname "{dev}" meta skuid {uid} meta mark & 0xfffff != 0x{mark:x} counter comment "out_other"; }}
  chain in_last {{ type filter hook input priority 300; policy accept;
    iifname "{dev}" tcp sport 80 meta mark & 0xfffff == 0x{mark:x} counter comment "in_marked";
    iifname "{dev}" tcp sport 80 meta mark & 0xfffff != 0x{mark:x} counter comment "in_other"; }}
}}
"""


def _strip_counters(text: str) -> str:
    return re.sub(r"\[\d+:\d+\]", "[]", text)


@contextlib.contextmanager
def _phone(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[lab.Bench, android.Device]]:
    with lab.bench() as b:
        subnet4 = b.v4[1].rsplit(".", 1)[0] + ".0/24"
        subnet6 = b.v6[1].rsplit("::", 1)[0] + "::/64"
        with android.device(tmp, b.client, b.client_if, app_uid=lab.APP_UID, subnet4=subnet4,
                            subnet6=subnet6) as d:
            monkeypatch.setenv("PATH", f"{d.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
            yield b, d


@pytest.mark.root
def test_standin_device_has_netds_layout_and_apply_remove_leave_it_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with _phone(tmp_path, monkeypatch) as (b, d):
        before = _strip_counters(d.save())
        rules_before = d.rules()
        for line in ("-A OUTPUT -j oem_out", "-A INPUT -j connmark_mangle_INPUT", "-A PREROUTING -j bw_raw_PREROUTING",
                     f"-A routectrl_mangle_INPUT -i {b.client_if} -j MARK --set-xmark 0x30064/0xffefffff",
                     "-A connmark_mangle_OUTPUT -m connmark --mark 0x0/0xfffff -j CONNMARK --save-mark "
                     "--nfmask 0xfffff --ctmask 0xfffff"):
            assert line in before.splitlines()
        assert "13000:\tfrom all fwmark 0x10064/0x1ffff iif lo lookup 1002" in rules_before
        assert "32766" not in rules_before
        run(["nft", "-f", "-"], netns=b.client,
            input=WATCH_MARKS.format(dev=b.client_if, uid=lab.APP_UID, mark=android.INCOMING_MARK))
        assert main(["rules", "apply", "--uid", str(lab.APP_UID), "--port", "80", "--adb", android.SERIAL]) == 0
        capsys.readouterr()
        with_ours = _strip_counters(d.save())
        assert android.netd_chains(with_ours) == before.splitlines()  # netd's lines, untouched
        # Our jumps: first in mangle OUTPUT, mangle PREROUTING and filter OUTPUT, the chains netd never
        # flushes; nothing of ours in a parent netd owns (INPUT, FORWARD, raw, nat) or in its chains.
        jumps = [line for line in with_ours.splitlines() if line.startswith("-A ") and "-j HALFCLOSE" in line]
        assert sorted(jumps) == sorted(["-A OUTPUT -j HALFCLOSE-OUT", "-A PREROUTING -j HALFCLOSE-PRE",
                                        "-A OUTPUT -j HALFCLOSE-REJECT"] * 2)
        for table in ("*mangle", "*filter"):
            for part in with_ours.split(table)[1:]:
                body = part.split("COMMIT")[0].splitlines()
                for chain in ("OUTPUT", "PREROUTING"):
                    first = next((x for x in body if x.startswith(f"-A {chain} ")), None)
                    assert first is None or "HALFCLOSE" in first, (table, chain, first)
        app = lab.finish(lab.start_client(b, "ipv4"))
        assert app["error"] == "BrokenPipeError" and app["phase"] == "request"
        marks = lab.watched_table(b.client, "markwatch")
        assert marks["out_marked"] > 0 and marks["in_marked"] > 0
        assert marks["out_other"] == 0 and marks["in_other"] == 0  # netd's packet marks as they were
        assert main(["rules", "remove", "--adb", android.SERIAL]) == 0
        assert _strip_counters(d.save()) == before
        assert d.rules() == rules_before


@pytest.mark.root
def test_a_netd_style_flush_neither_removes_nor_half_applies_our_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with _phone(tmp_path, monkeypatch) as (b, d):
        assert main(["rules", "apply", "--uid", str(lab.APP_UID), "--port", "80", "--adb", android.SERIAL]) == 0
        ours_before = [line for line in _strip_counters(d.save()).splitlines() if "HALFCLOSE" in line]
        run(["iptables-legacy-restore", "--noflush"], netns=b.client, input=android.netd_flush(v6=False))
        run(["ip6tables-legacy-restore", "--noflush"], netns=b.client, input=android.netd_flush(v6=True))
        after = _strip_counters(d.save())
        assert "-A fw_INPUT" not in after and ":bw_INPUT - []" in after  # netd's chains were cleared
        assert [line for line in after.splitlines() if "HALFCLOSE" in line] == ours_before
        capsys.readouterr()
        assert main(["rules", "status", "--json", "--adb", android.SERIAL]) == 0
        assert json.loads(capsys.readouterr().out)["installed"] is True
        app = lab.finish(lab.start_client(b, "ipv4"))
        assert app["error"] == "BrokenPipeError" and app["phase"] == "request"
        assert main(["rules", "remove", "--adb", android.SERIAL]) == 0
