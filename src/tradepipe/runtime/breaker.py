"""Circuit breaker per dependency (R3.3): CLOSED -> OPEN after ``threshold`` consecutive
failures; OPEN -> HALF_OPEN once ``recovery`` has passed; HALF_OPEN -> CLOSED on the probe's
success, back to OPEN on its failure.

Why our own class and not pybreaker/aiobreaker/purgatory: the breaker must read the service's
clock (event time in backtests, so a replay opens and closes at the same events) and report
every transition as a value the service turns into a CircuitBreakerStateChanged event; those
libraries read the wall clock and report through listeners with their own state objects. The
class is small, synchronous and holds no lock: a service handles one event at a time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import msgspec

State = Literal["CLOSED", "OPEN", "HALF_OPEN"]


class Transition(msgspec.Struct, frozen=True):
    breaker: str
    from_state: State
    to_state: State
    failures: int
    reason: str


class CircuitBreaker:
    def __init__(self, name: str, *, threshold: int = 5, recovery: timedelta = timedelta(seconds=60)) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.name = name
        self.threshold = threshold
        self.recovery = recovery
        self.state: State = "CLOSED"
        self.failures = 0  # consecutive
        self.opened_at: datetime | None = None

    def allow(self, now: datetime) -> tuple[bool, Transition | None]:
        """Whether a call may go through at ``now``; an OPEN breaker whose recovery time has
        passed lets one probe through as HALF_OPEN (the transition is returned)."""
        if self.state == "CLOSED":
            return True, None
        if self.state == "OPEN":
            if now - self.opened_at < self.recovery:
                return False, None
            return True, self._move("HALF_OPEN", "recovery time passed; probing")
        return True, None  # HALF_OPEN: the probe

    def success(self) -> Transition | None:
        self.failures = 0
        if self.state == "CLOSED":
            return None
        self.opened_at = None
        return self._move("CLOSED", "probe succeeded")

    def failure(self, now: datetime, reason: str) -> Transition | None:
        self.failures += 1
        if self.state == "HALF_OPEN" or (self.state == "CLOSED" and self.failures >= self.threshold):
            self.opened_at = now
            return self._move("OPEN", reason)
        return None

    def _move(self, to_state: State, reason: str) -> Transition:
        transition = Transition(self.name, self.state, to_state, self.failures, reason)
        self.state = to_state
        return transition

    def snapshot(self) -> list:
        return [self.state, self.failures, self.opened_at.isoformat() if self.opened_at else None]

    def restore(self, state: list) -> None:
        self.state, self.failures, opened = state
        self.opened_at = datetime.fromisoformat(opened) if opened else None
