"""The saga engine (R3.4) on a toy trip-booking definition: completion, failure and timeout at
every step, compensations in reverse order for the completed steps only, late events, bounded
memory, snapshot/restore mid-saga."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from tradepipe.events.envelope import Event
from tradepipe.runtime.saga import (
    Compensation,
    LateCommand,
    SagaDefinition,
    SagaEnded,
    SagaEngine,
    Step,
    StepCompleted,
)

T0 = datetime(2014, 5, 6, 12, 0, tzinfo=timezone.utc)


class Toy(Event, frozen=True, kw_only=True):
    topic = "toy"
    ref: str = ""


class FlightBooked(Toy, frozen=True, kw_only=True): pass
class FlightRefused(Toy, frozen=True, kw_only=True): pass
class CarBooked(Toy, frozen=True, kw_only=True): pass
class CarRefused(Toy, frozen=True, kw_only=True): pass
class HotelBooked(Toy, frozen=True, kw_only=True): pass
class HotelRefused(Toy, frozen=True, kw_only=True): pass
class Paid(Toy, frozen=True, kw_only=True): pass
class Declined(Toy, frozen=True, kw_only=True): pass


class Trip(msgspec.Struct, frozen=True, kw_only=True):
    flight: str = ""
    hotel: str = ""


def late_payment(trip: Trip, outcome: str, event: Event) -> tuple[str, str] | None:
    return ("refund", event.ref) if type(event) is Paid else None


TRIP = SagaDefinition("trip", (
    # a refused flight is a decision (nothing booked yet); it compensates by cancelling the flight
    Step(name="flight", completes=(FlightBooked,), fails=(FlightRefused,), rejects=True,
         fail_reason=lambda e: f"no seat: {e.ref}", timeout=timedelta(seconds=10),
         record=lambda s, e: msgspec.structs.replace(s, flight=e.ref),
         compensation=lambda s: ("cancel-flight", s.flight)),
    # the car has nothing to undo
    Step(name="car", completes=(CarBooked,), fails=(CarRefused,), timeout=timedelta(seconds=5)),
    # only hotels of our chain ("H...") are this saga's
    Step(name="hotel", completes=(HotelBooked,), fails=(HotelRefused,), timeout=timedelta(seconds=20),
         concerns=lambda s, e: e.ref.startswith("H"), record=lambda s, e: msgspec.structs.replace(s, hotel=e.ref),
         compensation=lambda s: ("cancel-hotel", s.hotel)),
    Step(name="payment", completes=(Paid,), fails=(Declined,), timeout=timedelta(seconds=30), late=late_payment),
), Trip, key_type=str)

COMPLETING = [(FlightBooked, "F1"), (CarBooked, "C1"), (HotelBooked, "H1"), (Paid, "P1")]
FAILING = [FlightRefused, CarRefused, HotelRefused, Declined]
TIMEOUTS = [10, 5, 20, 30]
# the completed steps' compensations, last first, when the saga ends at step k (the car has none)
UNDONE = [
    (),
    (Compensation("flight", ("cancel-flight", "F1")),),
    (Compensation("flight", ("cancel-flight", "F1")),),
    (Compensation("hotel", ("cancel-hotel", "H1")), Compensation("flight", ("cancel-flight", "F1"))),
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(cls: type[Toy], ref: str = "", seconds: float = 0.0) -> Toy:
    return cls(event_id=uuid.uuid5(uuid.NAMESPACE_OID, f"{cls.__name__}|{ref}|{seconds:g}"), timestamp=at(seconds), ref=ref)


def engine(**kwargs) -> SagaEngine:
    return SagaEngine(TRIP, **kwargs)


def advance(sagas: SagaEngine, key: str, steps: int, every: float = 1.0) -> list:
    """Start ``key`` at T0 and complete its first ``steps`` steps, one every ``every`` seconds."""
    assert sagas.start(key, Trip(), at(0))
    return [sagas.handle(key, event(cls, ref, every * (i + 1)), at(every * (i + 1)))
            for i, (cls, ref) in enumerate(COMPLETING[:steps])]


def test_a_saga_runs_its_steps_in_order_to_completion():
    sagas = engine()
    *moves, ended = advance(sagas, "trip-1", 4)
    assert moves == [StepCompleted("trip-1", "flight", "car"), StepCompleted("trip-1", "car", "hotel"),
                     StepCompleted("trip-1", "hotel", "payment")]
    assert ended == SagaEnded("trip-1", "COMPLETED", ("flight", "car", "hotel", "payment"), "", "", (),
                              Trip(flight="F1", hotel="H1"), event(Paid, "P1", 4).event_id)
    assert sagas.running == {} and sagas.outcome("trip-1") == "COMPLETED"
    assert not sagas.start("trip-1", Trip(), at(5))  # an ended saga is not started again


def test_the_current_step_and_the_data_it_recorded_follow_the_events():
    sagas = engine()
    advance(sagas, "trip-1", 2)
    assert sagas.current_step("trip-1") == "hotel" and sagas.running["trip-1"].state == Trip(flight="F1")
    assert sagas.current_step("unknown") is None and sagas.outcome("trip-1") is None


@pytest.mark.parametrize("k", range(4))
def test_a_failure_at_each_step_compensates_the_completed_steps_in_reverse(k):
    sagas = engine()
    advance(sagas, "trip-1", k)
    failing = event(FAILING[k], "Hx" if k == 2 else "x", 10)
    ended = sagas.handle("trip-1", failing, at(k + 0.5))
    assert ended.outcome == ("REJECTED" if k == 0 else "FAILED")
    assert ended.steps == tuple(s.name for s in TRIP.steps[:k]) and ended.failed_step == TRIP.steps[k].name
    assert ended.reason == ("no seat: x" if k == 0 else FAILING[k].__name__)
    assert ended.compensations == UNDONE[k] and ended.cause == failing.event_id
    assert sagas.running == {} and sagas.outcome("trip-1") == ended.outcome


@pytest.mark.parametrize("k", range(4))
def test_a_timeout_at_each_step_counts_from_when_the_step_became_current(k):
    sagas = engine()
    advance(sagas, "trip-1", k, every=7.0)  # step k became current at 7k s
    became_current, timeout = 7.0 * k, TIMEOUTS[k]
    assert sagas.expire(at(became_current + timeout - 0.001)) == []
    [ended] = sagas.expire(at(became_current + timeout))
    waited_for = COMPLETING[k][0].__name__
    assert (ended.outcome, ended.failed_step, ended.reason) == (
        "TIMED_OUT", TRIP.steps[k].name, f"no {waited_for} within {timeout}s")
    assert ended.steps == tuple(s.name for s in TRIP.steps[:k]) and ended.compensations == UNDONE[k]
    # a timeout's cause is the last event the saga accepted (none here before the first step)
    assert ended.cause == (event(*COMPLETING[k - 1], 7.0 * k).event_id if k else None)
    assert sagas.expire(at(1000)) == [] and sagas.outcome("trip-1") == "TIMED_OUT"


def test_events_of_another_step_another_saga_or_not_its_own_change_nothing():
    sagas = engine()
    advance(sagas, "trip-1", 2)  # waiting for the hotel
    assert sagas.handle("trip-1", event(FlightBooked, "F2"), at(3)) is None  # an earlier step's, again
    assert sagas.handle("trip-1", event(Paid, "P1"), at(3)) is None  # a later step's, too early
    assert sagas.handle("trip-1", event(HotelBooked, "Z9"), at(3)) is None  # not our chain (concerns)
    assert sagas.handle("trip-1", event(HotelRefused, "Z9"), at(3)) is None  # nor is its refusal
    assert sagas.handle("trip-2", event(HotelBooked, "H1"), at(3)) is None  # a saga never started
    assert sagas.current_step("trip-1") == "hotel" and sagas.running["trip-1"].state == Trip(flight="F1")
    assert sagas.handle("trip-1", event(HotelBooked, "H7"), at(4)) == StepCompleted("trip-1", "hotel", "payment")


def test_sagas_time_out_independently():
    sagas = engine()
    advance(sagas, "trip-1", 1)  # car step current since 1 s (timeout 5 s)
    assert sagas.start("trip-2", Trip(), at(3))  # flight step current since 3 s (timeout 10 s)
    assert [e.key for e in sagas.expire(at(6))] == ["trip-1"]
    assert sagas.current_step("trip-2") == "flight"
    assert [e.key for e in sagas.expire(at(13))] == ["trip-2"]


def test_late_events_of_an_ended_saga_go_to_the_late_handler_only():
    sagas = engine()
    advance(sagas, "trip-1", 3)
    [ended] = sagas.expire(at(3 + 30))
    assert ended.outcome == "TIMED_OUT" and ended.failed_step == "payment"
    late = sagas.handle("trip-1", event(Paid, "P1", 40), at(40))
    assert late == LateCommand("trip-1", "payment", "TIMED_OUT", ("refund", "P1"))
    assert sagas.handle("trip-1", event(Declined, "P1", 41), at(41)) is None  # the handler had nothing to do
    assert sagas.handle("trip-1", event(HotelBooked, "H2", 42), at(42)) is None  # no late handler: ignored
    assert sagas.running == {} and sagas.outcome("trip-1") == "TIMED_OUT"


def test_a_completed_saga_has_nothing_to_undo_on_a_late_event():
    sagas = engine()
    advance(sagas, "trip-1", 4)
    assert sagas.handle("trip-1", event(Paid, "P1", 5), at(5)) is None
    assert sagas.outcome("trip-1") == "COMPLETED"


def test_memory_is_bounded_running_sagas_leave_and_only_the_last_ended_ones_are_remembered():
    sagas = engine(done_memory=3)
    for i in range(5):
        advance(sagas, f"trip-{i}", 4)
    assert sagas.running == {}
    assert [sagas.outcome(f"trip-{i}") for i in range(5)] == [None, None, "COMPLETED", "COMPLETED", "COMPLETED"]
    assert sagas.start("trip-0", Trip(), at(10))  # forgotten: a new saga
    assert not sagas.start("trip-4", Trip(), at(10))
    sagas.expire(at(100))  # trip-0 times out and pushes trip-2 out
    assert sagas.outcome("trip-2") is None and sagas.outcome("trip-0") == "TIMED_OUT"
    with pytest.raises(ValueError, match="done_memory must be at least 1"):
        engine(done_memory=0)


def script() -> list[tuple[str, Event | None, float]]:
    """Three sagas interleaved: (key, event or None = expire only, time)."""
    return [
        ("a", event(FlightBooked, "F1", 1), 1), ("b", event(FlightBooked, "F2", 2), 2),
        ("a", event(CarBooked, "C1", 3), 3), ("c", event(FlightRefused, "full", 4), 4),
        ("b", event(CarBooked, "C2", 5), 5), ("a", event(HotelBooked, "H1", 6), 6),
        # --- a snapshot here: a waits for payment, b for its hotel, c ended REJECTED
        ("b", event(HotelBooked, "H2", 7), 7), ("c", event(FlightBooked, "F3", 8), 8),
        ("b", event(Paid, "P2", 20), 20), ("a", None, 36), ("a", event(Paid, "P1", 37), 37),
    ]


def play(sagas: SagaEngine, steps) -> list:
    results = []
    for key, ev, seconds in steps:
        results.extend(sagas.expire(at(seconds)))
        if ev is not None:
            results.append(sagas.handle(key, ev, at(seconds)))
    return results


def started() -> SagaEngine:
    sagas = engine()
    for key in "abc":
        assert sagas.start(key, Trip(), at(0))
    return sagas


@pytest.mark.parametrize("codec", [msgspec.json, msgspec.msgpack])
def test_snapshot_and_restore_mid_saga_continue_exactly_as_uninterrupted(codec):
    steps = script()
    uninterrupted = started()
    expected = play(uninterrupted, steps)
    assert [(type(r).__name__, r.key, r.outcome) for r in expected[-3:]] == [
        ("SagaEnded", "b", "COMPLETED"), ("SagaEnded", "a", "TIMED_OUT"), ("LateCommand", "a", "TIMED_OUT")]

    before = started()
    first = play(before, steps[:6])
    restored = engine()
    restored.restore(codec.decode(codec.encode(before.snapshot())))
    assert restored.snapshot() == before.snapshot()
    assert sorted(restored.running) == ["a", "b"] and restored.outcome("c") == "REJECTED"
    assert first + play(restored, steps[6:]) == expected
    assert restored.snapshot() == uninterrupted.snapshot()


def test_a_snapshot_of_another_definition_is_refused_and_a_definition_is_checked():
    sagas = started()
    state = sagas.snapshot()
    state["running"][0][1] = "boat"
    with pytest.raises(ValueError, match="has no step 'boat'"):
        engine().restore(state)
    with pytest.raises(ValueError, match="at least one step"):
        SagaDefinition("empty", (), Trip)
    twice = Step(name="x", completes=(Paid,), timeout=timedelta(seconds=1))
    with pytest.raises(ValueError, match="step names must be unique"):
        SagaDefinition("dup", (twice, twice), Trip)
    assert TRIP.event_types == {FlightBooked, FlightRefused, CarBooked, CarRefused, HotelBooked, HotelRefused,
                                Paid, Declined}
