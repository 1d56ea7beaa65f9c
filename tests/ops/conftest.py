"""Events for the metrics and alert tests, built the way services build them (``ctx.emit``:
causal ids, producers, deterministic ids)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tradepipe.events import Event
from tradepipe.events.types import MarketDataReceived, TickData
from tradepipe.runtime.clock import EventClock
from tradepipe.runtime.service import Context

T0 = datetime(2024, 3, 4, 9, 0, tzinfo=timezone.utc)


class Events:
    """Events one second apart in event time, from named producers."""

    def __init__(self) -> None:
        self.at = T0
        self.roots = 0
        self.bars = 0  # minute bars handed out by next_bar
        self._contexts: dict[str, Context] = {}

    def emit(self, cls: type[Event], producer: str, parent: Event | None = None, **fields) -> Event:
        self.at += timedelta(seconds=1)
        ctx = self._contexts.setdefault(producer, Context(producer, EventClock()))
        self.roots += 1
        ctx.begin(parent, key=None if parent is not None else b"root-%d" % self.roots)
        fields.setdefault("timestamp", self.at)
        fields.setdefault("symbol", "EURUSD")
        return ctx.emit(cls, **fields)

    def next_bar(self) -> datetime:
        """The open time of the next minute bar (bars follow one another across calls)."""
        self.bars += 1
        return T0 + timedelta(minutes=self.bars)

    def tick(self, bid: float = 1.1, ask: float = 1.1001) -> MarketDataReceived:
        return self.emit(MarketDataReceived, "data-bridge", source="test",
                         data=TickData(bid=bid, ask=ask, timestamp=self.at + timedelta(seconds=1)))


@pytest.fixture
def events() -> Events:
    return Events()
