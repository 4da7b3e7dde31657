"""Rule text from a policy: pure functions, no I/O.

Two renderings of the same three steps (see ``docs`` in the package docstring):

* native nftables: one table ``inet halfclose`` (IPv4 and IPv6), replaced in one ``nft -f`` transaction;
* iptables (nft or legacy): our own chains in ``mangle`` and ``filter``, reached by one jump each from
  mangle OUTPUT, mangle PREROUTING and (at the top) filter OUTPUT, written with ``iptables-restore
  --noflush``. Because an iptables transaction can only say "delete this rule" and not "delete it if it is
  there", the text for iptables is computed from the table's current state (:class:`TableState`, parsed
  from ``iptables-save -c``) to a desired state: that is what makes ``apply`` idempotent and what lets a
  failed ``apply`` be rolled back to exactly the state before.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from halfclose.netfilter.policy import Family, Policy, Strategy

__all__ = [
    "BUILTIN_OF",
    "CHAIN_OUT",
    "CHAIN_PRE",
    "CHAIN_REJECT",
    "MARKER_PREFIX",
    "MARKER_TABLE",
    "NFT_TABLE",
    "OUR_PREFIX",
    "TABLES",
    "Counter",
    "RuleRole",
    "TableState",
    "desired_state",
    "iptables_rules",
    "marker_chain",
    "nft_counters",
    "nft_remove_text",
    "nft_text",
    "parse_save",
    "ports_text",
    "roles_of",
    "transaction",
]

#: The native nftables table (family inet: one table for IPv4 and IPv6).
NFT_TABLE = "halfclose"
OUR_PREFIX = "HALFCLOSE-"
CHAIN_OUT = "HALFCLOSE-OUT"
CHAIN_PRE = "HALFCLOSE-PRE"
CHAIN_REJECT = "HALFCLOSE-REJECT"
#: Empty chains recording that we created a built-in chain (or the table) with iptables-nft.
MARKER_PREFIX = "HALFCLOSE-NEW-"
MARKER_TABLE = "HALFCLOSE-NEW-TABLE"
#: Our chain -> (table, built-in chain that jumps to it).
BUILTIN_OF: Mapping[str, tuple[str, str]] = {
    CHAIN_OUT: ("mangle", "OUTPUT"),
    CHAIN_PRE: ("mangle", "PREROUTING"),
    CHAIN_REJECT: ("filter", "OUTPUT"),
}
#: The iptables tables we touch, in the order they are written.
TABLES = ("mangle", "filter")


@enum.unique
class RuleRole(enum.StrEnum):
    """What one of our rules does; the key of the counters :func:`status` reports."""

    #: Connection tagged as the app's (one packet per connection).
    TAG = "tagged"
    #: The client sent its own FIN: the connection is exempt from then on.
    CLIENT_CLOSE = "client_closed"
    #: A server FIN flagged the app's connection.
    FIN = "fin_flagged"
    #: A segment of the app's flagged connection was rejected with a TCP reset.
    REJECT = "rejected"
    #: A server FIN was sent to the NFLOG group.
    LOG = "logged"


@dataclass(frozen=True, slots=True, kw_only=True)
class Counter:
    """Packet and byte counter of one of our rules."""

    role: RuleRole
    packets: int
    bytes: int


def ports_text(ports: Iterable[int]) -> str:
    """Ports as iptables' multiport wants them: ``80,443``."""
    return ",".join(str(p) for p in ports)


def _hex(value: int) -> str:
    return f"{value:#010x}"


# ----------------------------------------------------------------------------------------------
# nftables


def _nft_set(values: Iterable[int]) -> str:
    return "{ " + ", ".join(str(v) for v in values) + " }"


