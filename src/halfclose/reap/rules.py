"""The nftables rules that feed the reaper: tag the app's connections, log the server's FIN.

This is the reaper's own minimal rule set (NFLOG strategy). Rendering is pure
(:func:`render`); :func:`installed` applies it with ``nft -f -`` in the current network namespace
(or *netns*) and deletes the table on exit, however the block ends.

The connection is tagged on output (``meta skuid``, only valid there) in ct mark bit
0x04000000, a bit that neither Android's netd fwmark nor its ct mark flags use; on input a FIN
(without RST) from a selected port on a tagged connection is logged to the NFLOG group with a
queue threshold of 1, so that each FIN reaches the listener at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from halfclose.proc import run

__all__ = ["TAG_BIT", "NflogRules", "installed", "render", "table_name"]

TAG_BIT = 0x04000000


@dataclass(frozen=True, slots=True, kw_only=True)
class NflogRules:
    """What to tag and where to log: app uids, server ports (empty: any), NFLOG group."""

    uids: tuple[int, ...]
    ports: tuple[int, ...] = ()
    nflog_group: int = 42
    snaplen: int = 128


def table_name(rules: NflogRules) -> str:
    """The nft table (family inet) the rule set lives in; one per NFLOG group."""
    return f"halfclose_reap_{rules.nflog_group}"


def _set(values: Sequence[int]) -> str:
    return "{ " + ", ".join(str(v) for v in values) + " }"


def render(rules: NflogRules) -> str:
    """The nft script: create-or-replace the table atomically (one transaction)."""
    if not rules.uids:
        raise ValueError("at least one uid is needed: the tag rule matches the app's uid")
    name = table_name(rules)
    dport = f"tcp dport {_set(rules.ports)} " if rules.ports else ""
    sport = f"tcp sport {_set(rules.ports)} " if rules.ports else ""
    return "\n".join(
        [
            f"table inet {name}",
            f"delete table inet {name}",
            f"table inet {name} {{",
            "  chain out_tag {",
            "    type filter hook output priority mangle; policy accept;",
            f"    meta l4proto tcp {dport}meta skuid {_set(rules.uids)} "
            f"ct mark & {TAG_BIT:#010x} == 0 ct mark set ct mark | {TAG_BIT:#010x}",
            "  }",
            "  chain in_fin {",
            "    type filter hook input priority mangle; policy accept;",
            f"    meta l4proto tcp {sport}tcp flags & (fin | rst) == fin "
            f"ct mark & {TAG_BIT:#010x} == {TAG_BIT:#010x} "
            f"log group {rules.nflog_group} snaplen {rules.snaplen} queue-threshold 1",
            "  }",
            "}",
            "",
        ]
    )


@contextlib.contextmanager
def installed(rules: NflogRules, *, netns: str | None = None) -> Iterator[None]:
    """Apply the rule set for the duration of the block, then delete its table.

    Raises:
        EnvironmentProblem: nft is missing or refused the rules (for example without root).
    """
    run(["nft", "-f", "-"], input=render(rules), netns=netns)
    try:
        yield
    finally:
        run(["nft", "delete", "table", "inet", table_name(rules)], netns=netns, check=False)
