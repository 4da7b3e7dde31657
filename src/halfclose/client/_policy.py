"""The keep-alive policy: when to retire an idle connection, what the server's idle timeout is, when to retry.

This module is pure: no sockets, no clocks. Callers pass ages in seconds (measured with a monotonic
clock) and get decisions back. Three pieces:

* :class:`KeepAlivePolicy` and :func:`margin`: a connection idle for ``timeout - margin`` seconds or
  more is retired instead of reused, so that the request never meets the server's idle timer.
* :class:`TimeoutLearner`: per origin, the interval in which the server's idle timeout lies, from
  idle reuses that worked (lower bound) and idle ages at which the server had closed (upper bound).
* :func:`retry_reason`: whether a request that failed on a reused connection before any response
  byte arrived may be sent again on a new one (RFC 9110 §9.2.2, and Go's "nothing written" rule).

Rules, in one place:

1. The idle timeout of an origin comes from, in order: the server's ``Keep-Alive: timeout=N``; what
   was learned; the profile; the policy's default. A learned close *earlier* than the header
   claims wins over the header (a middlebox closing first is what was seen on the wire).
2. ``margin = min(max(margin_rtts * RTT, margin_floor), margin_fraction * timeout)``.
3. Learning: a close seen at idle age ``a`` makes ``a`` an upper bound; a reuse that worked at idle
   age ``b`` makes ``b`` a lower bound. An observation that contradicts the other bound (the server
   was reconfigured) clears it. Closes earlier than ``min_learned_timeout`` are not idle timers
   (a request limit, a restart) and are ignored. The learned timeout is the upper bound when the
   kernel timed the close, else the middle of the interval.
4. Retirement timer: a pooled idle connection whose server's timeout is known (header, learned,
   profile: not the default guess) is closed by the client at idle age ``timeout - margin``
   (:meth:`KeepAlivePolicy.retire_after`), without waiting for the next request, so that the
   client's FIN reaches the server before the server's timer fires. The margin is rule 2's:
   the server's timer starts about half an RTT before the client's idle clock (when it finished
   writing the response) and the client's FIN takes another half RTT to arrive, so one RTT, and a
   second for jitter; the floor covers the granularity of the server's timers; the two clocks
   drift apart by parts per million, nothing against either.
5. Retry once, and only on a connection that was reused, only before any response byte: when
   nothing was written, or the method is idempotent, or an ``Idempotency-Key`` header is present
   (and the body can be sent again). Never otherwise.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "IDEMPOTENT_METHODS",
    "IdleTimeout",
    "KeepAlivePolicy",
    "RetryReason",
    "TimeoutBounds",
    "TimeoutLearner",
    "TimeoutSource",
    "choose_timeout",
    "has_idempotency_key",
    "is_idempotent",
    "parse_keep_alive",
    "retry_reason",
]

#: RFC 9110 §9.2.2: the safe methods plus PUT and DELETE.
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

_KEEP_ALIVE_TIMEOUT = re.compile(r"(?:^|[,;\s])timeout\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)


@enum.unique
class TimeoutSource(enum.Enum):
    """Where an origin's idle timeout came from."""

    HEADER = "header"
    LEARNED = "learned"
    PROFILE = "profile"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleTimeout:
    """A server's idle timeout as the guard believes it.

    Attributes:
        seconds: how long the server keeps an idle keep-alive connection open.
        source: where the value came from.
    """

    seconds: float
    source: TimeoutSource


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepAlivePolicy:
    """How early to retire idle connections.

    Attributes:
        default_timeout: the idle timeout assumed for an origin nothing is known about, in seconds,
            or ``None`` to rely on the checks alone. 60 s: the most common of the long server
            defaults (AWS ALB 60 s, nginx 75 s, the CDN of the field report 60 s). A shorter guess
            would stop the guard from ever seeing a longer-lived server close and so from learning
            its timeout; shorter servers are caught by the check before reuse and the retry, and
            are then learned from their first close.
        margin_rtts: RTTs of margin (a request reaches the server one RTT of idle later than the
            client counts; the second covers jitter).
        margin_floor: the least margin in seconds, for timer granularity on both ends (undici
            needed 2 s because its own timers tick once a second; ours are exact, the server's
            are not always).
        margin_fraction: the margin never exceeds this fraction of the timeout, so that a 1 s
            timeout still allows reuse for 0.75 s.
        min_learned_timeout: closes at a smaller idle age are not taken as the idle timer.
        retire_idle: close pooled idle connections at :meth:`retire_after` (rule 4 of the
            module docstring); False leaves them to the check before reuse.

    Example:
        >>> p = KeepAlivePolicy()
        >>> p.margin(60.0, rtt=0.05), p.margin(2.0, rtt=None)
        (1.0, 0.5)
        >>> p.should_retire(idle=59.2, timeout=60.0, rtt=0.05)
        True
        >>> p.retire_after(IdleTimeout(seconds=2.0, source=TimeoutSource.HEADER), rtt=0.05)
        1.5
    """

    default_timeout: float | None = 60.0
    margin_rtts: float = 2.0
    margin_floor: float = 1.0
    margin_fraction: float = 0.25
    min_learned_timeout: float = 0.5
    retire_idle: bool = True

    def __post_init__(self) -> None:
        for name in ("margin_rtts", "margin_floor", "margin_fraction", "min_learned_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"KeepAlivePolicy.{name} must not be negative")
        if self.margin_fraction >= 1:
            raise ValueError("KeepAlivePolicy.margin_fraction must be below 1")
        if self.default_timeout is not None and self.default_timeout <= 0:
            raise ValueError("KeepAlivePolicy.default_timeout must be positive or None")

    def margin(self, timeout: float, *, rtt: float | None) -> float:
        """Seconds before *timeout* at which an idle connection is retired."""
        wanted = max(self.margin_rtts * (rtt or 0.0), self.margin_floor)
        return min(wanted, self.margin_fraction * timeout)

    def should_retire(self, *, idle: float, timeout: float, rtt: float | None) -> bool:
        """True when a connection idle for *idle* seconds is too close to the server's *timeout*."""
        return idle >= timeout - self.margin(timeout, rtt=rtt)

    def retire_after(self, timeout: IdleTimeout | None, *, rtt: float | None) -> float | None:
        """The idle age at which a pooled connection is closed without waiting for the next request,
        or None for no timer (*timeout* unknown or only the default guess; ``retire_idle`` off).

        It is the age from which :meth:`should_retire` refuses reuse: the timer closes a
        connection when it stops being worth reusing.
        """
        if not self.retire_idle or timeout is None or timeout.source is TimeoutSource.DEFAULT:
            return None
        return timeout.seconds - self.margin(timeout.seconds, rtt=rtt)


def parse_keep_alive(value: str | None) -> float | None:
    """The ``timeout`` parameter of a ``Keep-Alive`` response header, in seconds, or None.

    Example:
        >>> parse_keep_alive("timeout=5, max=100")
        5.0
        >>> parse_keep_alive("max=100") is None
        True
    """
    if not value:
        return None
    match = _KEEP_ALIVE_TIMEOUT.search(value)
    if match is None:
        return None
    seconds = float(match.group(1))
    return seconds if seconds > 0 else None


def is_idempotent(method: str) -> bool:
    """True for the methods RFC 9110 §9.2.2 defines as idempotent."""
    return method.upper() in IDEMPOTENT_METHODS


def has_idempotency_key(headers: Mapping[str, str] | None) -> bool:
    """True when *headers* carry ``Idempotency-Key`` (or ``X-Idempotency-Key``, as Go accepts)."""
    if not headers:
        return False
    return any(k.lower() in ("idempotency-key", "x-idempotency-key") for k in headers)


@enum.unique
class RetryReason(enum.Enum):
    """Why a request that failed on a reused connection was sent again."""

    #: Not one byte of the request reached the socket: any method may be sent again.
    NOTHING_WRITTEN = "nothing-written"
    #: The method is idempotent (RFC 9110 §9.2.2).
    IDEMPOTENT_METHOD = "idempotent-method"
    #: The request carries an ``Idempotency-Key`` header.
    IDEMPOTENCY_KEY = "idempotency-key"


def retry_reason(
    *,
    method: str,
    idempotency_key: bool,
    bytes_written: int,
    reused: bool,
    response_started: bool,
    replayable: bool,
) -> RetryReason | None:
    """Whether a failed request may be sent once more on a new connection, and why.

    Args:
        method: the request method.
        idempotency_key: the request has an ``Idempotency-Key`` header.
        bytes_written: bytes of this request that reached the socket before the failure.
        reused: the request went out on a connection that had carried an earlier exchange.
        response_started: at least one byte of the response had arrived.
        replayable: the body can be produced again (none, bytes, or a rewindable file).

    Returns:
        The reason to retry, or None: then the original error must reach the caller.

    Example:
        >>> retry_reason(method="POST", idempotency_key=False, bytes_written=120, reused=True,
        ...              response_started=False, replayable=True) is None
        True
        >>> retry_reason(method="GET", idempotency_key=False, bytes_written=80, reused=True,
        ...              response_started=False, replayable=True)
        <RetryReason.IDEMPOTENT_METHOD: 'idempotent-method'>
    """
    if not reused or response_started:
        return None
    if bytes_written == 0:
        return RetryReason.NOTHING_WRITTEN
    if not replayable:
        return None
    if is_idempotent(method):
        return RetryReason.IDEMPOTENT_METHOD
    if idempotency_key:
        return RetryReason.IDEMPOTENCY_KEY
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutBounds:
    """What is known about one origin's idle timeout.

    Attributes:
        lower: the longest idle age at which a reuse worked (the timeout is longer), or None.
        upper: the shortest idle age at which the server had closed (the timeout is at most this),
            or None.
        exact: *upper* is the moment the server closed (the kernel timed the FIN), not only an
            idle age by which it had closed.
    """

    lower: float | None = None
    upper: float | None = None
    exact: bool = False

    def estimate(self) -> float | None:
        """The timeout to act on: *upper* when exact; otherwise the middle of the interval.

        An inexact upper bound (a request that met the close) may lie far above the real timeout;
        acting on the middle retires connections earlier, and every reuse that works there raises
        the lower bound, so the interval closes in from both sides.

        Example:
            >>> TimeoutBounds(lower=3.0, upper=5.0).estimate()
            4.0
            >>> TimeoutBounds(lower=3.0, upper=5.0, exact=True).estimate()
            5.0
        """
        if self.upper is None:
            return None
        if self.exact or self.lower is None:
            return self.upper
        middle = (self.lower + self.upper) / 2
        return middle if middle > self.lower else self.upper  # bounds a float apart: no middle


@dataclass(kw_only=True)
class TimeoutLearner:
    """Per-origin bounds on the server's idle timeout, learned from what connections went through.

    Thread-safe. The estimate of an origin's timeout is :meth:`TimeoutBounds.estimate`.

    Example:
        >>> learner = TimeoutLearner()
        >>> learner.record_reuse_ok("http://a:80", idle=3.0)
        >>> learner.record_closed("http://a:80", age=5.02, exact=True)
        True
        >>> learner.bounds("http://a:80")
        TimeoutBounds(lower=3.0, upper=5.02, exact=True)
        >>> learner.estimate("http://a:80")
        5.02
    """

    min_timeout: float = 0.5
    #: Called (with the lock held) whenever :attr:`version` goes up.
    on_change: Callable[[], None] | None = field(default=None, repr=False)
    #: Goes up whenever any origin's bounds change (callers cache what they derive from them).
    version: int = field(default=0, init=False)
    _bounds: dict[str, TimeoutBounds] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_reuse_ok(self, origin: str, *, idle: float) -> None:
        """A connection idle for *idle* seconds carried a request and its response."""
        b = self._bounds.get(origin)  # read once: nothing new (the common case) takes no lock
        if b is not None and b.lower is not None and idle <= b.lower and (b.upper is None or idle < b.upper):
            return
        with self._lock:
            b = self._bounds.get(origin) or TimeoutBounds()
            keep = b.upper is None or idle < b.upper
            if keep and b.lower is not None and idle <= b.lower:
                return  # nothing new
            lower = idle if b.lower is None else max(b.lower, idle)
            self._bounds[origin] = TimeoutBounds(
                lower=lower, upper=b.upper if keep else None, exact=b.exact and keep
            )
            self._changed()

    def record_closed(self, origin: str, *, age: float, exact: bool = False) -> bool:
        """The server had closed a connection by idle age *age* (*exact*: at that age).

        Returns whether it was learned (closes earlier than ``min_timeout`` are not).
        """
        if age < self.min_timeout:
            return False
        with self._lock:
            b = self._bounds.get(origin, TimeoutBounds())
            lower = b.lower if b.lower is None or age > b.lower else None
            if b.upper is None or age < b.upper:
                upper, is_exact = age, exact
            else:
                upper, is_exact = b.upper, b.exact or (exact and age == b.upper)
            self._bounds[origin] = TimeoutBounds(lower=lower, upper=upper, exact=is_exact)
            self._changed()
        return True

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def bounds(self, origin: str) -> TimeoutBounds:
        """What is known about *origin* (empty bounds when nothing is)."""
        with self._lock:
            return self._bounds.get(origin, TimeoutBounds())

    def estimate(self, origin: str) -> float | None:
        """The learned idle timeout of *origin*, or None before any close was seen."""
        return self.bounds(origin).estimate()

    def forget(self, origin: str | None = None) -> None:
        """Drop what was learned about *origin* (or about every origin)."""
        with self._lock:
            if origin is None:
                self._bounds.clear()
            else:
                self._bounds.pop(origin, None)
            self._changed()


def choose_timeout(
    *,
    header: float | None,
    learned: float | None,
    profile: float | None,
    default: float | None,
) -> IdleTimeout | None:
    """Pick an origin's idle timeout by the order of rule 1 in the module docstring.

    Example:
        >>> choose_timeout(header=None, learned=4.9, profile=60.0, default=60.0)
        IdleTimeout(seconds=4.9, source=<TimeoutSource.LEARNED: 'learned'>)
    """
    if header is not None:
        if learned is not None and learned < header:
            return IdleTimeout(seconds=learned, source=TimeoutSource.LEARNED)
        return IdleTimeout(seconds=header, source=TimeoutSource.HEADER)
    if learned is not None:
        return IdleTimeout(seconds=learned, source=TimeoutSource.LEARNED)
    if profile is not None:
        return IdleTimeout(seconds=profile, source=TimeoutSource.PROFILE)
    if default is not None:
        return IdleTimeout(seconds=default, source=TimeoutSource.DEFAULT)
    return None
