"""A stand-in Android device: a network namespace that looks, to netfilter and routing, like a phone.

Behind a stand-in ``adb`` (``adb -s SERIAL shell CMD`` and ``adb -s SERIAL exec-out CMD``) the
namespace carries the netfilter layout Android's netd creates and its policy routing:

* Chains and their order from AOSP netd as stored in GrapheneOS/platform_system_netd at commit
  564115bacb498f726a626077921d332bf6104295 (rvc-qpr1, 2020-09-18): ``server/Controllers.cpp``
  (``FILTER_INPUT``, ``FILTER_FORWARD``, ``FILTER_OUTPUT``, ``RAW_PREROUTING``, ``MANGLE_POSTROUTING``,
  ``MANGLE_INPUT``, ``MANGLE_FORWARD``, ``NAT_PREROUTING``, ``NAT_POSTROUTING``; which parents are
  exclusive), the chain names in ``BandwidthController``, ``FirewallController``, ``StrictController``,
  ``TetherController``, ``IdletimerController``, ``WakeupController``, ``RouteController`` and
  ``oem_iptables_hook.h``; the bandwidth rules (``BandwidthController.cpp``, the non-bpf variant:
  ``bw_INPUT ... MARK --or-mark 0x100000``, ``bw_mangle_POSTROUTING ... MARK --set-mark 0x0/0x100000``);
  the incoming packet mark (``RouteController.cpp`` ``modifyIncomingPacketMark``: ``-A
  routectrl_mangle_INPUT -i IFACE -j MARK --set-mark NETID|explicit|protected/~0x100000``) and the
  ip rule priorities (``RULE_PRIORITY_*`` in ``RouteController.cpp``).
* The CONNMARK save of netd's 20 low mark bits on input and output (``connmark_mangle_INPUT``,
  ``connmark_mangle_OUTPUT``: Android 12 and later; the rules as dumped from a Pixel with
  ``iptables -t mangle -S -v`` in bmixonba.github.io's 2025 post on Android fwmark routing).
* The app's outgoing packet mark, which on a phone netd's FwmarkServer puts on the socket (SO_MARK);
  the lab's app is unmodified, so one rule in a chain of the stand-in's own (``standin_fwmark``) sets
  the same mark by uid.

Rules that mainline kernels refuse where netd puts them (``-m owner --socket-exists`` in INPUT and
raw PREROUTING needs xt_qtaguid) and the xt_bpf matches (need netd's pinned programs) are left out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from halfclose.proc import run

SERIAL = "emulator-5554"
PACKAGE = "com.example.app"
NETID = 100
#: netId | explicitlySelected (0x10000) | protectedFromVpn (0x20000), permission none: what netd
#: marks incoming packets of a network with (Fwmark.h, RouteController.cpp).
INCOMING_MARK = NETID | 0x10000 | 0x20000
MARK_MASK = 0xFFEFFFFF  # ~uidBillingMask
ROUTE_TABLE = 1002  # netd's per-interface table (the interface's ifindex + 1000 on a phone)

#: netd's child chains per (table, parent), in netd's order, and whether netd owns the parent
#: exclusively (flushes it at start: Controllers::initChildChains at 564115ba).
CHILD_CHAINS: dict[tuple[str, str], tuple[tuple[str, ...], bool]] = {
    ("filter", "INPUT"): (("bw_INPUT", "fw_INPUT"), True),
    ("filter", "FORWARD"): (("oem_fwd", "fw_FORWARD", "bw_FORWARD", "tetherctrl_FORWARD"), True),
    ("raw", "PREROUTING"): (("bw_raw_PREROUTING", "idletimer_raw_PREROUTING", "tetherctrl_raw_PREROUTING"), True),
    ("mangle", "FORWARD"): (("tetherctrl_mangle_FORWARD",), True),
    ("mangle", "INPUT"): (("connmark_mangle_INPUT", "wakeupctrl_mangle_INPUT", "routectrl_mangle_INPUT"), True),
    ("nat", "PREROUTING"): (("oem_nat_pre",), True),
    ("nat", "POSTROUTING"): (("tetherctrl_nat_POSTROUTING",), True),
    ("filter", "OUTPUT"): (("oem_out", "fw_OUTPUT", "st_OUTPUT", "bw_OUTPUT"), False),
    ("mangle", "POSTROUTING"): (("oem_mangle_post", "bw_mangle_POSTROUTING", "idletimer_mangle_POSTROUTING"),
                                False),
    # Android 12+ (Pixel dump); whether netd flushes mangle OUTPUT on a restart there is not
    # verified in source: treated as not exclusive, like filter OUTPUT.
    ("mangle", "OUTPUT"): (("connmark_mangle_OUTPUT",), False),
}
#: Further chains netd creates and fills (bandwidth, firewall, strict mode).
EXTRA_CHAINS = {
    "filter": ("bw_costly_shared", "bw_penalty_box", "bw_happy_box", "bw_data_saver", "bw_global_alert",
               "fw_dozable", "fw_standby", "fw_powersave", "st_clear_detect", "st_clear_caught",
               "st_penalty_log", "st_penalty_reject"),
}


def netd_rules(iface: str, app_uid: int, *, v6: bool) -> str:
    """The netd layout as ``iptables-restore`` input (no nat table for IPv6, as netd does)."""
    tables: dict[str, list[str]] = {"filter": [], "raw": [], "mangle": [], "nat": []}
    builtins = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "raw": ("PREROUTING", "OUTPUT"),
                "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
                "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}
    for (table, _parent), (children, _exclusive) in CHILD_CHAINS.items():
        for child in children:
            tables[table].append(f":{child} - [0:0]")
    for table, names in EXTRA_CHAINS.items():
        tables[table] += [f":{name} - [0:0]" for name in names]
    tables["mangle"].append(":standin_fwmark - [0:0]")
    tables["mangle"].append("-A OUTPUT -j standin_fwmark")
    for (table, parent), (children, _exclusive) in CHILD_CHAINS.items():
        tables[table] += [f"-A {parent} -j {child}" for child in children]
    mark = f"0x{INCOMING_MARK:x}/0x{MARK_MASK:x}"
    tables["filter"] += [
        "-A bw_INPUT -j bw_global_alert",
        "-A bw_INPUT -p esp -j RETURN",
        "-A bw_INPUT -m mark --mark 0x100000/0x100000 -j RETURN",
        "-A bw_INPUT -j MARK --or-mark 0x100000",
        "-A bw_OUTPUT -j bw_global_alert",
        "-A bw_OUTPUT -m owner --uid-owner 1029 -j RETURN",
        "-A bw_costly_shared -j bw_penalty_box",
        "-A bw_penalty_box -j bw_happy_box",
        "-A bw_happy_box -j bw_data_saver",
        "-A bw_happy_box -m owner --uid-owner 0-9999 -j RETURN",
        "-A bw_data_saver -j RETURN",
        "-A st_penalty_log -j CONNMARK --or-mark 0x1000000",
        "-A st_clear_detect -m connmark --mark 0x2000000/0x2000000 -j REJECT",
        "-A st_clear_detect -m connmark --mark 0x1000000/0x1000000 -j RETURN",
    ]
    tables["raw"] += ["-A bw_raw_PREROUTING -i ipsec+ -j RETURN",
                      "-A idletimer_raw_PREROUTING -i ipsec+ -j RETURN"]
    tables["mangle"] += [
        f"-A standin_fwmark -m owner --uid-owner {app_uid} -j MARK --set-xmark {mark}",
        "-A bw_mangle_POSTROUTING -o ipsec+ -j RETURN",
        "-A bw_mangle_POSTROUTING -j MARK --set-xmark 0x0/0x100000",
        "-A bw_mangle_POSTROUTING -m owner --uid-owner 1029 -j RETURN",
        "-A connmark_mangle_INPUT -m connmark --mark 0x0/0xfffff -j CONNMARK --save-mark --nfmask 0xfffff "
        "--ctmask 0xfffff",
        "-A connmark_mangle_OUTPUT -m connmark --mark 0x0/0xfffff -j CONNMARK --save-mark --nfmask 0xfffff "
        "--ctmask 0xfffff",
        f"-A routectrl_mangle_INPUT -i {iface} -j MARK --set-xmark {mark}",
        "-A tetherctrl_mangle_FORWARD -p tcp -m tcp --tcp-flags SYN SYN -j TCPMSS --clamp-mss-to-pmtu",
    ]
    if v6:
        del tables["nat"]
    out = []
    for table, lines in tables.items():
        out.append(f"*{table}")
        out += [f":{b} ACCEPT [0:0]" for b in builtins[table]]
        out += [line for line in lines if line.startswith(":")]
        out += [line for line in lines if not line.startswith(":")]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def netd_flush(*, v6: bool) -> str:
    """What netd writes when it (re)starts (Controllers::createChildChains at 564115ba): exclusive
    parents are flushed and get their jumps again, every child chain is cleared, non-exclusive
    parents keep the jumps they have."""
    out: dict[str, list[str]] = {}
    for (table, parent), (children, exclusive) in CHILD_CHAINS.items():
        if v6 and table == "nat":
            continue
        lines = out.setdefault(table, [])
        if exclusive:
            lines += [f":{parent} -", f"-F {parent}"]
        for child in children:
            lines.append(f":{child} -")
            if exclusive:
                lines.append(f"-A {parent} -j {child}")
    return "".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n" for t, lines in out.items())


def ip_rules(iface: str) -> list[list[str]]:
    """netd's policy routing for one network (RULE_PRIORITY_* in RouteController.cpp)."""
    t = str(ROUTE_TABLE)
    return [
        ["pref", "10000", "fwmark", "0xc0000/0xd0000", "lookup", "99"],
        ["pref", "13000", "fwmark", f"0x{NETID | 0x10000:x}/0x1ffff", "iif", "lo", "lookup", t],
        ["pref", "14000", "iif", "lo", "oif", iface, "lookup", t],
        ["pref", "15000", "fwmark", "0x0/0x10000", "lookup", "99"],
        ["pref", "16000", "fwmark", "0x0/0x10000", "lookup", "98"],
        ["pref", "17000", "fwmark", "0x0/0x10000", "lookup", "97"],
        ["pref", "19000", "fwmark", f"0x{NETID:x}/0x1ffff", "iif", "lo", "lookup", t],
        ["pref", "22000", "fwmark", "0x0/0xffff", "iif", "lo", "lookup", t],
        ["pref", "32000", "unreachable"],
    ]


