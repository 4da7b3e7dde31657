"""Putting rules in place, taking them out, reading their counters: the I/O around :mod:`.render`.

Every program runs through a :class:`Host`: :class:`LocalHost` (this machine, or one of its network
namespaces) or :class:`~halfclose.netfilter.android.AdbHost` (an Android device over ``adb``).

``apply`` is atomic and idempotent. On nftables it is one ``nft -f`` transaction that replaces the table.
On iptables each table of each family is one ``iptables-restore --noflush`` transaction from the state
read just before; if a later one fails, the ones already written are turned back into the state read
before (and chains that iptables-nft created for us are deleted again), so the ruleset is left as it was.

How ``--backend auto`` decides (first that holds):

1. on an Android device: iptables-legacy (the only one Android has);
2. our rules are already in place with one backend: that one (so apply replaces them in place and
   remove/status find them);
3. legacy x_tables already hold rules (``iptables-legacy-save`` lists any rule): iptables-legacy, so that
   our rules sit where the host's other rules are;
4. ``nft`` is installed: native nftables;
5. ``iptables-nft-restore`` is installed: iptables-nft; else ``iptables-legacy-restore``: iptables-legacy.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from halfclose.errors import CommandFailed, EnvironmentProblem
from halfclose.netfilter.policy import Backend, Family, Policy, Target
from halfclose.netfilter.render import (
    BUILTIN_OF,
    CHAIN_OUT,
    CHAIN_PRE,
    MARKER_PREFIX,
    NFT_TABLE,
    TABLES,
    Counter,
    RuleRole,
    TableState,
    desired_state,
    nft_counters,
    nft_remove_text,
    nft_text,
    parse_save,
    roles_of,
    transaction,
)
from halfclose.proc import require_root, run

__all__ = [
    "Host",
    "LocalHost",
    "Status",
    "apply",
    "installed",
    "remove",
    "resolve_backend",
    "status",
]

_FAMILIES = (Family.IPV4, Family.IPV6)


class Host(Protocol):
    """Somewhere to run netfilter programs: here, in a namespace, or on a device."""

    @property
    def target(self) -> Target:
        """Linux or Android: decides program names and the backends available."""
        ...

    def run(self, argv: Sequence[str], *, input: str | None = None, check: bool = True) -> (
        subprocess.CompletedProcess[str]
    ):
        """Run *argv* (a program and its arguments) with *input* on stdin; raise on failure if *check*."""
        ...

    def has(self, program: str) -> bool:
        """Whether *program* can be run there."""
        ...

    def describe(self) -> str:
        """Where, in words, for messages (``namespace hc-1234-phone``)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalHost:
    """This machine, or network namespace *netns* on it."""

    netns: str | None = None
    target: Target = Target.LINUX

    def run(self, argv: Sequence[str], *, input: str | None = None, check: bool = True) -> (
        subprocess.CompletedProcess[str]
    ):
        return run(argv, netns=self.netns, input=input, check=check)

    def has(self, program: str) -> bool:
        found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
        return found is not None

    def describe(self) -> str:
        return f"namespace {self.netns}" if self.netns else "this host"


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """Whether the rules are in place, and what their counters say.

    Attributes:
        backend: where they are (``None`` when nowhere).
        installed: whether the rules are in place (on every family, for iptables).
        counters: packets per rule role (``tagged``, ``client_closed``, ``fin_flagged``, ``rejected``,
            ``logged``), summed over IPv4 and IPv6.
        where: the host or namespace, in words.
    """

    backend: Backend | None
    installed: bool
    counters: dict[str, int] = field(default_factory=dict)
    where: str = "this host"

    def as_json(self) -> dict[str, object]:
        """The status as a JSON-ready dict."""
        return {
            "installed": self.installed,
            "backend": None if self.backend is None else str(self.backend),
            "where": self.where,
            "counters": dict(self.counters),
        }


# ----------------------------------------------------------------------------------------------
# programs


def _restore(backend: Backend, family: Family, target: Target) -> list[str]:
    six = "6" if family is Family.IPV6 else ""
    if target is Target.ANDROID:
        return [f"ip{six}tables-restore", "--noflush", "-w"]
    variant = "nft" if backend is Backend.IPTABLES_NFT else "legacy"
    return [f"ip{six}tables-{variant}-restore", "--noflush", "-w"]


