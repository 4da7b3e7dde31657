"""What the fix should do: the app's uids, the server ports, the strategy and the mark bits.

A :class:`Policy` is a plain value, validated when it is built, so that everything rendered from
it (and everything that reaches ``nft``, ``iptables-restore`` or a remote shell) is known good.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from halfclose.errors import UsageError

__all__ = [
    "ANDROID_RESERVED_CTMARK",
    "DEFAULT_FIN_MASK",
    "DEFAULT_NFLOG_GROUP",
    "DEFAULT_PORTS",
    "DEFAULT_TAG_MASK",
    "MAX_PORTS",
    "RESERVED_NFLOG_GROUPS",
    "Backend",
    "Family",
    "Policy",
    "Strategy",
    "Target",
]

DEFAULT_PORTS: tuple[int, ...] = (80, 443)
#: Connection-mark bit: "opened by one of the app's uids".
DEFAULT_TAG_MASK = 0x04000000
#: Connection-mark bit: "the server's FIN has been seen" (alone, without the tag: "closed by the client").
DEFAULT_FIN_MASK = 0x08000000
DEFAULT_NFLOG_GROUP = 42
#: NFLOG groups Android's netd listens on (strict mode, quota, strict, wake-up).
RESERVED_NFLOG_GROUPS = range(4)
#: Connection-mark bits netd's StrictController uses (STRICT_RESOLVED_ACCEPT / _REJECT).
ANDROID_RESERVED_CTMARK = 0x03000000
#: iptables' multiport match takes at most 15 ports.
MAX_PORTS = 15
_MAX_UID = 2**32 - 2  # (uid_t)-1 means "no uid"


@enum.unique
class Strategy(enum.StrEnum):
    """How the app's socket is told that the server has closed."""

    #: Reset the socket locally: reject the app's next segment on the connection with a TCP RST.
    REJECT = "reject"
    #: Only log the server's FIN to an NFLOG group; a sock_diag reaper destroys the socket.
    NFLOG = "nflog"


@enum.unique
class Backend(enum.StrEnum):
    """Which netfilter front end holds the rules."""

    AUTO = "auto"
    #: Native nftables: one table ``inet halfclose``, applied with ``nft -f``.
    NFT = "nft"
    #: iptables over nf_tables (``iptables-nft-restore``), our own chains.
    IPTABLES_NFT = "iptables-nft"
    #: Classic x_tables (``iptables-legacy-restore``), our own chains.
    IPTABLES_LEGACY = "iptables-legacy"


@enum.unique
class Target(enum.StrEnum):
    """Where the rules go: this Linux host (or one of its namespaces), or an Android device over adb."""

    LINUX = "linux"
    ANDROID = "android"


@enum.unique
class Family(enum.StrEnum):
    """IP version, for the iptables front ends that keep them apart."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """The fix for one app.

    Attributes:
        uids: the app's uids (the kernel's socket owner); at least one.
        ports: the servers' TCP ports (1-65535), at most :data:`MAX_PORTS`.
        strategy: :class:`Strategy.REJECT` (default) or :class:`Strategy.NFLOG`.
        tag_mask: connection-mark bits meaning "the app's connection" (default 0x04000000).
        fin_mask: connection-mark bits meaning "the server's FIN was seen" (default 0x08000000).
        nflog_group: NFLOG group for :class:`Strategy.NFLOG` (1-65535 minus netd's 0-3; default 42).

    Only the masked connection-mark bits are ever read or written; the packet mark never is.
    """

    uids: tuple[int, ...]
    ports: tuple[int, ...] = DEFAULT_PORTS
    strategy: Strategy = Strategy.REJECT
    tag_mask: int = DEFAULT_TAG_MASK
    fin_mask: int = DEFAULT_FIN_MASK
    nflog_group: int = DEFAULT_NFLOG_GROUP

    def __post_init__(self) -> None:
        uids = tuple(dict.fromkeys(self.uids))
        ports = tuple(sorted(set(self.ports)))
        object.__setattr__(self, "uids", uids)
        object.__setattr__(self, "ports", ports)
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        if not uids:
            raise UsageError("no app uid given: name at least one with --uid")
        for uid in uids:
            if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= _MAX_UID:
                raise UsageError(f"uid {uid!r} is not a number from 0 to {_MAX_UID}: give the app's uid")
        if not ports:
            raise UsageError("no server port given: name at least one with --port")
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise UsageError(f"port {port!r} is not a TCP port from 1 to 65535")
        if len(ports) > MAX_PORTS:
            raise UsageError(f"{len(ports)} ports given: at most {MAX_PORTS} (iptables' multiport limit)")
        for name in ("tag_mask", "fin_mask"):
            mask = getattr(self, name)
            if isinstance(mask, bool) or not isinstance(mask, int) or not 0 < mask <= 0xFFFFFFFF:
                raise UsageError(f"{name.replace('_', '-')} {mask!r} is not a non-zero 32-bit mask")
        if self.tag_mask & self.fin_mask:
            raise UsageError(
                f"tag mask {self.tag_mask:#010x} and fin mask {self.fin_mask:#010x} overlap: "
                "choose two separate connection-mark bits"
            )
        group = self.nflog_group
        if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group <= 65535:
            raise UsageError(f"nflog group {group!r} is not a number from 4 to 65535")
        if group in RESERVED_NFLOG_GROUPS:
            raise UsageError(f"nflog group {group} is one of Android netd's groups 0-3: choose another (42)")

    @property
    def both_masks(self) -> int:
        """The tag and FIN bits together: the only connection-mark bits the rules touch."""
        return self.tag_mask | self.fin_mask

    def check_for(self, target: Target) -> None:
        """Raise if the policy is unsafe on *target* (on Android: netd's connection-mark bits)."""
        if target is Target.ANDROID and self.both_masks & ANDROID_RESERVED_CTMARK:
            raise UsageError(
                f"mark bits {self.both_masks:#010x} overlap netd's connection-mark bits "
                f"{ANDROID_RESERVED_CTMARK:#010x}: choose others (default 0x04000000 and 0x08000000)"
            )