FAKE_ADB = """#!/usr/bin/python3
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
if len(args) < 4 or args[0] != "-s" or args[2] not in ("shell", "exec-out"):
    sys.stderr.write("adb: unexpected arguments\\n")
    sys.exit(1)
if args[1] != {serial!r}:
    sys.stderr.write("adb: device '" + args[1] + "' not found\\n")
    sys.exit(1)
env = dict(os.environ, PATH={bin!r} + ":/usr/sbin:/usr/bin:/sbin:/bin")
os.execvpe("ip", ["ip", "netns", "exec", {ns!r}, "/bin/sh", "-c", " ".join(args[3:])], env)
"""
FAKE_SU = '#!/bin/sh\n[ "$1" = "-c" ] || exit 1\nexec /bin/sh -c "$2"\n'
FAKE_CMD = """#!/bin/sh
[ "$1 $2 $3 $4" = "package list packages -U" ] || exit 1
list() {{
  echo "package:com.android.shell uid:2000"
  echo "package:{package}.beta uid:10999"
  echo "package:{package} uid:{uid}"
}}
if [ -n "$5" ]; then list | grep -F "package:$5"; else list; fi
"""
#: pidof PACKAGE: the app's pid from the file the test writes when it starts the app.
FAKE_PIDOF = """#!/bin/sh
[ "$1" = "{package}" ] && [ -s {pidfile} ] && exec cat {pidfile}
exit 1
"""