def nft_text(policy: Policy) -> str:
    """The complete ``nft -f`` input that (re)creates table ``inet halfclose`` for *policy*.

    It first creates the table (a no-op when it exists) and deletes it, so that the whole file is
    one transaction that replaces any earlier version: applying twice leaves one copy.
    """
    tag, fin, both = policy.tag_mask, policy.fin_mask, policy.both_masks
    keep = 0xFFFFFFFF & ~both
    ports = _nft_set(policy.ports)
    uids = _nft_set(policy.uids)
    log = ""
    if policy.strategy is Strategy.NFLOG:
        log = f" log prefix \"halfclose-fin \" group {policy.nflog_group} snaplen 80 queue-threshold 1"
    lines = [
        f"# halfclose: strategy {policy.strategy}, uids {', '.join(map(str, policy.uids))}, "
        f"ports {ports_text(policy.ports)}, tag {_hex(tag)}, fin {_hex(fin)}",
        f"table inet {NFT_TABLE}",
        f"delete table inet {NFT_TABLE}",
        f"table inet {NFT_TABLE} {{",
        "\tchain app_tag {",
        "\t\ttype filter hook output priority mangle; policy accept;",
        f"\t\ttcp dport {ports} tcp flags & fin == fin ct mark & {_hex(tag)} == {_hex(tag)} "
        f"ct mark set ct mark & {_hex(keep)} | {_hex(fin)} counter comment \"{RuleRole.CLIENT_CLOSE}\"",
        f"\t\ttcp dport {ports} tcp flags & (fin | rst) == 0x0 meta skuid {uids} "
        f"ct mark & {_hex(both)} == 0x0 ct mark set ct mark | {_hex(tag)} counter comment \"{RuleRole.TAG}\"",
        "\t}",
        "\tchain server_fin {",
        "\t\ttype filter hook prerouting priority mangle; policy accept;",
        f"\t\ttcp sport {ports} tcp flags & (fin | rst) == fin ct mark & {_hex(both)} == {_hex(tag)} "
        f"ct mark set ct mark | {_hex(fin)} counter{log} comment \"{RuleRole.FIN}\"",
        "\t}",
    ]
    if policy.strategy is Strategy.REJECT:
        lines += [
            "\tchain app_reset {",
            "\t\ttype filter hook output priority filter - 1; policy accept;",
            f"\t\ttcp dport {ports} tcp flags & (fin | syn | rst) == 0x0 "
            f"ct mark & {_hex(both)} == {_hex(both)} counter reject with tcp reset "
            f"comment \"{RuleRole.REJECT}\"",
            "\t}",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def nft_remove_text() -> str:
    """``nft -f`` input that deletes table ``inet halfclose`` whether or not it exists."""
    return f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"


def nft_counters(listing: Mapping[str, object], strategy: Strategy | None = None) -> list[Counter]:
    """Counters of our rules from ``nft -j list table inet halfclose`` (parsed JSON)."""
    out: list[Counter] = []
    items = listing.get("nftables", [])
    if not isinstance(items, list):
        return out
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        try:
            role = RuleRole(str(rule.get("comment", "")))
        except ValueError:
            continue
        packets = nbytes = 0
        has_log = False
        for expr in rule.get("expr", []):
            if isinstance(expr, dict) and isinstance(expr.get("counter"), dict):
                packets = int(expr["counter"].get("packets", 0))
                nbytes = int(expr["counter"].get("bytes", 0))
            if isinstance(expr, dict) and "log" in expr:
                has_log = True
        out.append(Counter(role=role, packets=packets, bytes=nbytes))
        if role is RuleRole.FIN and has_log:
            out.append(Counter(role=RuleRole.LOG, packets=packets, bytes=nbytes))
    return out


# ----------------------------------------------------------------------------------------------
# iptables


def iptables_rules(policy: Policy, family: Family) -> dict[str, list[str]]:
    """Our chains and their rules (``iptables-restore`` argument strings without ``-A CHAIN``)."""
    del family  # the same text serves iptables and ip6tables
    tag, fin, both = policy.tag_mask, policy.fin_mask, policy.both_masks
    ports = ports_text(policy.ports)
    out = [
        f"-p tcp -m tcp --tcp-flags FIN FIN -m multiport --dports {ports} "
        f"-m connmark --mark {_hex(tag)}/{_hex(tag)} -j CONNMARK --set-xmark {_hex(fin)}/{_hex(both)}"
    ]
    out += [
        f"-p tcp -m tcp --tcp-flags FIN,RST NONE -m multiport --dports {ports} -m owner --uid-owner {uid} "
        f"-m connmark --mark 0x0/{_hex(both)} -j CONNMARK --set-xmark {_hex(tag)}/{_hex(tag)}"
        for uid in policy.uids
    ]
    pre: list[str] = []
    flag_match = (
        f"-p tcp -m tcp --tcp-flags FIN,RST FIN -m multiport --sports {ports} "
        f"-m connmark --mark {_hex(tag)}/{_hex(both)}"
    )
    if policy.strategy is Strategy.NFLOG:
        pre.append(
            f"{flag_match} -j NFLOG --nflog-prefix halfclose-fin --nflog-group {policy.nflog_group} "
            "--nflog-size 80 --nflog-threshold 1"
        )
    pre.append(f"{flag_match} -j CONNMARK --set-xmark {_hex(fin)}/{_hex(fin)}")
    chains = {CHAIN_OUT: out, CHAIN_PRE: pre}
    if policy.strategy is Strategy.REJECT:
        chains[CHAIN_REJECT] = [
            f"-p tcp -m tcp --tcp-flags FIN,SYN,RST NONE -m multiport --dports {ports} "
            f"-m connmark --mark {_hex(both)}/{_hex(both)} -j REJECT --reject-with tcp-reset"
        ]
    return chains


@dataclass(frozen=True, slots=True, kw_only=True)
class TableState:
    """Our part of one iptables table, as ``iptables-save -c -t TABLE`` shows it.

    Attributes:
        table: ``mangle`` or ``filter``.
        chains: our chains (names starting ``HALFCLOSE-``, markers included) -> their rule specs.
        counters: our chains -> ``(packets, bytes)`` per rule, in order.
        jumps: built-in chain -> 1-based positions of its rules that jump to one of our chains,
            with the chain they jump to.
        builtin_rules: built-in chain -> number of rules in it (ours included).
        present: whether the save listed the table at all.
    """

    table: str
    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    counters: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    jumps: Mapping[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)
    builtin_rules: Mapping[str, int] = field(default_factory=dict)
    present: bool = False

    @property
    def installed(self) -> bool:
        """Whether any of our (non-marker) chains is in the table."""
        return any(not name.startswith(MARKER_PREFIX) for name in self.chains)

    @property
    def markers(self) -> frozenset[str]:
        """Marker chains: built-ins (or ``TABLE``) we created with iptables-nft."""
        return frozenset(n[len(MARKER_PREFIX):] for n in self.chains if n.startswith(MARKER_PREFIX))


_COUNTED = re.compile(r"^\[(\d+):(\d+)\]\s+(.*)$")
_BUILTINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})


