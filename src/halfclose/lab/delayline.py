"""The delay line: when each frame crossing the emulated link leaves it (no I/O here).

A link joins two sides, ``a`` (the phone's side) and ``b`` (the server's side). A
:class:`LinkProfile` says how long the link makes a round trip take, how much that varies and
how many frames it loses; a :class:`DelayLine` takes frames with their arrival times and hands
them back when they are due. The adapter in :mod:`halfclose.lab.delay` feeds it frames read from
AF_PACKET sockets and sends what it hands back; tests feed it synthetic times.

Rules of the schedule (all times are integer nanoseconds on one monotonic clock):

* The round trip is split between the directions: ``a -> b`` takes ``rtt_ns // 2`` and
  ``b -> a`` takes the rest, so the two add up to ``rtt_ns`` exactly.
* Jitter ``J`` moves each frame's one-way delay by a whole number of nanoseconds drawn uniformly
  from ``[-J // 2, J - J // 2]``, so a round trip lies within ``rtt_ns ± J``. ``J`` may not exceed
  the round trip, so no delay is negative.
* Order: with no jitter every frame in a direction waits exactly as long, so frames leave in the
  order they arrived. With jitter, by default a frame still never leaves before one that arrived
  earlier in the same direction (its due time is raised to that frame's), as on a cellular link
  whose radio layer delivers in order; under load this pushes delays towards the upper end of the
  jitter range. With ``reorder=True`` each frame keeps its own drawn delay, so a later frame can
  overtake an earlier one (what netem does with jitter) and TCP sees reordering.
* Loss is decided per direction, frame by frame, from a generator seeded with the profile's
  seed and the direction: the n-th frame in a direction is lost or not whatever the other
  direction carries and whatever the timing, so a run with the same seed and the same frames
  loses the same frames. Loss and jitter draw from separate generators, so changing one does not
  change the other's choices.
* A direction holds at most ``limit`` frames; a frame arriving at a full direction is dropped
  and counted as an overflow (netem's ``limit`` does the same).
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from halfclose.errors import UsageError

__all__ = [
    "MAX_RTT_NS",
    "PPM",
    "DelayCounters",
    "DelayLine",
    "Departure",
    "Direction",
    "DirectionCounters",
    "LinkProfile",
    "schedule",
]

#: The longest round trip the lab emulates (1 s).
MAX_RTT_NS = 1_000_000_000
#: Loss is counted in parts per million of frames.
PPM = 1_000_000
_NS_PER_MS = 1_000_000
_DEFAULT_LIMIT = 10_000


@enum.unique
class Direction(enum.IntEnum):
    """Which way a frame crosses the link."""

    A_TO_B = 0
    B_TO_A = 1

    @property
    def label(self) -> str:
        """``a_to_b`` or ``b_to_a``, as used in counters and JSON."""
        return self.name.lower()


def _check_ms(name: str, value: float, *, low: float, high: float, unit: str = "ms") -> None:
    if not math.isfinite(value) or not low <= value <= high:
        raise UsageError(f"{name} must be between {low:g} and {high:g} {unit}, not {value:g}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkProfile:
    """How the emulated link treats frames.

    Attributes:
        rtt_ns: round trip the link adds, 0 to :data:`MAX_RTT_NS`; split evenly between the
            directions (``a -> b`` gets ``rtt_ns // 2``).
        jitter_ns: width of the uniform spread of each one-way delay, 0 to ``rtt_ns``.
        loss_ppm: frames lost per million in each direction, 0 to :data:`PPM`.
        seed: seed of the loss and jitter generators, 0 to 2**63 - 1; the same seed and the
            same frames give the same schedule.
        reorder: let jitter reorder frames within a direction (see the module docstring).
        limit: most frames held per direction before arrivals are dropped (at least 1).

    Raises:
        UsageError: a value is out of range.
    """

    rtt_ns: int
    jitter_ns: int = 0
    loss_ppm: int = 0
    seed: int = 0
    reorder: bool = False
    limit: int = _DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if not 0 <= self.rtt_ns <= MAX_RTT_NS:
            raise UsageError(f"RTT must be between 0 and {MAX_RTT_NS // _NS_PER_MS} ms, "
                             f"not {self.rtt_ns / _NS_PER_MS:g} ms")
        if not 0 <= self.jitter_ns <= self.rtt_ns:
            raise UsageError(f"jitter must be between 0 and the RTT ({self.rtt_ns / _NS_PER_MS:g} ms), "
                             f"not {self.jitter_ns / _NS_PER_MS:g} ms")
        if not 0 <= self.loss_ppm <= PPM:
            raise UsageError(f"loss must be between 0 and 100 %, not {self.loss_ppm / 10_000:g} %")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"seed must be between 0 and {2**63 - 1}, not {self.seed}")
        if self.limit < 1:
            raise UsageError(f"queue limit must be at least 1 frame, not {self.limit}")

    @classmethod
    def from_ms(
        cls,
        *,
        rtt_ms: float,
        jitter_ms: float = 0.0,
        loss_pct: float = 0.0,
        seed: int = 0,
        reorder: bool = False,
        limit: int = _DEFAULT_LIMIT,
    ) -> LinkProfile:
        """Build a profile from the units people type: milliseconds and percent.

        Raises:
            UsageError: a value is out of range or not a finite number.
        """
        _check_ms("RTT", rtt_ms, low=0, high=MAX_RTT_NS / _NS_PER_MS)
        _check_ms("jitter", jitter_ms, low=0, high=rtt_ms)
        _check_ms("loss", loss_pct, low=0, high=100, unit="%")
        return cls(
            rtt_ns=round(rtt_ms * _NS_PER_MS),
            jitter_ns=round(jitter_ms * _NS_PER_MS),
            loss_ppm=round(loss_pct * 10_000),
            seed=seed,
            reorder=reorder,
            limit=limit,
        )

    @property
    def is_transparent(self) -> bool:
        """True when the link adds nothing: no delay, no jitter, no loss (a bridge will do)."""
        return self.rtt_ns == 0 and self.jitter_ns == 0 and self.loss_ppm == 0

    def one_way_ns(self, direction: Direction) -> int:
        """The base delay of *direction* (before jitter)."""
        half = self.rtt_ns // 2
        return half if direction is Direction.A_TO_B else self.rtt_ns - half

    @property
    def loss_pct(self) -> float:
        """Loss in percent."""
        return self.loss_ppm / 10_000

    def describe(self) -> str:
        """One line for logs: ``rtt=50ms jitter=0ms loss=0% seed=0``."""
        text = (f"rtt={self.rtt_ns / _NS_PER_MS:g}ms jitter={self.jitter_ns / _NS_PER_MS:g}ms "
                f"loss={self.loss_pct:g}% seed={self.seed}")
        return text + (" reorder" if self.reorder else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Departure:
    """A frame the line hands back because it is due.

    Attributes:
        direction: which way it crosses.
        arrival_ns: when it reached the line.
        due_ns: when it was scheduled to leave (the adapter sends it at or just after this).
        frame: the frame's bytes, untouched.
    """

    direction: Direction
    arrival_ns: int
    due_ns: int
    frame: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectionCounters:
    """What happened to the frames of one direction.

    Attributes:
        received: frames offered to the line.
        lost: frames dropped by the loss rule.
        overflow: frames dropped because the direction held ``limit`` frames already.
        released: frames handed back as due.
        send_errors: released frames the adapter failed to send (0 in the pure core).
        pending: frames still held when the counters were taken.
    """

    received: int = 0
    lost: int = 0
    overflow: int = 0
    released: int = 0
    send_errors: int = 0
    pending: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DelayCounters:
    """Counters of both directions."""

    a_to_b: DirectionCounters
    b_to_a: DirectionCounters

    def to_dict(self) -> dict[str, dict[str, int]]:
        """Plain data for JSON: ``{"a_to_b": {...}, "b_to_a": {...}}``."""
        out: dict[str, dict[str, int]] = {}
        for name in ("a_to_b", "b_to_a"):
            c: DirectionCounters = getattr(self, name)
            out[name] = {f: getattr(c, f) for f in DirectionCounters.__dataclass_fields__}
        return out

    @classmethod
    def from_dict(cls, body: object) -> DelayCounters:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: *body* is not what :meth:`to_dict` makes.
        """
        if not isinstance(body, dict):
            raise ValueError("counters are not an object")
        parts: dict[str, DirectionCounters] = {}
        for name in ("a_to_b", "b_to_a"):
            raw = body.get(name)
            if not isinstance(raw, dict) or not all(isinstance(v, int) for v in raw.values()):
                raise ValueError(f"counters lack {name}")
            known = {k: v for k, v in raw.items() if k in DirectionCounters.__dataclass_fields__}
            parts[name] = DirectionCounters(**known)
        return cls(a_to_b=parts["a_to_b"], b_to_a=parts["b_to_a"])


@dataclass(slots=True)
class _Side:
    loss_rng: random.Random
    jitter_rng: random.Random
    last_due_ns: int = -(2**63)
    queued: int = 0
    received: int = 0
    lost: int = 0
    overflow: int = 0
    released: int = 0


@dataclass(slots=True)
class DelayLine:
    """Frames in flight on the emulated link, ordered by when they are due.

    Feed it with :meth:`offer`; ask :meth:`next_due_ns` how long to sleep; collect due frames
    with :meth:`pop_due`. Not thread-safe; one adapter loop owns it.
    """

    profile: LinkProfile
    _sides: tuple[_Side, _Side] = field(init=False)
    _heap: list[tuple[int, int, Direction, int, bytes]] = field(init=False, default_factory=list)
    _seq: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        seed = self.profile.seed
        self._sides = tuple(  # type: ignore[assignment]
            _Side(
                loss_rng=random.Random(f"halfclose-delay-loss:{seed}:{d.label}"),
                jitter_rng=random.Random(f"halfclose-delay-jitter:{seed}:{d.label}"),
            )
            for d in Direction
        )

    def offer(self, *, direction: Direction, arrival_ns: int, frame: bytes) -> int | None:
        """Take a frame that arrived at *arrival_ns*; return when it is due, or None if dropped."""
        p = self.profile
        side = self._sides[direction]
        side.received += 1
        # Draw the loss decision before anything else, so the n-th frame's fate depends only on
        # the seed, the direction and n.
        if p.loss_ppm and side.loss_rng.randrange(PPM) < p.loss_ppm:
            side.lost += 1
            return None
        if side.queued >= p.limit:
            side.overflow += 1
            return None
        due = arrival_ns + p.one_way_ns(direction)
        if p.jitter_ns:
            due += side.jitter_rng.randint(0, p.jitter_ns) - p.jitter_ns // 2
        if not p.reorder:
            due = max(due, side.last_due_ns)
        side.last_due_ns = max(side.last_due_ns, due)
        side.queued += 1
        # The sequence number breaks ties: equal due times leave in arrival order.
        heapq.heappush(self._heap, (due, self._seq, direction, arrival_ns, frame))
        self._seq += 1
        return due

    def next_due_ns(self) -> int | None:
        """When the earliest held frame is due, or None when the line is empty."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ns: int) -> list[Departure]:
        """Remove and return every frame due at or before *now_ns*, earliest first."""
        out: list[Departure] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            due, _, direction, arrival, frame = heapq.heappop(heap)
            side = self._sides[direction]
            side.queued -= 1
            side.released += 1
            out.append(Departure(direction=direction, arrival_ns=arrival, due_ns=due, frame=frame))
        return out

    def __len__(self) -> int:
        return len(self._heap)

    def counters(self, *, send_errors: Sequence[int] = (0, 0)) -> DelayCounters:
        """A snapshot of the counters; *send_errors* per direction comes from the adapter."""
        parts = [
            DirectionCounters(
                received=s.received,
                lost=s.lost,
                overflow=s.overflow,
                released=s.released,
                send_errors=send_errors[d],
                pending=s.queued,
            )
            for d, s in zip(Direction, self._sides, strict=True)
        ]
        return DelayCounters(a_to_b=parts[0], b_to_a=parts[1])


def schedule(profile: LinkProfile, arrivals: Iterable[tuple[Direction, int]]) -> list[int | None]:
    """Due times of frames arriving at the given times (None for a dropped frame).

    *arrivals* must be in time order. Frames that are due before a later arrival leave the line
    first, as they would in the adapter, so the queue limit applies as it does on the wire.
    """
    line = DelayLine(profile)
    out: list[int | None] = []
    for direction, at in arrivals:
        line.pop_due(at)
        out.append(line.offer(direction=direction, arrival_ns=at, frame=b""))
    return out
