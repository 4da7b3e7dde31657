"""The field report's own iptables commands, as written and as literally ported to a mainline kernel.

The report (an Android 3.10 kernel with xt_qtaguid, which accepts ``-m owner`` on INPUT) marks
the packet of the server's FIN on INPUT by the app's uid, saves the packet mark to the connection
mark on every incoming packet, restores it on every outgoing one, and rejects the app's next
outgoing ACK with a reset. On a mainline kernel the first command is refused (the owner match is
valid on OUTPUT and POSTROUTING only). The literal port keeps the five commands and moves the
owner match to OUTPUT, where the kernel accepts it: an OUTPUT rule tags the app's connections
with a connection label (:data:`LABEL`), and the FIN rule on INPUT matches that label instead of
the uid. (A tag in the connection mark would not survive: the report's own unmasked
``--save-mark`` copies every incoming packet's mark, 0, over the whole connection mark.) This
keeps what the report's rules break:

* the FIN,ACK rule also matches the server's FIN that answers the *client's* FIN: when the app
  closes a connection itself, its final ACK is rejected, the server is left in LAST_ACK and
  repeats its FIN, and the client's stack answers the repeat with a RST (``halfclose rules``
  exempts connections the client closed first). The *naive* port, which drops the owner match
  instead of moving it, does the same to every connection on the port, whatever its uid;
* the unmasked ``--restore-mark`` on OUTPUT overwrites the whole packet mark of every outgoing
  packet (on Android: netd's network id and permission bits).

To make the second visible the lab stands in for netd: a mangle OUTPUT rule gives the app's
packets a netd-like mark (:data:`NETD_MARK`), and a mangle POSTROUTING rule counts the app's
packets that leave without it. Everything is iptables-legacy, as on Android.

:func:`as_written`, :func:`ported` and :func:`netd_standin` are pure; :func:`install` and
:func:`read_counters` run ``iptables-legacy`` in a namespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from halfclose.proc import run

__all__ = [
    "LABEL",
    "NETD_MARK",
    "PROGRAM",
    "Refusal",
    "VerbatimCounters",
    "as_written",
    "install",
    "netd_standin",
    "ported",
    "read_counters",
]

#: iptables as on Android.
PROGRAM = "iptables-legacy"
#: A netd-like fwmark (netId 100, explicitly selected, permission NETWORK) the stand-in puts on the
#: app's packets.
NETD_MARK = 0x00050064
#: The connection label (a bit number) the literal port tags the app's connections with.
LABEL = 10
_OVERWRITTEN = "halfclose-verbatim-overwritten"
_APP = "halfclose-verbatim-app"


def as_written(uid: int, port: int) -> tuple[tuple[str, ...], ...]:
    """The report's five commands, in its order (the ``adb shell`` stripped)."""
    return (
        ("-t", "filter", "-A", "INPUT", "-m", "owner", "--uid-owner", str(uid), "-p", "tcp", "--sport", str(port),
         "--tcp-flags", "FIN,ACK", "FIN,ACK", "-j", "MARK", "--set-mark", "15"),
        ("-t", "filter", "-A", "INPUT", "-j", "CONNMARK", "--save-mark"),
        ("-t", "filter", "-A", "OUTPUT", "-j", "CONNMARK", "--restore-mark"),
        ("-t", "filter", "-A", "INPUT", "-j", "CONNMARK", "--restore-mark"),
        ("-t", "filter", "-A", "OUTPUT", "-m", "mark", "--mark", "15", "-p", "tcp", "--tcp-flags", "ACK", "ACK",
         "-j", "REJECT", "--reject-with", "tcp-reset"),
    )


def ported(uid: int, port: int, *, naive: bool = False) -> tuple[tuple[str, ...], ...]:
    """The same commands with the owner match moved to OUTPUT: a rule there tags the app's connections
    with :data:`LABEL`, and the FIN rule matches the label where it matched the uid (*naive*: the
    owner match dropped instead, which is what deleting the refused words gives)."""
    first, *rest = as_written(uid, port)
    owner = ("-m", "owner", "--uid-owner", str(uid))
    without_owner = tuple(w for i, w in enumerate(first) if not 4 <= i < 8)
    if naive:
        return (without_owner, *rest)
    label = ("-m", "connlabel", "--label", str(LABEL))
    tag = ("-t", "filter", "-A", "OUTPUT", *owner, *label, "--set")
    return (tag, without_owner[:4] + label + without_owner[4:], *rest)


def netd_standin(uid: int) -> tuple[tuple[str, ...], ...]:
    """Rules standing in for netd: mark the app's packets, count those that leave without the mark."""
    return (
        ("-t", "mangle", "-A", "OUTPUT", "-m", "owner", "--uid-owner", str(uid), "-j", "MARK", "--set-mark",
         f"0x{NETD_MARK:x}"),
        ("-t", "mangle", "-A", "POSTROUTING", "-m", "owner", "--uid-owner", str(uid), "-m", "comment", "--comment",
         _APP),
        ("-t", "mangle", "-A", "POSTROUTING", "-m", "owner", "--uid-owner", str(uid), "-m", "mark", "!", "--mark",
         f"0x{NETD_MARK:x}", "-m", "comment", "--comment", _OVERWRITTEN),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A command the kernel refused: the command line and what iptables (and the kernel) said."""

    command: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VerbatimCounters:
    """What the report's rules did during a run.

    Fields:
        refused: the commands as written that the kernel refused.
        rejected: packets the ported REJECT rule turned into a local reset.
        app_packets: the app's packets that left the phone.
        marks_overwritten: of those, the ones whose netd-like mark had been overwritten.
    """

    refused: tuple[Refusal, ...]
    rejected: int
    app_packets: int
    marks_overwritten: int


def _command_line(args: tuple[str, ...]) -> str:
    return " ".join(("iptables", *args))


def _kernel_says() -> str:
    done = run(["dmesg"], check=False)
    lines = [line for line in done.stdout.splitlines() if "owner match" in line]
    return re.sub(r"^\[[^]]*\]\s*", "", lines[-1]) if lines else ""


def install(netns: str, uid: int, port: int, *, naive: bool = False) -> tuple[Refusal, ...]:
    """Run the commands as written (recording what is refused), flush, then the stand-in and the port
    (*naive*: see :func:`ported`).

    Raises:
        CommandFailed: a command of the port or of the stand-in failed.
    """
    refused = []
    for args in as_written(uid, port):
        done = run([PROGRAM, "-w", *args], netns=netns, check=False)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no message"])[-1]
            kernel = _kernel_says()
            refused.append(Refusal(command=_command_line(args), message=f"{said} {kernel}".strip()))
    run([PROGRAM, "-w", "-t", "filter", "-F"], netns=netns)
    for args in (*netd_standin(uid), *ported(uid, port, naive=naive)):
        run([PROGRAM, "-w", *args], netns=netns)
    return tuple(refused)


def _packets(save: str, needle: str) -> int:
    for line in save.splitlines():
        if needle in line:
            match = re.match(r"\[(\d+):\d+\]", line)
            return int(match.group(1)) if match else 0
    return 0


def read_counters(netns: str, refused: tuple[Refusal, ...]) -> VerbatimCounters:
    """The rules' packet counters in *netns*, with the commands *install* found refused."""
    save = run([f"{PROGRAM}-save", "-c"], netns=netns).stdout
    return VerbatimCounters(
        refused=refused,
        rejected=_packets(save, "-j REJECT"),
        app_packets=_packets(save, _APP),
        marks_overwritten=_packets(save, _OVERWRITTEN),
    )