def parse_save(text: str, table: str) -> TableState:
    """Parse ``iptables-save [-c] -t TABLE`` output into our :class:`TableState`."""
    chains: dict[str, list[str]] = {}
    counters: dict[str, list[tuple[int, int]]] = {}
    jumps: dict[str, list[tuple[int, str]]] = {}
    builtin_rules: dict[str, int] = {}
    present = False
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            current = line[1:]
            present = present or current == table
            continue
        if current != table or not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(OUR_PREFIX):
                chains.setdefault(name, [])
                counters.setdefault(name, [])
            continue
        packets = nbytes = 0
        m = _COUNTED.match(line)
        if m:
            packets, nbytes, line = int(m.group(1)), int(m.group(2)), m.group(3)
        words = line.split()
        if len(words) < 2 or words[0] != "-A":
            continue
        chain, spec = words[1], " ".join(words[2:])
        if chain.startswith(OUR_PREFIX):
            chains.setdefault(chain, []).append(spec)
            counters.setdefault(chain, []).append((packets, nbytes))
        elif chain in _BUILTINS:
            builtin_rules[chain] = builtin_rules.get(chain, 0) + 1
            if len(words) == 4 and words[2] == "-j" and words[3].startswith(OUR_PREFIX):
                jumps.setdefault(chain, []).append((builtin_rules[chain], words[3]))
    return TableState(
        table=table,
        chains={k: tuple(v) for k, v in chains.items()},
        counters={k: tuple(v) for k, v in counters.items()},
        jumps={k: tuple(v) for k, v in jumps.items()},
        builtin_rules=builtin_rules,
        present=present,
    )


def marker_chain(name: str) -> str:
    """The marker chain recording that we created built-in chain (or ``TABLE``) *name*."""
    return f"{MARKER_PREFIX}{name}"


def desired_state(
    policy: Policy, family: Family, table: str, *, markers: Iterable[str] = ()
) -> TableState:
    """The state of *table* with *policy* installed: our chains, one jump at the top of each built-in."""
    chains: dict[str, tuple[str, ...]] = {}
    jumps: dict[str, tuple[tuple[int, str], ...]] = {}
    for chain, rules in iptables_rules(policy, family).items():
        tbl, builtin = BUILTIN_OF[chain]
        if tbl != table:
            continue
        chains[chain] = tuple(rules)
        jumps[builtin] = ((1, chain),)
    for marker in sorted(set(markers)):
        chains[marker_chain(marker)] = ()
    return TableState(table=table, chains=chains, jumps=jumps, present=True)


def transaction(current: TableState, desired: TableState) -> str:
    """``iptables-restore --noflush`` input that turns *current* into *desired* for our part of a table.

    Only our chains and the jumps to them are touched: every current jump is deleted, chains no
    longer wanted are flushed and deleted, wanted chains are declared (which creates or flushes them)
    and filled, and the wanted jumps are inserted at their positions (ascending, so earlier inserts do
    not shift later ones). Returns ``""`` when there is nothing to do.
    """
    if not current.chains and not current.jumps and not desired.chains and not desired.jumps:
        return ""
    lines = [f"*{current.table}"]
    for builtin, positions in current.jumps.items():
        for _pos, chain in positions:
            lines.append(f"-D {builtin} -j {chain}")
    for chain in current.chains:
        if chain not in desired.chains:
            lines += [f"-F {chain}", f"-X {chain}"]
    for chain in desired.chains:
        lines.append(f":{chain} - [0:0]")
    for chain, rules in desired.chains.items():
        lines += [f"-A {chain} {rule}" for rule in rules]
    inserts = sorted((pos, builtin, chain) for builtin, ps in desired.jumps.items() for pos, chain in ps)
    lines += [f"-I {builtin} {pos} -j {chain}" for pos, builtin, chain in inserts]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def roles_of(state: TableState) -> list[Counter]:
    """Counters of our rules in one table, keyed by what each rule does."""
    out: list[Counter] = []
    for chain, specs in state.chains.items():
        for spec, (packets, nbytes) in zip(specs, state.counters.get(chain, ()), strict=False):
            role: RuleRole | None = None
            if chain == CHAIN_OUT:
                role = RuleRole.TAG if "--uid-owner" in spec else RuleRole.CLIENT_CLOSE
            elif chain == CHAIN_PRE:
                role = RuleRole.LOG if "-j NFLOG" in spec else RuleRole.FIN
            elif chain == CHAIN_REJECT:
                role = RuleRole.REJECT
            if role is not None:
                out.append(Counter(role=role, packets=packets, bytes=nbytes))
    return out
