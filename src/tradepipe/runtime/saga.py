"""A small saga engine (R3.4): ordered steps, per-step timeouts in event time, compensations
run in reverse order.

A :class:`SagaDefinition` is an ordered tuple of :class:`Step`\\ s. Each saga instance is keyed
(the trading workflow keys by correlationId) and is an explicit state machine::

    RUNNING at step k --(a completing event of step k)--> RUNNING at k + 1, or COMPLETED after the last
    RUNNING at step k --(a failing event of step k)-----> FAILED, or REJECTED if step k ``rejects``
    RUNNING at step k --(timeout of step k)-------------> TIMED_OUT

Steps complete strictly in order: :meth:`SagaEngine.handle` ignores an event for another step
than the current one. On a bus, though, a service consumes its topics independently, so a
step's event can arrive before the previous step's (an OrderPlaced before the SignalValidated
it answers) or before the saga has started: :meth:`SagaEngine.deliver` holds such an event
(of a later step's type, or for a saga not started yet) and applies it once its step is
current, as if it had arrived then; whatever is still held when a saga ends goes to the late
handlers. Held events of sagas that never start are dropped once the time all the steps
together may take has passed (and beyond ``done_memory`` sagas, oldest first).
On every end but COMPLETED the compensations of the steps that had completed (those that
declare one) are produced, last step first. REJECTED is a business decision (a rule, a risk
check), not an error: it is reported as such but compensates like FAILED, so a definition
whose earlier steps did something still has it undone.

A step's timeout counts from when it became current, on the caller's clock: the owning service
passes its ``ctx.now()`` (event time in backtests, wall time live) to :meth:`SagaEngine.handle`
and calls :meth:`SagaEngine.expire` on every event it handles and in ``on_timer``, so a replay
times out at the same events. A timeout's ``deadline`` (when its step became current plus its
timeout) does not depend on which event noticed it, and ``expire`` ends sagas in deadline
order, so a service can report timeouts identically whatever the order its inputs arrived in.

The engine emits nothing: it returns values (:class:`StepCompleted`, :class:`SagaEnded`,
:class:`LateCommand`) that the service turns into events. Memory is bounded: a saga leaves the
running set when it ends; ended ones are remembered (outcome and data) for the last
``done_memory`` only, so that their late events are recognised: those are not processed again,
except by a step's ``late`` handler (e.g. a fill arriving after the saga compensated -> flatten).

A saga's data (``state``) is a frozen msgspec struct of ``definition.state_type``; steps read it
and ``record`` returns the next one. :meth:`SagaEngine.snapshot` holds plain builtins.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

import msgspec

from tradepipe.events.envelope import Event

Outcome = Literal["COMPLETED", "FAILED", "REJECTED", "TIMED_OUT"]
DONE_MEMORY = 1024  # ended sagas remembered, to recognise their late events

S = TypeVar("S")  # a saga's data
C = TypeVar("C")  # what a compensation produces (a command)
K = TypeVar("K", bound=Hashable)


def _concerns_any(state: Any, event: Event) -> bool:
    return True


def _unchanged(state: S, event: Event) -> S:
    return state


def _event_name(event: Event) -> str:
    return event.type


@dataclass(frozen=True, kw_only=True)
class Step(Generic[S, C]):
    """One step of a saga.

    ``completes``/``fails``: the event types that end the step; ``concerns(state, event)`` says
    whether such an event is this saga's (e.g. its own order). ``record(state, event)`` is the
    data after the completing event. ``fail_reason(event)`` explains a failing event;
    ``rejects`` makes a failure a business decision (outcome REJECTED). ``compensation(state)``
    undoes the step once it has completed; ``late(state, outcome, event)`` handles one of the
    step's events arriving after the saga ended without completing (None: nothing to do).
    """

    name: str
    completes: tuple[type[Event], ...]
    timeout: timedelta
    fails: tuple[type[Event], ...] = ()
    fail_reason: Callable[[Event], str] = _event_name
    rejects: bool = False
    concerns: Callable[[S, Event], bool] = _concerns_any
    record: Callable[[S, Event], S] = _unchanged
    compensation: Callable[[S], C] | None = None
    late: Callable[[S, Outcome, Event], C | None] | None = None


@dataclass(frozen=True)
class SagaDefinition(Generic[S, C]):
    name: str
    steps: tuple[Step[S, C], ...]
    state_type: type[S]
    key_type: type = uuid.UUID

    def __post_init__(self) -> None:
        names = [step.name for step in self.steps]
        if not names:
            raise ValueError(f"saga {self.name!r} needs at least one step")
        if len(set(names)) != len(names):
            raise ValueError(f"saga {self.name!r}: step names must be unique; got {names}")

    @property
    def event_types(self) -> frozenset[type[Event]]:
        """Every event type some step completes or fails on."""
        return frozenset(t for step in self.steps for t in (*step.completes, *step.fails))


# --- what the engine returns ---------------------------------------------------------------

@dataclass(frozen=True)
class StepCompleted(Generic[K]):
    key: K
    step: str  # the step that completed
    current: str  # the step now waited for


@dataclass(frozen=True)
class Compensation(Generic[C]):
    step: str  # the completed step it undoes
    command: C


@dataclass(frozen=True)
class SagaEnded(Generic[K, S, C]):
    key: K
    outcome: Outcome
    steps: tuple[str, ...]  # the steps that completed, in order
    failed_step: str  # "" when COMPLETED
    reason: str
    compensations: tuple[Compensation[C], ...]  # in the order to issue them (reverse of the steps)
    state: S
    cause: uuid.UUID | None  # the event that ended it; for a timeout the last one it accepted
    #: for a timeout, when its step's time ran out (else None); not part of the comparison,
    #: as it follows from the rest
    deadline: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LateCommand(Generic[K, C]):
    key: K
    step: str  # the step whose late handler answered
    outcome: Outcome  # how the saga had ended
    command: C


Result = StepCompleted | SagaEnded | LateCommand


# --- the engine ----------------------------------------------------------------------------

class _Running(Generic[S]):
    __slots__ = ("state", "step", "since", "cause")

    def __init__(self, state: S, step: int, since: datetime, cause: uuid.UUID | None) -> None:
        self.state = state
        self.step = step  # index of the current step
        self.since = since  # when it became current
        self.cause = cause  # the last event the saga accepted


class _Ended(Generic[S]):
    __slots__ = ("outcome", "state")

    def __init__(self, outcome: Outcome, state: S) -> None:
        self.outcome = outcome
        self.state = state


class SagaEngine(Generic[K, S, C]):
    def __init__(self, definition: SagaDefinition[S, C], *, done_memory: int = DONE_MEMORY) -> None:
        if done_memory < 1:
            raise ValueError("done_memory must be at least 1")
        self.definition = definition
        self.steps = definition.steps
        self._index = {step.name: i for i, step in enumerate(self.steps)}
        self.done_memory = done_memory
        self.running: dict[K, _Running[S]] = {}
        self._ended: dict[K, _Ended[S]] = {}  # insertion order = age
        #: events that came before their step, per saga, with the time they arrived, in arrival
        #: order; insertion order of the sagas = age (for the bound on sagas never started)
        self.held: dict[K, list[tuple[Event, datetime]]] = {}
        self._wait_for_start = sum((step.timeout for step in self.steps), timedelta())
        self._step_of: dict[type, list[int]] = {}  # event type -> the steps it completes or fails
        for i, step in enumerate(self.steps):
            for kind in dict.fromkeys((*step.completes, *step.fails)):
                self._step_of.setdefault(kind, []).append(i)

    def start(self, key: K, state: S, now: datetime, cause: uuid.UUID | None = None) -> bool:
        """Start the saga ``key`` at its first step; False (nothing done) if it is running or
        has ended lately."""
        if key in self.running or key in self._ended:
            return False
        self.running[key] = _Running(state, 0, now, cause)
        return True

    def handle(self, key: K, event: Event, now: datetime) -> Result | None:
        """Apply ``event`` to the saga ``key``: what changed, or None if nothing did (not its
        saga, not its current step, not its order ...)."""
        running = self.running.get(key)
        if running is None:
            ended = self._ended.get(key)
            return self._late(key, ended, event) if ended is not None else None
        step = self.steps[running.step]
        kind = type(event)
        if kind in step.completes and step.concerns(running.state, event):
            running.state = step.record(running.state, event)
            running.cause = event.event_id
            running.step += 1
            if running.step == len(self.steps):
                return self._end(key, "COMPLETED", "", "")
            running.since = now
            return StepCompleted(key, step.name, self.steps[running.step].name)
        if kind in step.fails and step.concerns(running.state, event):
            running.cause = event.event_id
            return self._end(key, "REJECTED" if step.rejects else "FAILED", step.name, step.fail_reason(event))
        return None

    def deliver(self, key: K, event: Event, now: datetime) -> list[tuple[Event, Result]]:
        """:meth:`handle` for events that may arrive before their step: an event of a later
        step than the current one, or for a saga not started (nor ended lately), is held and
        applied once its step is current. Every result, with the event that caused it, in
        order: ``event``'s own, then those of the held events it let through."""
        running = self.running.get(key)
        early = key not in self._ended if running is None else self._ahead(running, event)
        if early:
            self._hold(key, event, now)
            return []
        result = self.handle(key, event, now)
        if result is None:
            return []
        return [(event, result), *self.catch_up(key)]

    def catch_up(self, key: K) -> list[tuple[Event, Result]]:
        """Apply the events held for ``key`` that its current step takes, in arrival order,
        as long as one does; once the saga has ended, hand the rest to the late handlers.
        Every result with its event, in order."""
        held = self.held.get(key)
        out: list[tuple[Event, Result]] = []
        while held:
            running = self.running.get(key)
            if running is None:  # ended: what is left arrived late
                del self.held[key]
                for event, now in held:
                    result = self.handle(key, event, now)
                    if result is not None:
                        out.append((event, result))
                break
            ready = next((i for i, (event, _) in enumerate(held) if self._moves(running, event)), None)
            if ready is None:
                break
            event, now = held.pop(ready)
            out.append((event, self.handle(key, event, now)))
        if key in self.held and not self.held[key]:
            del self.held[key]
        return out

    def expire(self, now: datetime) -> list[SagaEnded[K, S, C]]:
        """End (TIMED_OUT) every saga whose current step has waited its timeout at ``now``,
        earliest deadline first (then in the order they started), and drop the held events
        of sagas that have not started within the time all the steps together may take. The
        events held for a saga it ends wait for :meth:`catch_up`, which hands them to the
        late handlers."""
        steps = self.steps
        due = sorted(((r.since + steps[r.step].timeout, key) for key, r in self.running.items()
                      if now - r.since >= steps[r.step].timeout), key=lambda due: due[0])
        ended = []
        for deadline, key in due:
            step = steps[self.running[key].step]
            waited_for = "/".join(t.__name__ for t in step.completes)
            reason = f"no {waited_for} within {step.timeout.total_seconds():g}s"
            ended.append(self._end(key, "TIMED_OUT", step.name, reason, deadline))
        if self.held:
            stale = [key for key, held in self.held.items() if key not in self.running
                     and key not in self._ended and now - held[0][1] >= self._wait_for_start]
            for key in stale:
                del self.held[key]
        return ended

    def outcome(self, key: K) -> Outcome | None:
        """How the saga ``key`` ended, if it did lately."""
        ended = self._ended.get(key)
        return ended.outcome if ended is not None else None

    def current_step(self, key: K) -> str | None:
        running = self.running.get(key)
        return self.steps[running.step].name if running is not None else None

    def _moves(self, running: _Running[S], event: Event) -> bool:
        """Whether ``event`` completes or fails the current step of ``running``."""
        step = self.steps[running.step]
        kind = type(event)
        return (kind in step.completes or kind in step.fails) and step.concerns(running.state, event)

    def _ahead(self, running: _Running[S], event: Event) -> bool:
        """Whether ``event`` is for a later step than the current one (and not this one's)."""
        return not self._moves(running, event) and any(i > running.step for i in self._step_of.get(type(event), ()))

    def _hold(self, key: K, event: Event, now: datetime) -> None:
        held = self.held.get(key)
        if held is None:
            if key not in self.running:  # a saga not started: bounded, the oldest go first
                waiting = [k for k in self.held if k not in self.running]
                if len(waiting) >= self.done_memory:
                    del self.held[waiting[0]]
            held = self.held[key] = []
        held.append((event, now))

    def _end(self, key: K, outcome: Outcome, failed_step: str, reason: str,
             deadline: datetime | None = None) -> SagaEnded[K, S, C]:
        running = self.running.pop(key)
        completed = self.steps[:running.step]
        compensations = () if outcome == "COMPLETED" else tuple(
            Compensation(step.name, step.compensation(running.state))
            for step in reversed(completed) if step.compensation is not None
        )
        self._remember(key, _Ended(outcome, running.state))
        return SagaEnded(key, outcome, tuple(s.name for s in completed), failed_step, reason, compensations,
                         running.state, running.cause, deadline)

    def _late(self, key: K, ended: _Ended[S], event: Event) -> LateCommand[K, C] | None:
        if ended.outcome == "COMPLETED":
            return None  # nothing was undone: a late event changes nothing
        kind = type(event)
        for step in self.steps:
            if step.late is not None and (kind in step.completes or kind in step.fails):
                command = step.late(ended.state, ended.outcome, event)
                if command is not None:
                    return LateCommand(key, step.name, ended.outcome, command)
        return None

    def _remember(self, key: K, ended: _Ended[S]) -> None:
        self._ended[key] = ended
        if len(self._ended) > self.done_memory:
            del self._ended[next(iter(self._ended))]

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, list]:
        """Running sagas (key, current step's name, since, cause, data), the remembered ended
        ones (key, outcome, data), oldest first, and the held events (key, [[event, arrival
        time], ...]). Plain builtins."""
        return msgspec.to_builtins({
            "running": [[key, self.steps[r.step].name, r.since, r.cause, r.state] for key, r in self.running.items()],
            "ended": [[key, e.outcome, e.state] for key, e in self._ended.items()],
            "held": [[key, [[event, now] for event, now in held]] for key, held in self.held.items()],
        })

    def restore(self, state: dict[str, list]) -> None:
        key_type, state_type = self.definition.key_type, self.definition.state_type
        self.running = {}
        for key, step, since, cause, data in state["running"]:
            if step not in self._index:
                raise ValueError(f"saga {self.definition.name!r} has no step {step!r} (snapshot of another definition)")
            self.running[msgspec.convert(key, key_type)] = _Running(
                msgspec.convert(data, state_type), self._index[step], msgspec.convert(since, datetime),
                msgspec.convert(cause, uuid.UUID | None))
        self._ended = {}
        for key, outcome, data in state["ended"]:
            self._remember(msgspec.convert(key, key_type), _Ended(outcome, msgspec.convert(data, state_type)))
        kinds = {kind.__name__: kind for kind in self._step_of}
        self.held = {
            msgspec.convert(key, key_type): [
                (msgspec.convert(event, kinds[event["type"]]), msgspec.convert(now, datetime)) for event, now in held]
            for key, held in state.get("held", ())  # snapshots from before held events: none
        }


__all__ = [
    "DONE_MEMORY", "Compensation", "LateCommand", "Outcome", "Result", "SagaDefinition", "SagaEnded", "SagaEngine",
    "Step", "StepCompleted",
]
