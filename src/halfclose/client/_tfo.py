"""TCP Fast Open for new connections: when to ask for it, and what a connection says about the path.

Pure rules (no sockets); the integrations set ``TCP_FASTOPEN_CONNECT`` on a socket before
``connect()`` when :meth:`FastOpen.allowed` says so, and report the connection's ``TCP_INFO`` after
its first exchange to :meth:`FastOpen.record`.

Rules, in one place:

1. Only where the kernel's client bit is set (``net.ipv4.tcp_fastopen & 1``, the default), and
   only for what is safe to replay, since the network may duplicate SYN data (RFC 7413 §6): a
   request with an idempotent method or an ``Idempotency-Key``, or a TLS ClientHello (the request
   itself then travels after the handshake).
2. The kernel falls back by itself: without a cookie the SYN asks for one and the handshake is
   normal; a SYN whose data is lost is retransmitted without data.
3. Per destination (address, port), a path where SYN data failed (the data was not acknowledged,
   or the SYN was retransmitted: a middlebox drops or strips SYN data) is not tried again for
   ``retry_after`` seconds, so such a path costs one retransmitted SYN at most once per period.
   A missing cookie is not a failure (the next connection carries it).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TCP_FASTOPEN_CONNECT", "FastOpen", "FastOpenResult", "kernel_allows_client"]

#: ``TCP_FASTOPEN_CONNECT`` (include/uapi/linux/tcp.h, Linux >= 4.11; Python has no constant).
TCP_FASTOPEN_CONNECT = 30

_SYSCTL = Path("/proc/sys/net/ipv4/tcp_fastopen")


def kernel_allows_client(sysctl: Path = _SYSCTL) -> bool:
    """Whether this network namespace lets clients send SYN data (bit 0x1 of the sysctl)."""
    try:
        return bool(int(sysctl.read_text().split()[0], 0) & 1)
    except (OSError, ValueError, IndexError):
        return False


@enum.unique
class FastOpenResult(enum.Enum):
    """What a connection opened with Fast Open did with its SYN."""

    #: The server acknowledged the data in the SYN (``TCPI_OPT_SYN_DATA``).
    SYN_DATA = "syn-data"
    #: No cookie yet: the SYN asked for one (normal on the first connection to a server).
    NO_COOKIE = "no-cookie"
    #: The SYN carried data the server did not acknowledge.
    DATA_NOT_ACKED = "data-not-acked"
    #: The SYN was retransmitted (without data): the path dropped it.
    SYN_RETRANSMITTED = "syn-retransmitted"
    #: Nothing to tell (an old kernel, or the connection did not use Fast Open).
    UNKNOWN = "unknown"

    def is_failure(self) -> bool:
        """True when the path should not be tried with SYN data again for a while."""
        return self in (FastOpenResult.DATA_NOT_ACKED, FastOpenResult.SYN_RETRANSMITTED)

    @classmethod
    def from_tcp_info(cls, options: int | None, client_fail: int | None) -> FastOpenResult:
        """From ``tcpi_options`` and ``tcpi_fastopen_client_fail`` (Linux >= 5.5).

        Example:
            >>> FastOpenResult.from_tcp_info(0x20, 0), FastOpenResult.from_tcp_info(0, 3)
            (<FastOpenResult.SYN_DATA: 'syn-data'>, <FastOpenResult.SYN_RETRANSMITTED: 'syn-retransmitted'>)
        """
        if options is not None and options & 0x20:  # TCPI_OPT_SYN_DATA
            return cls.SYN_DATA
        return {1: cls.NO_COOKIE, 2: cls.DATA_NOT_ACKED, 3: cls.SYN_RETRANSMITTED}.get(client_fail or 0, cls.UNKNOWN)


@dataclass(kw_only=True)
class FastOpen:
    """Whether to open a connection with Fast Open, and the paths where it failed.

    Attributes:
        enabled: False turns Fast Open off.
        retry_after: seconds a failed destination goes without Fast Open.
        kernel: whether the kernel allows it (read once from the sysctl by default).
        clock: a monotonic clock.

    Example:
        >>> fo = FastOpen(kernel=True, clock=lambda: 0.0)
        >>> fo.allowed(("198.18.0.1", 80), replay_safe=True), fo.allowed(("198.18.0.1", 80), replay_safe=False)
        (True, False)
        >>> fo.record(("198.18.0.1", 80), FastOpenResult.SYN_RETRANSMITTED)
        >>> fo.allowed(("198.18.0.1", 80), replay_safe=True)
        False
    """

    enabled: bool = True
    retry_after: float = 600.0
    kernel: bool | None = None
    clock: Callable[[], float] | None = None
    _failed: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.kernel is None:
            self.kernel = kernel_allows_client()
        if self.clock is None:
            import time

            self.clock = time.monotonic

    def allowed(self, destination: tuple[str, int], *, replay_safe: bool) -> bool:
        """Whether a new connection to *destination* for something *replay_safe* may use Fast Open."""
        if not (self.enabled and self.kernel and replay_safe):
            return False
        assert self.clock is not None
        with self._lock:
            since = self._failed.get(destination)
            if since is not None and self.clock() - since < self.retry_after:
                return False
            self._failed.pop(destination, None)
        return True

    def record(self, destination: tuple[str, int], result: FastOpenResult) -> None:
        """What a Fast Open connection to *destination* did; failures are remembered."""
        if result.is_failure():
            assert self.clock is not None
            with self._lock:
                self._failed[destination] = self.clock()

    def failed(self) -> list[tuple[str, int]]:
        """Destinations now going without Fast Open."""
        with self._lock:
            return sorted(self._failed)
