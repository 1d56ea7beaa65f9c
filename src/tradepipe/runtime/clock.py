"""Clocks (R3.5): event time in backtests, wall time live; handlers only ever ask ``ctx.now()``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def advance(self, to: datetime) -> None:
        """Tell the clock the time of the event about to be handled."""


class EventClock:
    """Deterministic: the time is that of the event being handled.

    It follows each event exactly (rather than the maximum seen) so that re-handling an event
    after a restart sees the same time as the first run, whatever came before it.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(1970, 1, 1, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self._now

    def advance(self, to: datetime) -> None:
        self._now = to


class WallClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def advance(self, to: datetime) -> None:
        pass