def _save(backend: Backend, family: Family, target: Target) -> list[str]:
    six = "6" if family is Family.IPV6 else ""
    if target is Target.ANDROID:
        return [f"ip{six}tables-save", "-c"]
    variant = "nft" if backend is Backend.IPTABLES_NFT else "legacy"
    # No "-t TABLE": naming a table makes legacy x_tables instantiate it in the namespace.
    return [f"ip{six}tables-{variant}-save", "-c"]


def _programs(backend: Backend, target: Target) -> list[str]:
    if backend is Backend.NFT:
        return ["nft"]
    restore = [_restore(backend, f, target)[0] for f in _FAMILIES]
    return restore + [_save(backend, f, target)[0] for f in _FAMILIES]


def _require_programs(host: Host, backend: Backend) -> None:
    for program in _programs(backend, host.target):
        if not host.has(program):
            raise EnvironmentProblem(
                f"backend {backend} needs {program}, which is not installed on {host.describe()}: "
                "install it (Debian package iptables or nftables) or choose another --backend"
            )


def _refused(backend: Backend, exc: CommandFailed, host: Host) -> EnvironmentProblem:
    lines = [line.strip() for line in exc.stderr.splitlines() if line.strip().strip("^~ ")]
    errors = [line.split("Error:", 1)[1].strip() for line in lines if "Error:" in line]
    last = errors[0] if errors else (lines[-1] if lines else f"status {exc.returncode}")
    return EnvironmentProblem(
        f"{backend} on {host.describe()} refused the rules ({last}); the kernel may lack a needed feature "
        "(conntrack mark, owner, multiport, REJECT or NFLOG): the ruleset was left as it was"
    )


def _check_host(host: Host, what: str) -> None:
    if host.target is Target.LINUX:
        require_root(what)
    if isinstance(host, LocalHost) and host.netns and not Path("/run/netns", host.netns).exists():
        raise EnvironmentProblem(
            f"network namespace {host.netns} does not exist: check the name with 'ip netns list'"
        )


# ----------------------------------------------------------------------------------------------
# nftables


def _nft_installed(host: Host) -> bool:
    if not host.has("nft"):
        return False
    return host.run(["nft", "list", "table", "inet", NFT_TABLE], check=False).returncode == 0


def _nft_apply(host: Host, policy: Policy) -> None:
    try:
        host.run(["nft", "-f", "-"], input=nft_text(policy))
    except CommandFailed as exc:
        raise _refused(Backend.NFT, exc, host) from exc


def _nft_remove(host: Host) -> bool:
    was = _nft_installed(host)
    if was:
        host.run(["nft", "-f", "-"], input=nft_remove_text())
    return was


def _nft_counters(host: Host) -> list[Counter]:
    done = host.run(["nft", "-j", "list", "table", "inet", NFT_TABLE])
    return nft_counters(json.loads(done.stdout))


# ----------------------------------------------------------------------------------------------
# iptables


def _read(host: Host, backend: Backend, family: Family) -> dict[str, TableState]:
    text = host.run(_save(backend, family, host.target)).stdout
    return {table: parse_save(text, table) for table in TABLES}


def _nft_family(family: Family) -> str:
    return "ip6" if family is Family.IPV6 else "ip"


def _nft_chains(host: Host, family: Family, table: str) -> dict[str, int] | None:
    """Chains of an nf_tables table with their rule counts, or None when the table does not exist."""
    done = host.run(["nft", "-j", "list", "table", _nft_family(family), table], check=False)
    if done.returncode != 0:
        return None
    chains: dict[str, int] = {}
    for item in json.loads(done.stdout).get("nftables", []):
        if "chain" in item:
            chains.setdefault(str(item["chain"]["name"]), 0)
        elif "rule" in item:
            name = str(item["rule"]["chain"])
            chains[name] = chains.get(name, 0) + 1
    return chains


def _created(host: Host, backend: Backend, family: Family, desired: TableState) -> set[str]:
    """Built-in chains (and ``TABLE``) that writing *desired* with iptables-nft will create."""
    if backend is not Backend.IPTABLES_NFT or not host.has("nft"):
        return set()
    chains = _nft_chains(host, family, desired.table)
    if chains is None:
        return {"TABLE", *desired.jumps}
    return {b for b in desired.jumps if b not in chains}


