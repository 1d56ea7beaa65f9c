"""Bars from ticks (R4.3): per (symbol, timeframe) accumulators, bucketed by event time.

Pure and O(1) per tick. A tick at ``ts_ms`` belongs to the bar ``bucket(ts_ms, tf_ms) =
ts_ms // tf_ms`` of each timeframe: bars are aligned on the UTC epoch, so a 1h bar starts on
the hour and a 5m bar on a multiple of five minutes. A bar closes when a tick of a later
bucket arrives, so a gap (a weekend) closes the open bar and no empty bars are invented; live
feeds can also close bars on inactivity with :meth:`OpenBars.flush_due`.

:class:`OpenBars` is the bucketing engine, generic over what a bar accumulates: the bar
builder's :class:`BarAccumulator` (bid/ask/mid OHLC, tick count, spread) and the
microstructure statistics (:mod:`tradepipe.features.microstructure`) share it, so both see
exactly the same bars.

Odd input never raises. A tick with a NaN or infinite price is skipped and counted in
``skipped_not_finite``. A tick older than the start of a bar that is open (or the end of one
closed by a flush) would belong to a bar already emitted, or reopen it: it is left out of
every timeframe, so counts stay consistent across timeframes, and counted in
``dropped_out_of_order``. Duplicates are the data bridge's business: whatever it lets through
counts as a tick.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, NamedTuple, Self, TypeVar

from tradepipe.events.envelope import ms_from_utc
from tradepipe.sources.files import timeframe_ms

TIMEFRAMES = ("1m", "5m", "15m", "1h")


#: UTC epoch milliseconds of a datetime, floored, in exact integer arithmetic
#: (``int(moment.timestamp() * 1000)`` can land 1 ms low through float rounding); a tick's
#: timestamp made by ``utc_from_ms`` is answered from its memo. An alias, not a wrapper: it
#: runs once per tick.
event_time_ms = ms_from_utc


def bucket(ts_ms: int, tf_ms: int) -> int:
    """Index of the bar of length ``tf_ms`` that holds ``ts_ms`` (bars aligned on the UTC epoch)."""
    return ts_ms // tf_ms


class Accumulator:
    """Base of what one open bar accumulates; subclasses list their state in ``__slots__``.

    Subclasses open with the bar's first tick, ``__init__(bid, ask, mid, spread, *extra)``,
    and take each further tick with ``add(bid, ask, mid, spread, *extra)``.
    """

    __slots__: ClassVar[tuple[str, ...]] = ()

    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_list(cls, values: list[Any]) -> Self:
        accumulator = object.__new__(cls)
        for name, value in zip(cls.__slots__, values, strict=True):
            setattr(accumulator, name, value)
        return accumulator


class BarAccumulator(Accumulator):
    """Bid, ask and mid OHLC, tick count, and spread sum and maximum of one bar."""

    __slots__ = (
        "bid_open", "bid_high", "bid_low", "bid_close",
        "ask_open", "ask_high", "ask_low", "ask_close",
        "mid_open", "mid_high", "mid_low", "mid_close",
        "tick_count", "spread_sum", "spread_max",
    )

    def __init__(self, bid: float, ask: float, mid: float, spread: float) -> None:
        self.bid_open = self.bid_high = self.bid_low = self.bid_close = bid
        self.ask_open = self.ask_high = self.ask_low = self.ask_close = ask
        self.mid_open = self.mid_high = self.mid_low = self.mid_close = mid
        self.tick_count = 1
        self.spread_sum = self.spread_max = spread

    def add(self, bid: float, ask: float, mid: float, spread: float) -> None:
        if bid > self.bid_high:
            self.bid_high = bid
        elif bid < self.bid_low:
            self.bid_low = bid
        if ask > self.ask_high:
            self.ask_high = ask
        elif ask < self.ask_low:
            self.ask_low = ask
        if mid > self.mid_high:
            self.mid_high = mid
        elif mid < self.mid_low:
            self.mid_low = mid
        self.bid_close = bid
        self.ask_close = ask
        self.mid_close = mid
        self.tick_count += 1
        self.spread_sum += spread
        if spread > self.spread_max:
            self.spread_max = spread

    @property
    def spread_mean(self) -> float:
        return self.spread_sum / self.tick_count


A = TypeVar("A", bound=Accumulator)


class ClosedBar(NamedTuple, Generic[A]):
    symbol: str
    timeframe: str
    start_ms: int  # the bar's open time
    length_ms: int
    values: A


NO_END = -(1 << 62)  # before any tick time: no tick takes the fast path of OpenBars.add


class _SymbolBars:
    """The open bars of one symbol: ``buckets[i]``/``accumulators[i]`` for timeframe i (None
    when no bar is open), and ``floor_ms``, the time before which a tick is out of order.

    ``until_ms`` is the earliest end of the open bars (``NO_END`` while a timeframe has none): a
    tick in [floor_ms, until_ms) lies inside every open bar (each starts at or before
    ``floor_ms``), so it closes nothing and only updates them. That is nearly every tick, and
    the test replaces a bucket division per timeframe.
    """

    __slots__ = ("floor_ms", "until_ms", "buckets", "accumulators")

    def __init__(self, timeframe_count: int) -> None:
        self.floor_ms = 0
        self.until_ms = NO_END
        self.buckets: list[int | None] = [None] * timeframe_count
        self.accumulators: list[Any] = [None] * timeframe_count

    def update_until(self, lengths_ms: tuple[int, ...]) -> None:
        buckets = self.buckets
        self.until_ms = NO_END if None in buckets else min(
            (index + 1) * length_ms for index, length_ms in zip(buckets, lengths_ms)
        )


class OpenBars(Generic[A]):
    """The open bars of every (symbol, timeframe), each an ``accumulator`` instance."""

    def __init__(self, accumulator: type[A], timeframes: tuple[str, ...] = TIMEFRAMES) -> None:
        self.accumulator = accumulator
        self.timeframes = tuple(timeframes)
        self.lengths_ms = tuple(timeframe_ms(tf) for tf in self.timeframes)
        self._symbols: dict[str, _SymbolBars] = {}
        self.skipped_not_finite = 0
        self.dropped_out_of_order = 0

    def add(self, symbol: str, ts_ms: int, bid: float, ask: float, *extra: Any) -> list[ClosedBar[A]]:
        """Take one tick; the bars it closed, in the order of ``timeframes``."""
        mid = (bid + ask) * 0.5
        # NaN or inf in either price makes ``mid - mid`` NaN (inf - inf is NaN): one test.
        if mid - mid != 0.0:
            self.skipped_not_finite += 1
            return []
        bars = self._symbols.get(symbol)
        if bars is None:
            bars = self._symbols[symbol] = _SymbolBars(len(self.lengths_ms))
        elif bars.floor_ms <= ts_ms < bars.until_ms:  # inside every open bar: the common case
            spread = ask - bid
            if extra:
                for accumulator in bars.accumulators:
                    accumulator.add(bid, ask, mid, spread, *extra)
            else:  # a call without ``*()`` is cheaper
                for accumulator in bars.accumulators:
                    accumulator.add(bid, ask, mid, spread)
            return []
        elif ts_ms < bars.floor_ms:
            self.dropped_out_of_order += 1
            return []
        spread = ask - bid
        buckets = bars.buckets
        accumulators = bars.accumulators
        closed: list[ClosedBar[A]] = []
        for i, length_ms in enumerate(self.lengths_ms):
            index = bucket(ts_ms, length_ms)
            if index == buckets[i]:
                accumulators[i].add(bid, ask, mid, spread, *extra)
                continue
            if accumulators[i] is not None:
                start_ms = buckets[i] * length_ms
                closed.append(ClosedBar(symbol, self.timeframes[i], start_ms, length_ms, accumulators[i]))
            buckets[i] = index
            accumulators[i] = self.accumulator(bid, ask, mid, spread, *extra)
            if index * length_ms > bars.floor_ms:
                bars.floor_ms = index * length_ms
        bars.update_until(self.lengths_ms)
        return closed

    def flush_due(self, now_ms: int, grace_ms: int) -> list[ClosedBar[A]]:
        """Close every open bar whose end + ``grace_ms`` is at or before ``now_ms`` (for live
        feeds that go quiet); ordered by symbol, then timeframe. A later tick that falls in a
        flushed bar is out of order: the bar was already emitted."""
        closed: list[ClosedBar[A]] = []
        for symbol, bars in self._symbols.items():
            for i, length_ms in enumerate(self.lengths_ms):
                index = bars.buckets[i]
                if index is None or (index + 1) * length_ms + grace_ms > now_ms:
                    continue
                start_ms = index * length_ms
                closed.append(ClosedBar(symbol, self.timeframes[i], start_ms, length_ms, bars.accumulators[i]))
                bars.buckets[i] = bars.accumulators[i] = None
                bars.floor_ms = max(bars.floor_ms, start_ms + length_ms)
                bars.until_ms = NO_END
        return closed

    def open_bar(self, symbol: str, timeframe: str) -> A | None:
        """The accumulator of ``symbol``'s open bar of ``timeframe``, if one is open."""
        bars = self._symbols.get(symbol)
        return None if bars is None else bars.accumulators[self.timeframes.index(timeframe)]

    def snapshot(self) -> dict[str, Any]:
        """Plain lists and dicts: counters, and per symbol its floor and open bars by timeframe."""
        return {
            "skipped_not_finite": self.skipped_not_finite,
            "dropped_out_of_order": self.dropped_out_of_order,
            "symbols": [
                [symbol, bars.floor_ms, {
                    timeframe: [index, accumulator.to_list()]
                    for timeframe, index, accumulator in zip(self.timeframes, bars.buckets, bars.accumulators)
                    if accumulator is not None
                }]
                for symbol, bars in self._symbols.items()
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`; bars of timeframes not configured here are ignored."""
        self.skipped_not_finite = state["skipped_not_finite"]
        self.dropped_out_of_order = state["dropped_out_of_order"]
        self._symbols = {}
        for symbol, floor_ms, open_bars in state["symbols"]:
            bars = self._symbols[symbol] = _SymbolBars(len(self.lengths_ms))
            bars.floor_ms = floor_ms
            for i, timeframe in enumerate(self.timeframes):
                if timeframe in open_bars:
                    index, values = open_bars[timeframe]
                    bars.buckets[i] = index
                    bars.accumulators[i] = self.accumulator.from_list(values)
            bars.update_until(self.lengths_ms)


__all__ = [
    "TIMEFRAMES", "Accumulator", "BarAccumulator", "ClosedBar", "OpenBars", "bucket", "event_time_ms",
]