@dataclass(frozen=True, kw_only=True)
class Device:
    """The stand-in: its namespace, network interface, adb's log and where the app's pid goes."""

    serial: str
    netns: str
    iface: str
    adb_log: Path
    pidfile: Path
    bindir: Path

    def save(self, *, counters: bool = False) -> str:
        """``iptables-legacy-save`` of both families (with ``-c``: packet counters)."""
        extra = ["-c"] if counters else []
        text = run(["iptables-legacy-save", *extra], netns=self.netns).stdout
        text += run(["ip6tables-legacy-save", *extra], netns=self.netns).stdout
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    def rules(self) -> str:
        """``ip rule`` and ``ip -6 rule``."""
        return run(["ip", "rule"], netns=self.netns).stdout + run(["ip", "-6", "rule"], netns=self.netns).stdout

    def adb_calls(self) -> list[list[str]]:
        if not self.adb_log.exists():
            return []
        return [json.loads(line) for line in self.adb_log.read_text().splitlines()]


def netd_chains(saved: str) -> list[str]:
    """The lines of a save that belong to netd (its chains' declarations, rules and jumps), without
    ours: what must be byte for byte the same before apply, with our rules and after remove."""
    ours = re.compile(r"HALFCLOSE")
    return [line for line in saved.splitlines() if not ours.search(line)]


