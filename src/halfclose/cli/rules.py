"""``halfclose rules``: show, apply, remove and inspect the netfilter fix for one app.

Exit statuses: 0 done (for ``status``: the rules are in place), 1 ``status`` found no rules,
2 bad input or environment (one line on stderr, the ruleset untouched).
"""

from __future__ import annotations

import argparse
import json

from halfclose.errors import ExitStatus, UsageError
from halfclose.netfilter import Backend, Policy, Strategy, Target, apply, remove, render, status
from halfclose.netfilter.android import AdbHost, check_package, check_serial, lookup_uid
from halfclose.netfilter.install import Host, LocalHost
from halfclose.netfilter.policy import DEFAULT_FIN_MASK, DEFAULT_NFLOG_GROUP, DEFAULT_PORTS, DEFAULT_TAG_MASK

__all__ = ["add_arguments", "run"]


def _numbers(what: str, base: int = 10) -> type:
    def parse(text: str) -> list[int]:
        out = []
        for part in text.split(","):
            try:
                out.append(int(part.strip(), base))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{what} {part.strip()!r} is not a number") from None
        return out

    parse.__name__ = what
    return parse  # type: ignore[return-value]


def _mask(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"mask {text!r} is not a number (like 0x04000000)") from None


def _common(p: argparse.ArgumentParser, *, policy: bool, json_flag: bool = False) -> None:
    if policy:
        p.add_argument("--uid", action="append", type=_numbers("uid"), default=[],
                       help="the app's uid (repeat or comma-separate for several); required")
        p.add_argument("--port", action="append", type=_numbers("port"), default=[],
                       help="server TCP port (repeat or comma-separate; default 80,443)")
        p.add_argument("--strategy", choices=[s.value for s in Strategy], default=Strategy.REJECT.value,
                       help="reject: reset the app's socket locally (default); nflog: log FINs for a reaper")
        p.add_argument("--tag-mask", type=_mask, default=DEFAULT_TAG_MASK,
                       help="connection-mark bit for the app's connections (default 0x04000000)")
        p.add_argument("--fin-mask", type=_mask, default=DEFAULT_FIN_MASK,
                       help="connection-mark bit for 'server FIN seen' (default 0x08000000)")
        p.add_argument("--nflog-group", type=int, default=DEFAULT_NFLOG_GROUP,
                       help="NFLOG group for --strategy nflog (default 42; 0-3 are netd's)")
    p.add_argument("--backend", choices=[b.value for b in Backend], default=Backend.AUTO.value,
                   help="nft, iptables-nft, iptables-legacy, or auto (default: what the host uses)")
    p.add_argument("--target", choices=[t.value for t in Target], default=None,
                   help="linux (default) or android (iptables-legacy over adb; implied by --adb)")
    p.add_argument("--netns", metavar="NAME", help="act inside this network namespace")
    p.add_argument("--adb", metavar="SERIAL", help="act on this Android device (adb -s SERIAL shell su -c)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the status as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``show``, ``apply``, ``remove``, ``status`` and ``uid``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _common(sub.add_parser("show", help="print the exact rule text apply would write"), policy=True)
    _common(sub.add_parser("apply", help="put the rules in place (atomic, idempotent)"), policy=True)
    _common(sub.add_parser("remove", help="take the rules out again"), policy=False)
    _common(sub.add_parser("status", help="are the rules in place; their packet counters"), policy=False,
            json_flag=True)
    u = sub.add_parser("uid", help="look up an Android app's uid over adb")
    u.add_argument("package", help="the app's package name, like com.example.app")
    u.add_argument("--adb", metavar="SERIAL", required=True, help="the device's adb serial")


def _target(args: argparse.Namespace) -> Target:
    target = Target(args.target) if args.target else (Target.ANDROID if args.adb else Target.LINUX)
    if target is Target.ANDROID and args.netns:
        raise UsageError("--netns and --target android do not go together: use --adb SERIAL for a device")
    if target is Target.LINUX and args.adb:
        raise UsageError("--adb needs --target android (or leave --target out)")
    return target


def _host(args: argparse.Namespace, target: Target) -> Host:
    if target is Target.ANDROID:
        if not args.adb:
            raise UsageError("--target android needs --adb SERIAL (the device, see 'adb devices')")
        return AdbHost(serial=check_serial(args.adb))
    return LocalHost(netns=args.netns)


def _policy(args: argparse.Namespace) -> Policy:
    uids = tuple(u for group in args.uid for u in group)
    ports = tuple(p for group in args.port for p in group) or DEFAULT_PORTS
    return Policy(uids=uids, ports=ports, strategy=Strategy(args.strategy), tag_mask=args.tag_mask,
                  fin_mask=args.fin_mask, nflog_group=args.nflog_group)


def run(args: argparse.Namespace) -> int:
    """Run one ``halfclose rules`` action."""
    if args.action == "uid":
        print(lookup_uid(check_package(args.package), serial=check_serial(args.adb)))
        return ExitStatus.OK
    target = _target(args)
    backend = Backend(args.backend)
    if args.action == "show":
        policy = _policy(args)
        shown = Backend.NFT if backend is Backend.AUTO else backend
        print(render(policy, backend=shown, target=target), end="")
        return ExitStatus.OK
    host = _host(args, target)
    if args.action == "apply":
        policy = _policy(args)
        used = apply(policy, backend=backend, host=host)
        print(f"rules applied with {used} on {host.describe()}: strategy {policy.strategy}, "
              f"uids {','.join(map(str, policy.uids))}, ports {','.join(map(str, policy.ports))}")
        return ExitStatus.OK
    if args.action == "remove":
        found = remove(backend=backend, host=host)
        where = host.describe()
        print(f"rules removed from {where}" if found else f"no rules were in place on {where}")
        return ExitStatus.OK
    st = status(backend=backend, host=host)
    if args.json:
        print(json.dumps(st.as_json(), indent=2))
    elif not st.installed:
        print(f"no rules in place on {st.where}")
    else:
        print(f"rules in place on {st.where} with {st.backend}")
        for name, packets in st.counters.items():
            print(f"  {name.replace('_', ' '):14} {packets} packets")
    return ExitStatus.OK if st.installed else ExitStatus.FAILURE
