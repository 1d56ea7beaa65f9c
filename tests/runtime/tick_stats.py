"""A small stateful service for runtime tests: counts ticks and sums mids per symbol, and
every ``every``-th tick of a symbol emits a FeaturesCalculated with the running figures.

Its final state depends on every input being applied exactly once, which is what the crash
tests check. ``spin_us`` burns CPU per event so a test can kill it mid-stream.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from tradepipe.events import MARKET_DATA, FeaturesCalculated, MarketDataReceived, TickData
from tradepipe.runtime import Context, Service

T0 = datetime(2014, 5, 5, tzinfo=timezone.utc)


def make_ticks(n: int, symbols=("EURUSD", "NZDUSD")) -> list[MarketDataReceived]:
    """``n`` deterministic ticks alternating over ``symbols``, 100 ms apart."""
    ctx = Context("test-feed")
    ticks = []
    for i in range(n):
        ts = T0 + timedelta(milliseconds=100 * i)
        ctx.begin(None, key=f"tick|{i}".encode())
        ctx.clock.advance(ts)
        bid = 1.3 + (i % 97) * 1e-5
        ticks.append(ctx.emit(
            MarketDataReceived, symbol=symbols[i % len(symbols)], source="test",
            data=TickData(bid=bid, ask=bid + 1e-4, timestamp=ts),
        ))
    return ticks


class TickStats(Service):
    name = "tick-stats"
    inputs = (MARKET_DATA,)

    def __init__(self, every: int = 100, spin_us: int = 0) -> None:
        self.every = every
        self.spin_us = spin_us
        self.count: dict[str, int] = {}
        self.sum_mid: dict[str, float] = {}
        self.last_id: dict[str, str] = {}

    def handle(self, event, ctx):
        if self.spin_us:
            end = time.perf_counter() + self.spin_us / 1e6
            while time.perf_counter() < end:
                pass
        symbol = event.symbol
        self.count[symbol] = n = self.count.get(symbol, 0) + 1
        self.sum_mid[symbol] = self.sum_mid.get(symbol, 0.0) + (event.data.bid + event.data.ask) / 2
        self.last_id[symbol] = str(event.event_id)
        if n % self.every:
            return []
        return [ctx.emit(FeaturesCalculated, timeframe="tick", group="tick-stats",
                         features={"count": float(n), "mean_mid": self.sum_mid[symbol] / n})]

    def snapshot(self):
        return {"count": self.count, "sum_mid": self.sum_mid, "last_id": self.last_id}

    def restore(self, state):
        self.count = dict(state["count"])
        self.sum_mid = dict(state["sum_mid"])
        self.last_id = dict(state["last_id"])
