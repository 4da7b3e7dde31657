"""The delay line's schedule, on synthetic times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from halfclose.errors import UsageError
from halfclose.lab.delayline import (
    MAX_RTT_NS,
    DelayCounters,
    DelayLine,
    Direction,
    DirectionCounters,
    LinkProfile,
    schedule,
)

A, B = Direction.A_TO_B, Direction.B_TO_A
MS = 1_000_000


# ---------------------------------------------------------------- the profile


def test_from_ms_converts_units() -> None:
    p = LinkProfile.from_ms(rtt_ms=50, jitter_ms=2.5, loss_pct=1.25, seed=9)
    assert (p.rtt_ns, p.jitter_ns, p.loss_ppm, p.seed) == (50 * MS, 2_500_000, 12_500, 9)
    assert p.describe() == "rtt=50ms jitter=2.5ms loss=1.25% seed=9"
    assert not p.is_transparent
    assert LinkProfile(rtt_ns=0).is_transparent


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"rtt_ms": -1}, "RTT must be between 0 and 1000 ms, not -1"),
        ({"rtt_ms": 1000.5}, "RTT must be between 0 and 1000 ms"),
        ({"rtt_ms": float("nan")}, "RTT must be between"),
        ({"rtt_ms": float("inf")}, "RTT must be between"),
        ({"rtt_ms": 50, "jitter_ms": 51}, "jitter must be between 0 and 50 ms, not 51"),
        ({"rtt_ms": 50, "jitter_ms": -1}, "jitter must be between"),
        ({"rtt_ms": 50, "loss_pct": 100.1}, "loss must be between 0 and 100 %"),
        ({"rtt_ms": 50, "loss_pct": -0.1}, "loss must be between"),
        ({"rtt_ms": 50, "limit": 0}, "queue limit must be at least 1"),
        ({"rtt_ms": 50, "seed": -1}, "seed must be between 0 and 9223372036854775807, not -1"),
    ],
)
def test_out_of_range_is_a_usage_error(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        LinkProfile.from_ms(**kwargs)  # type: ignore[arg-type]


def test_limits_are_inclusive() -> None:
    LinkProfile.from_ms(rtt_ms=0)
    LinkProfile.from_ms(rtt_ms=1000, jitter_ms=1000, loss_pct=100)
    with pytest.raises(UsageError):
        LinkProfile(rtt_ns=MAX_RTT_NS + 1)


@given(st.integers(0, MAX_RTT_NS))
def test_directions_add_up_to_the_round_trip(rtt: int) -> None:
    p = LinkProfile(rtt_ns=rtt)
    assert p.one_way_ns(A) + p.one_way_ns(B) == rtt
    assert 0 <= p.one_way_ns(B) - p.one_way_ns(A) <= 1


# ---------------------------------------------------------------- delay and order


def test_fixed_delay_holds_each_frame_half_the_round_trip() -> None:
    p = LinkProfile.from_ms(rtt_ms=50)
    assert schedule(p, [(A, 0), (B, 1_000), (A, 2_000)]) == [25 * MS, 25 * MS + 1_000, 25 * MS + 2_000]


def test_pop_due_hands_back_due_frames_in_order_and_no_early_ones() -> None:
    line = DelayLine(LinkProfile.from_ms(rtt_ms=10))
    for i, frame in enumerate((b"one", b"two", b"three")):
        line.offer(direction=A, arrival_ns=0, frame=frame)  # same arrival time: order by arrival
        line.offer(direction=B, arrival_ns=i, frame=frame.upper())
    assert line.next_due_ns() == 5 * MS
    assert line.pop_due(5 * MS - 1) == []
    first = line.pop_due(5 * MS)
    # Equal due times leave in the order the frames arrived, whatever their direction.
    assert [d.frame for d in first] == [b"one", b"ONE", b"two", b"three"]
    assert [d.frame for d in line.pop_due(10 * MS)] == [b"TWO", b"THREE"]
    assert line.next_due_ns() is None
    assert len(line) == 0


def _departure_order(line: DelayLine, arrivals: list[tuple[Direction, int]]) -> dict[Direction, list[int]]:
    for i, (d, t) in enumerate(arrivals):
        line.offer(direction=d, arrival_ns=t, frame=i.to_bytes(4, "big"))
    out: dict[Direction, list[int]] = {A: [], B: []}
    for dep in line.pop_due(2**62):
        out[dep.direction].append(int.from_bytes(dep.frame, "big"))
    return out


arrival_lists = st.lists(
    st.tuples(st.sampled_from([A, B]), st.integers(0, 5 * MS)), min_size=1, max_size=200
).map(lambda xs: sorted(xs, key=lambda x: x[1]))


@given(arrival_lists, st.integers(0, 100 * MS))
def test_no_jitter_keeps_arrival_order_in_each_direction(
    arrivals: list[tuple[Direction, int]], rtt: int
) -> None:
    got = _departure_order(DelayLine(LinkProfile(rtt_ns=rtt)), arrivals)
    for d in (A, B):
        assert got[d] == sorted(got[d])


@given(arrival_lists, st.integers(1, 40 * MS), st.integers(0, 2**32))
def test_jitter_keeps_order_unless_asked_and_stays_in_bounds(
    arrivals: list[tuple[Direction, int]], jitter: int, seed: int
) -> None:
    p = LinkProfile(rtt_ns=40 * MS, jitter_ns=jitter, seed=seed)
    got = _departure_order(DelayLine(p), arrivals)
    for d in (A, B):
        assert got[d] == sorted(got[d])
    dues = schedule(p, arrivals)
    for (d, t), due in zip(arrivals, dues, strict=True):
        assert due is not None
        assert t + p.one_way_ns(d) - jitter // 2 <= due <= t + p.one_way_ns(d) + jitter - jitter // 2


def test_jitter_with_reorder_lets_frames_overtake_within_bounds() -> None:
    p = LinkProfile(rtt_ns=40 * MS, jitter_ns=20 * MS, seed=1, reorder=True)
    arrivals = [(A, i * 100_000) for i in range(500)]  # 10,000 frames/s
    dues = schedule(p, arrivals)
    assert all(due is not None for due in dues)
    delays = [due - t for (_, t), due in zip(arrivals, dues, strict=True) if due is not None]
    assert min(delays) >= 10 * MS
    assert max(delays) <= 30 * MS
    assert max(delays) - min(delays) > 15 * MS  # the spread is used
    assert dues != sorted(dues, key=lambda x: x or 0)  # some frames overtake others


def test_same_seed_same_jitter_other_seed_other_jitter() -> None:
    arrivals = [(A, i * MS) for i in range(50)]
    p = LinkProfile(rtt_ns=40 * MS, jitter_ns=10 * MS, seed=3, reorder=True)
    assert schedule(p, arrivals) == schedule(p, arrivals)
    assert schedule(p, arrivals) != schedule(LinkProfile(rtt_ns=40 * MS, jitter_ns=10 * MS, seed=4,
                                                         reorder=True), arrivals)


# ---------------------------------------------------------------- loss


def _lost(p: LinkProfile, arrivals: list[tuple[Direction, int]]) -> list[int]:
    return [i for i, due in enumerate(schedule(p, arrivals)) if due is None]


def test_loss_drops_the_asked_fraction() -> None:
    n = 100_000
    lost = _lost(LinkProfile.from_ms(rtt_ms=10, loss_pct=10, seed=42), [(A, i * 10_000) for i in range(n)])
    assert abs(len(lost) / n - 0.10) < 0.005


def test_loss_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    arrivals = [(A, i * 1000) for i in range(2000)]
    p = LinkProfile.from_ms(rtt_ms=10, loss_pct=5, seed=7)
    first = _lost(p, arrivals)
    assert first == _lost(p, arrivals)
    assert first != _lost(LinkProfile.from_ms(rtt_ms=10, loss_pct=5, seed=8), arrivals)
    # Pinned: the n-th frame's fate must not drift between releases of halfclose.
    assert first[:5] == [5, 7, 12, 32, 51]


def test_loss_of_a_direction_ignores_the_other_direction_and_the_timing() -> None:
    p = LinkProfile.from_ms(rtt_ms=10, jitter_ms=5, loss_pct=20, seed=11)
    only_a = [(A, i * 1000) for i in range(500)]
    mixed: list[tuple[Direction, int]] = []
    for i in range(500):
        mixed += [(A, i * 3000), (B, i * 3000 + 1)]
    lost_only = _lost(p, only_a)
    lost_mixed = [i // 2 for i in _lost(p, mixed) if i % 2 == 0]
    assert lost_only == lost_mixed
    # Jitter does not change which frames are lost either.
    assert lost_only == _lost(LinkProfile.from_ms(rtt_ms=10, loss_pct=20, seed=11), only_a)


def test_no_loss_and_total_loss() -> None:
    arrivals = [(A, i) for i in range(1000)] + [(B, 1000 + i) for i in range(1000)]
    assert _lost(LinkProfile.from_ms(rtt_ms=1), arrivals) == []
    assert len(_lost(LinkProfile.from_ms(rtt_ms=1, loss_pct=100), arrivals)) == 2000


# ---------------------------------------------------------------- limit and counters


def test_a_full_direction_drops_and_counts_overflow() -> None:
    p = LinkProfile(rtt_ns=10 * MS, limit=3)
    arrivals = [(A, i) for i in range(5)] + [(B, 5)] + [(A, 10 * MS)]
    dues = schedule(p, arrivals)
    assert [d is None for d in dues] == [False, False, False, True, True, False, False]
    line = DelayLine(p)
    for d, t in arrivals:
        line.pop_due(t)
        line.offer(direction=d, arrival_ns=t, frame=b"x")
    c = line.counters(send_errors=(0, 2))
    assert c.a_to_b == DirectionCounters(received=6, overflow=2, released=3, pending=1)
    assert c.b_to_a == DirectionCounters(received=1, released=1, send_errors=2, pending=0)


def test_counters_round_trip_through_plain_data() -> None:
    c = DelayCounters(a_to_b=DirectionCounters(received=3, lost=1, released=2),
                      b_to_a=DirectionCounters(received=5, overflow=1, pending=4))
    assert DelayCounters.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="lack b_to_a"):
        DelayCounters.from_dict({"a_to_b": {}})
