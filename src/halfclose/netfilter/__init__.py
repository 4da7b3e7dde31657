"""The netfilter fix: reset the app's socket as soon as the server half-closes an idle connection.

Three steps, only in the connection mark (masked bits; the packet mark, which Android's netd owns, is
never read or written):

1. OUTPUT, by socket owner: a connection the app opens to a server port is tagged (``tag_mask``).
   Owner matches only work on OUTPUT on mainline kernels, so this is the only place the uid is used.
2. PREROUTING, by the tag: the server's FIN on a tagged connection sets ``fin_mask``.
3. OUTPUT, by both bits: the app's next non-SYN, non-RST, non-FIN segment on that connection (usually
   the kernel's delayed ACK of the FIN, or the next request) is rejected with a TCP reset, so the socket
   is reset locally and the next write fails at once (:class:`Strategy.REJECT`); or the FIN is sent to an
   NFLOG group for a sock_diag reaper (:class:`Strategy.NFLOG`).

A connection the client closes itself (its own FIN first, or its FIN while the server's is in flight)
switches to "fin bit without tag": never flagged, never rejected, so its FIN and final ACKs go out.

Library use::

    from halfclose.netfilter import Policy, Strategy, Backend, installed
    policy = Policy(uids=(10400,), ports=(80,), strategy=Strategy.REJECT)
    with installed(policy, backend=Backend.AUTO, netns="hc-1234-phone"):
        ...
"""

from __future__ import annotations

from halfclose.netfilter.install import (
    Host,
    LocalHost,
    Status,
    apply,
    installed,
    remove,
    resolve_backend,
    status,
)
from halfclose.netfilter.policy import Backend, Family, Policy, Strategy, Target
from halfclose.netfilter.render import nft_text, transaction

__all__ = [
    "Backend",
    "Family",
    "Host",
    "LocalHost",
    "Policy",
    "Status",
    "Strategy",
    "Target",
    "apply",
    "installed",
    "remove",
    "render",
    "resolve_backend",
    "status",
]


def render(policy: Policy, *, backend: Backend = Backend.NFT, target: Target = Target.LINUX) -> str:
    """The exact rule text :func:`apply` writes for *policy* on a ruleset without our rules.

    For nftables: the ``nft -f`` input. For iptables: the ``iptables-restore --noflush`` input for IPv4
    and then for IPv6, each headed by a comment line naming the program. (On a ruleset that already holds
    our rules, ``apply`` first deletes the old jumps in the same transaction.)
    """
    from halfclose.netfilter.render import TableState, desired_state

    policy.check_for(target)
    backend = Backend(backend)
    if target is Target.ANDROID:
        backend = Backend.IPTABLES_LEGACY
    if backend in (Backend.NFT, Backend.AUTO):
        return nft_text(policy)
    parts = []
    for family in (Family.IPV4, Family.IPV6):
        six = "6" if family is Family.IPV6 else ""
        variant = "" if target is Target.ANDROID else "-" + backend.split("-")[1]
        program = f"ip{six}tables{variant}-restore"
        parts.append(f"# {program} --noflush -w")
        for table in ("mangle", "filter"):
            text = transaction(TableState(table=table), desired_state(policy, family, table))
            if text:
                parts.append(text.rstrip("\n"))
    return "\n".join(parts) + "\n"