def _cleanup(host: Host, backend: Backend, family: Family, table: str, markers: set[str]) -> None:
    """Delete built-in chains (and the table) that we created with iptables-nft and that are empty now."""
    if backend is not Backend.IPTABLES_NFT or not markers or not host.has("nft"):
        return
    chains = _nft_chains(host, family, table)
    if chains is None:
        return
    fam = _nft_family(family)
    lines = []
    for name in sorted(markers - {"TABLE"}):
        if chains.get(name) == 0:
            lines.append(f"delete chain {fam} {table} {name}")
            del chains[name]
    if "TABLE" in markers and not chains:
        lines.append(f"delete table {fam} {table}")
    if lines:
        host.run(["nft", "-f", "-"], input="\n".join(lines) + "\n")


def _write(host: Host, backend: Backend, family: Family, current: TableState, desired: TableState) -> None:
    text = transaction(current, desired)
    if text:
        host.run(_restore(backend, family, host.target), input=text)
    _cleanup(host, backend, family, current.table, set(current.markers - desired.markers))


def _ipt_apply(host: Host, backend: Backend, policy: Policy) -> None:
    before = {family: _read(host, backend, family) for family in _FAMILIES}
    done: list[tuple[Family, str]] = []
    try:
        for family in _FAMILIES:
            for table in TABLES:
                current = before[family][table]
                wanted = desired_state(policy, family, table)
                markers: set[str] = set()
                if wanted.chains:
                    markers = set(current.markers) | _created(host, backend, family, wanted)
                wanted = desired_state(policy, family, table, markers=markers)
                _write(host, backend, family, current, wanted)
                done.append((family, table))
    except CommandFailed as exc:
        _rollback(host, backend, before, done)
        raise _refused(backend, exc, host) from exc
    except BaseException:
        _rollback(host, backend, before, done)
        raise


def _rollback(
    host: Host, backend: Backend, before: dict[Family, dict[str, TableState]], done: list[tuple[Family, str]]
) -> None:
    for family, table in reversed(done):
        now = _read(host, backend, family)[table]
        _write(host, backend, family, now, before[family][table])


def _ipt_remove(host: Host, backend: Backend) -> bool:
    found = False
    for family in _FAMILIES:
        for table, current in _read(host, backend, family).items():
            if current.chains or current.jumps:
                found = found or current.installed
                _write(host, backend, family, current, TableState(table=table))
    return found


def _complete(tables: dict[str, TableState]) -> bool:
    """Whether one family holds our tagging and FIN chains, each reached from its built-in chain."""
    mangle = tables["mangle"]
    ours = [c for state in tables.values() for c in state.chains if not c.startswith(MARKER_PREFIX)]
    wanted = {CHAIN_OUT, CHAIN_PRE} <= set(mangle.chains)
    reached = all(
        any(chain == c for _pos, chain in tables[BUILTIN_OF[c][0]].jumps.get(BUILTIN_OF[c][1], ()))
        for c in ours
        if c in BUILTIN_OF
    )
    return wanted and reached


def _ipt_installed(host: Host, backend: Backend) -> bool:
    if not all(host.has(p) for p in _programs(backend, host.target)):
        return False
    return any(
        state.installed for family in _FAMILIES for state in _read(host, backend, family).values()
    )


# ----------------------------------------------------------------------------------------------
# backend choice


def _legacy_in_use(host: Host) -> bool:
    for family in _FAMILIES:
        save = _save(Backend.IPTABLES_LEGACY, family, host.target)
        if host.has(save[0]):
            done = host.run(save, check=False)
            text = done.stdout if done.returncode == 0 else ""
            if any(line.lstrip("[0123456789:] ").startswith("-A ") for line in text.splitlines()):
                return True
    return False


def _installed_in(host: Host) -> list[Backend]:
    found = []
    if _nft_installed(host):
        found.append(Backend.NFT)
    for backend in (Backend.IPTABLES_NFT, Backend.IPTABLES_LEGACY):
        try:
            if _ipt_installed(host, backend):
                found.append(backend)
        except CommandFailed:
            # A front end that cannot even list its tables (kernel without x_tables or nf_tables)
            # holds no rules of ours; it is refused later if it is chosen explicitly.
            continue
    return found


