"""CircuitBreaker (R3.3): every transition, on the caller's clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from tradepipe.runtime.breaker import CircuitBreaker, Transition

T0 = datetime(2014, 5, 6, 12, 0, tzinfo=timezone.utc)
RECOVERY = timedelta(seconds=60)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def opened(threshold: int = 5) -> CircuitBreaker:
    breaker = CircuitBreaker("ml-xgboost/XGBoost-v3", threshold=threshold, recovery=RECOVERY)
    for i in range(threshold):
        breaker.failure(at(i), "boom")
    assert breaker.state == "OPEN"
    return breaker


def test_closed_lets_calls_through_and_counts_consecutive_failures_only():
    breaker = CircuitBreaker("b")
    assert (breaker.state, breaker.threshold, breaker.recovery) == ("CLOSED", 5, timedelta(seconds=60))
    for i in range(4):
        assert breaker.allow(at(i)) == (True, None)
        assert breaker.failure(at(i), "boom") is None
    assert breaker.failures == 4
    assert breaker.success() is None  # a success in between resets the count: no transition
    assert breaker.failures == 0 and breaker.state == "CLOSED"
    for i in range(4):
        assert breaker.failure(at(10 + i), "boom") is None
    assert breaker.state == "CLOSED"


def test_the_fifth_consecutive_failure_opens_it():
    breaker = CircuitBreaker("ml-lstm/LSTM-v2")
    for i in range(4):
        breaker.failure(at(i), "TimeoutError")
    transition = breaker.failure(at(4), "RuntimeError: model exploded")
    assert transition == Transition("ml-lstm/LSTM-v2", "CLOSED", "OPEN", 5, "RuntimeError: model exploded")
    assert breaker.state == "OPEN" and breaker.opened_at == at(4)


def test_open_refuses_calls_until_the_recovery_time_has_passed_then_lets_one_probe_through():
    breaker = opened()
    assert breaker.allow(at(4)) == (False, None)
    assert breaker.allow(at(4 + 59.999)) == (False, None)
    allowed, transition = breaker.allow(at(4 + 60))
    assert allowed and transition == Transition(breaker.name, "OPEN", "HALF_OPEN", 5, "recovery time passed; probing")
    assert breaker.state == "HALF_OPEN"
    assert breaker.allow(at(4 + 60)) == (True, None)  # still the probe: no second transition


def test_a_successful_probe_closes_it():
    breaker = opened()
    breaker.allow(at(100))
    transition = breaker.success()
    assert transition == Transition(breaker.name, "HALF_OPEN", "CLOSED", 0, "probe succeeded")
    assert (breaker.state, breaker.failures, breaker.opened_at) == ("CLOSED", 0, None)
    assert breaker.allow(at(101)) == (True, None)
    for i in range(4):  # a fresh count: 4 more failures keep it closed
        assert breaker.failure(at(102 + i), "boom") is None


def test_a_failed_probe_reopens_it_and_the_recovery_time_starts_again():
    breaker = opened()
    breaker.allow(at(100))
    transition = breaker.failure(at(100), "RuntimeError: still broken")
    assert transition == Transition(breaker.name, "HALF_OPEN", "OPEN", 6, "RuntimeError: still broken")
    assert breaker.state == "OPEN" and breaker.opened_at == at(100)
    assert breaker.allow(at(159)) == (False, None)
    assert breaker.allow(at(160))[1].to_state == "HALF_OPEN"


def test_the_clock_is_the_callers_event_time_not_the_wall_clock():
    breaker = opened()  # opened at T0 + 4 s, in 2014
    assert breaker.allow(at(30)) == (False, None)  # although the wall clock is years later
    assert breaker.allow(at(64))[0]


def test_a_threshold_of_one_opens_on_the_first_failure_and_a_bad_threshold_is_refused():
    breaker = CircuitBreaker("b", threshold=1)
    assert breaker.failure(at(0), "boom").to_state == "OPEN"
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        CircuitBreaker("b", threshold=0)


def test_every_transition_in_one_life_cycle():
    breaker = CircuitBreaker("b", threshold=2, recovery=timedelta(seconds=10))
    seen = []
    for now, outcome in [(0, "fail"), (1, "fail"), (5, "call"), (11, "fail"), (21, "ok"), (22, "fail")]:
        allowed, transition = breaker.allow(at(now))
        seen.append(transition)
        if not allowed:
            continue
        seen.append(breaker.success() if outcome == "ok" else breaker.failure(at(now), outcome) if outcome == "fail" else None)
    states = [(t.from_state, t.to_state) for t in seen if t is not None]
    assert states == [("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "OPEN"),
                      ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")]
    assert breaker.state == "CLOSED" and breaker.failures == 1


@pytest.mark.parametrize("state", ["CLOSED", "OPEN", "HALF_OPEN"])
def test_snapshot_and_restore_through_a_checkpoint_codec(state):
    breaker = opened() if state != "CLOSED" else CircuitBreaker("b")
    if state == "HALF_OPEN":
        breaker.allow(at(64))
    if state == "CLOSED":
        breaker.failure(at(0), "boom")
    for codec in (msgspec.msgpack, msgspec.json):
        restored = CircuitBreaker(breaker.name, threshold=breaker.threshold, recovery=RECOVERY)
        restored.restore(codec.decode(codec.encode(breaker.snapshot())))
        assert (restored.state, restored.failures, restored.opened_at) == (breaker.state, breaker.failures, breaker.opened_at)
        assert restored.allow(at(10)) == CircuitBreaker.allow(_copy(breaker), at(10))


def _copy(breaker: CircuitBreaker) -> CircuitBreaker:
    copy = CircuitBreaker(breaker.name, threshold=breaker.threshold, recovery=breaker.recovery)
    copy.restore(breaker.snapshot())
    return copy
