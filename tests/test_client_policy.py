"""The keep-alive policy core: margins, Keep-Alive parsing, retry rules, the timeout learner."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from halfclose.client._policy import (
    IdleTimeout,
    KeepAlivePolicy,
    RetryReason,
    TimeoutBounds,
    TimeoutLearner,
    TimeoutSource,
    choose_timeout,
    has_idempotency_key,
    is_idempotent,
    parse_keep_alive,
    retry_reason,
)


def test_margin_uses_the_floor_for_small_rtts_and_the_rtt_for_large_ones() -> None:
    p = KeepAlivePolicy()
    assert p.margin(60.0, rtt=0.01) == 1.0
    assert p.margin(60.0, rtt=None) == 1.0
    assert p.margin(60.0, rtt=0.8) == pytest.approx(1.6)


def test_margin_never_makes_short_timeouts_unusable() -> None:
    p = KeepAlivePolicy()
    assert p.margin(2.0, rtt=0.05) == 0.5
    assert p.margin(1.0, rtt=0.3) == 0.25
    assert not p.should_retire(idle=0.7, timeout=1.0, rtt=0.3)
    assert p.should_retire(idle=0.75, timeout=1.0, rtt=0.3)


@given(
    timeout=st.floats(min_value=0.01, max_value=1e5),
    rtt=st.none() | st.floats(min_value=0, max_value=10),
    idle=st.floats(min_value=0, max_value=2e5),
    later=st.floats(min_value=0, max_value=1e5),
)
def test_margin_is_bounded_and_retirement_is_monotone(
    timeout: float, rtt: float | None, idle: float, later: float
) -> None:
    p = KeepAlivePolicy()
    m = p.margin(timeout, rtt=rtt)
    assert 0 <= m <= 0.25 * timeout
    if p.should_retire(idle=idle, timeout=timeout, rtt=rtt):
        assert p.should_retire(idle=idle + later, timeout=timeout, rtt=rtt)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="margin_fraction"):
        KeepAlivePolicy(margin_fraction=1.0)
    with pytest.raises(ValueError, match="default_timeout"):
        KeepAlivePolicy(default_timeout=0)
    with pytest.raises(ValueError, match="margin_floor"):
        KeepAlivePolicy(margin_floor=-1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("timeout=5, max=100", 5.0),
        ("max=100, timeout=15", 15.0),
        ("Timeout=2.5", 2.5),
        ('timeout="7"', 7.0),
        ("max=100", None),
        ("timeout=0", None),
        ("timeout=abc", None),
        ("keepalive_timeout=9", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_keep_alive(value: str | None, expected: float | None) -> None:
    assert parse_keep_alive(value) == expected


def test_idempotent_methods_follow_rfc9110() -> None:
    assert all(is_idempotent(m) for m in ("GET", "head", "OPTIONS", "TRACE", "PUT", "DELETE"))
    assert not any(is_idempotent(m) for m in ("POST", "PATCH", "CONNECT"))
    assert has_idempotency_key({"Idempotency-Key": "1"})
    assert has_idempotency_key({"x-idempotency-key": "1"})
    assert not has_idempotency_key({"Content-Type": "x"})
    assert not has_idempotency_key(None)


def _reason(**kw: object) -> RetryReason | None:
    args: dict[str, object] = {
        "method": "GET", "idempotency_key": False, "bytes_written": 100, "reused": True,
        "response_started": False, "replayable": True,
    }
    args.update(kw)
    return retry_reason(**args)  # type: ignore[arg-type]


def test_retry_rules() -> None:
    assert _reason() is RetryReason.IDEMPOTENT_METHOD
    assert _reason(method="PUT") is RetryReason.IDEMPOTENT_METHOD
    assert _reason(method="POST") is None
    assert _reason(method="PATCH") is None
    assert _reason(method="POST", idempotency_key=True) is RetryReason.IDEMPOTENCY_KEY
    assert _reason(method="POST", bytes_written=0) is RetryReason.NOTHING_WRITTEN
    assert _reason(method="POST", bytes_written=0, replayable=False) is RetryReason.NOTHING_WRITTEN


def test_no_retry_on_fresh_connections_after_response_bytes_or_unreplayable_bodies() -> None:
    assert _reason(reused=False) is None
    assert _reason(reused=False, bytes_written=0) is None
    assert _reason(response_started=True) is None
    assert _reason(replayable=False) is None


def test_learner_keeps_bounds() -> None:
    learner = TimeoutLearner()
    assert learner.estimate("o") is None
    learner.record_reuse_ok("o", idle=2.0)
    learner.record_reuse_ok("o", idle=1.0)
    assert learner.bounds("o") == TimeoutBounds(lower=2.0, upper=None)
    assert learner.record_closed("o", age=9.0, exact=True)
    assert learner.record_closed("o", age=5.0, exact=True)
    learner.record_closed("o", age=7.0)
    assert learner.bounds("o") == TimeoutBounds(lower=2.0, upper=5.0, exact=True)
    assert learner.estimate("o") == 5.0
    assert learner.estimate("other") is None


def test_inexact_closes_act_on_the_middle_of_the_interval() -> None:
    learner = TimeoutLearner()
    learner.record_closed("o", age=8.0)  # a request met the close at 8 s idle: timeout <= 8
    assert learner.estimate("o") == 8.0  # nothing better known yet
    learner.record_reuse_ok("o", idle=2.0)
    assert learner.estimate("o") == 5.0
    learner.record_reuse_ok("o", idle=3.5)  # the interval closes in from below ...
    assert learner.estimate("o") == 5.75
    learner.record_closed("o", age=6.0)  # ... and from above
    assert learner.bounds("o") == TimeoutBounds(lower=3.5, upper=6.0, exact=False)
    learner.record_closed("o", age=5.2, exact=True)  # the kernel timed a FIN: that is the timeout
    assert learner.estimate("o") == 5.2
    learner.record_closed("o", age=5.9)  # a later, weaker observation does not undo it
    assert learner.bounds("o") == TimeoutBounds(lower=3.5, upper=5.2, exact=True)


@given(
    events=st.lists(
        st.tuples(st.booleans(), st.floats(min_value=0.5, max_value=100), st.booleans()), max_size=30
    )
)
@example(events=[(False, 0.5, False), (True, 0.5000000000000001, False)])  # bounds a float apart
def test_learner_bounds_stay_ordered(events: list[tuple[bool, float, bool]]) -> None:
    learner = TimeoutLearner()
    for closed, age, exact in events:
        if closed:
            learner.record_closed("o", age=age, exact=exact)
        else:
            learner.record_reuse_ok("o", idle=age)
        b = learner.bounds("o")
        if b.lower is not None and b.upper is not None:
            assert b.lower < b.upper
        estimate = learner.estimate("o")
        if estimate is not None:
            assert b.upper is not None and estimate <= b.upper
            assert b.lower is None or estimate > b.lower


def test_learner_forgets_a_bound_the_server_contradicts() -> None:
    learner = TimeoutLearner()
    learner.record_closed("o", age=5.0, exact=True)
    learner.record_reuse_ok("o", idle=6.0)  # the server now keeps connections longer
    assert learner.bounds("o") == TimeoutBounds(lower=6.0, upper=None)
    learner.record_closed("o", age=3.0)  # ... and now shorter again
    assert learner.bounds("o") == TimeoutBounds(lower=None, upper=3.0)
    learner.forget("o")
    assert learner.bounds("o") == TimeoutBounds()


def test_learner_ignores_closes_too_early_to_be_an_idle_timer() -> None:
    learner = TimeoutLearner(min_timeout=0.5)
    assert not learner.record_closed("o", age=0.01)
    assert learner.estimate("o") is None


def test_timeout_sources_in_order() -> None:
    def pick(**kw: float | None) -> IdleTimeout | None:
        args: dict[str, float | None] = {"header": None, "learned": None, "profile": None, "default": None}
        args.update(kw)
        return choose_timeout(**args)

    assert pick() is None
    assert pick(default=60) == IdleTimeout(seconds=60, source=TimeoutSource.DEFAULT)
    assert pick(profile=30, default=60) == IdleTimeout(seconds=30, source=TimeoutSource.PROFILE)
    assert pick(learned=20, profile=30, default=60) == IdleTimeout(seconds=20, source=TimeoutSource.LEARNED)
    assert pick(header=10, learned=20, profile=5) == IdleTimeout(seconds=10, source=TimeoutSource.HEADER)
    # A close seen earlier than the header claims wins: that is what the wire showed.
    assert pick(header=10, learned=4) == IdleTimeout(seconds=4, source=TimeoutSource.LEARNED)


class _FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "rtt", "after"), [(2.0, 0.05, 1.5), (60.0, 0.05, 59.0), (60.0, 0.8, 58.4),
                                                       (1.0, None, 0.75)])
def test_the_retirement_timer_fires_where_reuse_stops(seconds: float, rtt: float | None, after: float) -> None:
    policy = KeepAlivePolicy()
    timeout = IdleTimeout(seconds=seconds, source=TimeoutSource.HEADER)
    assert policy.retire_after(timeout, rtt=rtt) == pytest.approx(after)
    clock = _FakeClock(1000.0)
    since = clock()
    deadline = policy.retire_after(timeout, rtt=rtt)
    assert deadline is not None
    while clock() - since < deadline - 1e-9:  # until the timer: still worth reusing
        assert not policy.should_retire(idle=clock() - since, timeout=seconds, rtt=rtt)
        clock.now += 0.01
    clock.now = since + deadline
    assert policy.should_retire(idle=clock() - since, timeout=seconds, rtt=rtt)


def test_the_retirement_timer_needs_a_timeout_the_server_said_or_showed() -> None:
    policy = KeepAlivePolicy()
    for source in (TimeoutSource.HEADER, TimeoutSource.LEARNED, TimeoutSource.PROFILE):
        assert policy.retire_after(IdleTimeout(seconds=5.0, source=source), rtt=0.05) == 4.0
    assert policy.retire_after(IdleTimeout(seconds=60.0, source=TimeoutSource.DEFAULT), rtt=0.05) is None
    assert policy.retire_after(None, rtt=0.05) is None
    off = KeepAlivePolicy(retire_idle=False)
    assert off.retire_after(IdleTimeout(seconds=5.0, source=TimeoutSource.HEADER), rtt=0.05) is None