def resolve_backend(host: Host, backend: Backend = Backend.AUTO) -> Backend:
    """The backend to use on *host* (see the module docstring for how ``auto`` decides)."""
    backend = Backend(backend)
    if host.target is Target.ANDROID:
        if backend not in (Backend.AUTO, Backend.IPTABLES_LEGACY):
            raise EnvironmentProblem(
                f"backend {backend} is not available on Android: use --backend iptables-legacy (or auto)"
            )
        backend = Backend.IPTABLES_LEGACY
    if backend is not Backend.AUTO:
        _require_programs(host, backend)
        return backend
    found = _installed_in(host)
    if found:
        return found[0]
    if _legacy_in_use(host):
        return Backend.IPTABLES_LEGACY
    for candidate in (Backend.NFT, Backend.IPTABLES_NFT, Backend.IPTABLES_LEGACY):
        if all(host.has(p) for p in _programs(candidate, host.target)):
            return candidate
    raise EnvironmentProblem(
        f"neither nft nor iptables-restore is installed on {host.describe()}: "
        "install nftables or iptables ('apt-get install nftables')"
    )


# ----------------------------------------------------------------------------------------------
# public API


def _host(netns: str | None, host: Host | None) -> Host:
    return host if host is not None else LocalHost(netns=netns)


def apply(
    policy: Policy, *, backend: Backend = Backend.AUTO, netns: str | None = None, host: Host | None = None
) -> Backend:
    """Put *policy*'s rules in place (replacing any earlier version); return the backend used.

    Atomic: on failure the ruleset is left exactly as it was and the error is raised.
    """
    where = _host(netns, host)
    _check_host(where, "changing netfilter rules")
    policy.check_for(where.target)
    chosen = resolve_backend(where, backend)
    if chosen is Backend.NFT:
        _nft_apply(where, policy)
    else:
        _ipt_apply(where, chosen, policy)
    return chosen


def remove(*, backend: Backend = Backend.AUTO, netns: str | None = None, host: Host | None = None) -> bool:
    """Take our rules out, restoring the ruleset to what it was before :func:`apply`.

    With ``backend=AUTO`` every backend that holds our rules is cleaned. Returns whether any were found.
    """
    where = _host(netns, host)
    _check_host(where, "changing netfilter rules")
    backend = Backend(backend)
    if where.target is Target.ANDROID or backend is not Backend.AUTO:
        backends = [resolve_backend(where, backend)]
    else:
        backends = _installed_in(where)
    found = False
    for chosen in backends:
        removed = _nft_remove(where) if chosen is Backend.NFT else _ipt_remove(where, chosen)
        found = removed or found
    return found


def status(*, backend: Backend = Backend.AUTO, netns: str | None = None, host: Host | None = None) -> Status:
    """Whether our rules are in place and their packet counters."""
    where = _host(netns, host)
    _check_host(where, "reading netfilter rules")
    backend = Backend(backend)
    if where.target is Target.ANDROID or backend is not Backend.AUTO:
        chosen = resolve_backend(where, backend)
        candidates = [chosen]
    else:
        candidates = _installed_in(where)
    for chosen in candidates:
        counters: list[Counter] = []
        complete = True
        if chosen is Backend.NFT:
            if not _nft_installed(where):
                continue
            counters = _nft_counters(where)
        else:
            read = {family: _read(where, chosen, family) for family in _FAMILIES}
            if not any(s.installed for tables in read.values() for s in tables.values()):
                continue
            complete = all(_complete(tables) for tables in read.values())
            counters = [c for tables in read.values() for s in tables.values() for c in roles_of(s)]
        totals = {role.value: 0 for role in RuleRole}
        for counter in counters:
            totals[counter.role.value] += counter.packets
        return Status(backend=chosen, installed=complete, counters=totals, where=where.describe())
    return Status(backend=None, installed=False, where=where.describe())


@contextlib.contextmanager
def installed(
    policy: Policy, *, backend: Backend = Backend.AUTO, netns: str | None = None, host: Host | None = None
) -> Iterator[Backend]:
    """Apply *policy*, yield the backend used, and remove the rules again whatever happens."""
    where = _host(netns, host)
    chosen = apply(policy, backend=backend, netns=netns, host=where)
    try:
        yield chosen
    finally:
        remove(backend=chosen, host=where)