@contextlib.contextmanager
def device(tmp: Path, netns: str, iface: str, *, app_uid: int, subnet4: str, subnet6: str) -> Iterator[Device]:
    """Turn namespace *netns* (interface *iface*) into the stand-in device and put ``adb`` in
    ``tmp/bin``; the namespace itself belongs to the caller."""
    bindir, devbin = tmp / "bin", tmp / "device-bin"
    bindir.mkdir()
    devbin.mkdir()
    log, pidfile = tmp / "adb.log", tmp / "app.pid"
    (bindir / "adb").write_text(FAKE_ADB.format(log=str(log), bin=str(devbin), ns=netns, serial=SERIAL))
    (devbin / "su").write_text(FAKE_SU)
    (devbin / "cmd").write_text(FAKE_CMD.format(package=PACKAGE, uid=app_uid))
    (devbin / "pidof").write_text(FAKE_PIDOF.format(package=PACKAGE, pidfile=pidfile))
    for path in (bindir / "adb", devbin / "su", devbin / "cmd", devbin / "pidof"):
        path.chmod(0o755)
    for name in ("iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"):
        (devbin / name).symlink_to("/usr/sbin/xtables-legacy-multi")
    (devbin / "iptables").symlink_to("/usr/sbin/xtables-legacy-multi")
    run(["iptables-legacy-restore"], netns=netns, input=netd_rules(iface, app_uid, v6=False))
    run(["ip6tables-legacy-restore"], netns=netns, input=netd_rules(iface, app_uid, v6=True))
    for family, subnet in (("-4", subnet4), ("-6", subnet6)):
        run(["ip", family, "route", "add", subnet, "dev", iface, "table", str(ROUTE_TABLE)], netns=netns)
        for rule in ip_rules(iface):
            run(["ip", family, "rule", "add", *rule], netns=netns)
        run(["ip", family, "rule", "del", "pref", "32766"], netns=netns)  # no main-table fallback
    yield Device(serial=SERIAL, netns=netns, iface=iface, adb_log=log, pidfile=pidfile, bindir=bindir)


def env_with_adb(d: Device) -> dict[str, str]:
    return dict(os.environ, PATH=f"{d.bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")


def run_on_device(d: Device, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command through the stand-in adb, as the tool runs it."""
    return subprocess.run(["adb", "-s", d.serial, "shell", *argv], capture_output=True, text=True,
                          env=env_with_adb(d), check=True)
