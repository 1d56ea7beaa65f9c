"""The bar builder (R4.3): ticks in, BarClosed per timeframe out, by event time.

A BarClosed is emitted by the tick that closes its bar (the first tick of a later bar), so
its timestamp is that tick's time, its correlationId that tick, and ``bar_time`` the bar's
open time; re-reading the same ticks gives the same bars in a backtest and live. Live runners
that go quiet call ``on_timer``: with ``flush_after_s`` set, bars whose end is that long past
(by ``ctx.now()``, the wall clock live) are closed then, without a closing tick (so with no
correlationId). BarClosed events arriving on the same topic are ignored.

:class:`TickBarService` is the shared shape of services that aggregate ticks into bars
themselves (this one and the market microstructure service).
"""

from __future__ import annotations

from typing import Any, ClassVar

from tradepipe.events import MARKET_DATA, Event
from tradepipe.events.envelope import utc_from_ms
from tradepipe.events.types import OHLC, BarClosed, MarketDataReceived
from tradepipe.features.bars import (
    TIMEFRAMES, Accumulator, BarAccumulator, ClosedBar, OpenBars, event_time_ms,
)
from tradepipe.runtime.service import Context, Service


class TickBarService(Service):
    """Feeds every MarketDataReceived to an :class:`OpenBars` of ``accumulator`` and turns
    each bar it closes into one event with :meth:`bar_event`."""

    inputs = (MARKET_DATA,)
    accepts = (MarketDataReceived,)  # not the BarClosed events on the same topic
    accumulator: ClassVar[type[Accumulator]]

    def __init__(self, timeframes: tuple[str, ...] = TIMEFRAMES, flush_after_s: float | None = None) -> None:
        self.bars = OpenBars(self.accumulator, timeframes)
        #: inactivity grace for ``on_timer``; None = bars close on ticks only
        self.flush_after_ms = None if flush_after_s is None else round(flush_after_s * 1000)

    def handle(self, event: Event, ctx: Context) -> list[Event]:
        if type(event) is not MarketDataReceived:
            return []
        tick = event.data
        closed = self.bars.add(event.symbol, event_time_ms(tick.timestamp), tick.bid, tick.ask)
        return [self.bar_event(bar, ctx) for bar in closed] if closed else closed

    def on_timer(self, ctx: Context) -> list[Event]:
        if self.flush_after_ms is None:
            return []
        due = self.bars.flush_due(event_time_ms(ctx.now()), self.flush_after_ms)
        return [self.bar_event(bar, ctx) for bar in due]

    def bar_event(self, bar: ClosedBar[Any], ctx: Context) -> Event:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        return self.bars.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        self.bars.restore(state)


class BarBuilder(TickBarService):
    name = "bar-builder"
    accumulator = BarAccumulator

    def bar_event(self, bar: ClosedBar[BarAccumulator], ctx: Context) -> BarClosed:
        v = bar.values
        return ctx.emit(
            BarClosed,
            symbol=bar.symbol,
            timeframe=bar.timeframe,
            bar_time=utc_from_ms(bar.start_ms),
            bid=OHLC(open=v.bid_open, high=v.bid_high, low=v.bid_low, close=v.bid_close),
            ask=OHLC(open=v.ask_open, high=v.ask_high, low=v.ask_low, close=v.ask_close),
            mid=OHLC(open=v.mid_open, high=v.mid_high, low=v.mid_low, close=v.mid_close),
            tick_count=v.tick_count,
            spread_mean=v.spread_mean,
            spread_max=v.spread_max,
        )


__all__ = ["BarBuilder", "TickBarService"]
