"""EMA-cross signal service (R10.2's strategy): BUY/SELL exactly where the fast EMA of the 1m
mid closes crosses the slow one, the EMAs equal to TA-Lib's."""

from __future__ import annotations

import itertools
import math

import msgspec
import numpy as np
import pytest
import talib

from tradepipe.events.envelope import new_event_id, utc_from_ms
from tradepipe.events.types import OHLC, BarClosed, MarketDataReceived, TickData, TradingSignalGenerated
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.data_bridge import DataBridge
from tradepipe.services.ema_cross import EmaCrossSignal, StreamingEma

from .conftest import eurusd_ticks

T0_MS = 1_399_370_400_000  # 2014-05-06 10:00 UTC


def bar(i: int, close: float, *, symbol: str = "EURUSD", timeframe: str = "1m") -> BarClosed:
    """The ``i``-th 1m bar from T0, closed by a tick 1 minute later; bid/ask 1 pip around mid."""
    mid = OHLC(open=close, high=close, low=close, close=close)
    bid = OHLC(open=close - 5e-5, high=close - 5e-5, low=close - 5e-5, close=close - 5e-5)
    ask = OHLC(open=close + 5e-5, high=close + 5e-5, low=close + 5e-5, close=close + 5e-5)
    return BarClosed(
        event_id=new_event_id(), timestamp=utc_from_ms(T0_MS + (i + 1) * 60_000), symbol=symbol,
        correlation_id=new_event_id(), timeframe=timeframe, bar_time=utc_from_ms(T0_MS + i * 60_000),
        bid=bid, ask=ask, mid=mid, tick_count=3, spread_mean=1e-4, spread_max=1e-4,
    )


def feed(service: EmaCrossSignal, events, ctx: Context | None = None) -> list[TradingSignalGenerated]:
    ctx = ctx or Context(service.name)
    out = []
    for event in events:
        ctx.begin(event)
        out.extend(service.handle(event, ctx))
    return out


# fast EMA(2): 10, 10, 10, 9.33, 11.11, 11.70, 9.23, 8.41 (from bar 1)
# slow EMA(4): 10, 9.6, 10.56, 11.136, 9.8816, 9.12896 (from bar 3)
# bar 3 equal (no side), bar 4 below (first side: no cross), bar 5 above: BUY, bar 7 below: SELL
HAND_CLOSES = [10.0, 10.0, 10.0, 10.0, 9.0, 12.0, 12.0, 8.0, 8.0]


def test_it_signals_each_cross_of_a_hand_built_sequence_and_nothing_else():
    bars = [bar(i, c) for i, c in enumerate(HAND_CLOSES)]
    service = EmaCrossSignal(fast=2, slow=4)
    ctx = Context(service.name)
    emitted = {}
    for i, event in enumerate(bars):
        ctx.begin(event)
        for out in service.handle(event, ctx):
            emitted[i] = out
    assert sorted(emitted) == [5, 7]
    buy, sell = emitted[5], emitted[7]
    assert (buy.direction, buy.price, sell.direction, sell.price) == ("BUY", 12.0, "SELL", 8.0)
    for i, signal in emitted.items():
        source = bars[i]
        assert type(signal) is TradingSignalGenerated
        assert (signal.confidence, signal.timeframe, signal.symbol) == (1.0, "1m", "EURUSD")
        assert (signal.bar_time, signal.timestamp) == (source.bar_time, source.timestamp)
        assert (signal.target_price, signal.stop_loss, signal.missing_models) == (None, None, [])
        # the bar's correlation (its closing tick) carries on; the bar is the cause
        assert (signal.correlation_id, signal.causation_id) == (source.correlation_id, source.event_id)
        assert signal.metadata.producer == "ema-cross"
        (contribution,) = signal.contributors
        assert (contribution.model, contribution.direction, contribution.confidence, contribution.weight,
                contribution.producer, contribution.fallback) == (
            "EMA(2/4) cross", signal.direction, 1.0, 1.0, "ema-cross", False)


def test_the_streaming_ema_equals_talib_on_real_closes():
    closes = np.array([t.bid for t in eurusd_ticks(3000)])
    for period in (1, 2, 10, 20, 50):
        ema = StreamingEma(period)
        streamed = np.array([math.nan if v is None else v for v in map(ema.update, closes)])
        np.testing.assert_allclose(streamed, talib.EMA(closes, timeperiod=period), rtol=1e-13, equal_nan=True)
        assert ema.value == streamed[-1]


def expected_crosses(closes: np.ndarray, fast: int, slow: int) -> list[tuple[int, str]]:
    """(bar index, direction) where TA-Lib's fast EMA changes side of its slow EMA."""
    diff = talib.EMA(closes, timeperiod=fast) - talib.EMA(closes, timeperiod=slow)
    crosses, side = [], 0
    for i, d in enumerate(diff):
        if not d == d or d == 0.0:
            continue
        now = 1 if d > 0 else -1
        if side and now != side:
            crosses.append((i, "BUY" if now > 0 else "SELL"))
        side = now
    return crosses


def real_run(services, ticks):
    """Bridge the ticks into a kernel of ``services``; every event the kernel saw, in order."""
    seen = []
    kernel = InProcessPipeline(services, on_event=seen.append)
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    for tick in ticks:
        kernel.feed_all(bridge.handle_tick(tick, ctx))
    return seen


def test_on_real_ticks_in_the_kernel_it_signals_exactly_talibs_crosses_of_the_1m_mid_closes():
    events = real_run([BarBuilder(timeframes=("1m", "5m")), EmaCrossSignal()], eurusd_ticks(40_000))
    bars = [e for e in events if type(e) is BarClosed and e.timeframe == "1m"]
    closes = np.array([b.mid.close for b in bars])
    position = {b.event_id: i for i, b in enumerate(bars)}
    signals = [e for e in events if type(e) is TradingSignalGenerated]
    got = [(position[s.causation_id], s.direction) for s in signals]
    assert len(got) >= 10
    assert got == expected_crosses(closes, 10, 20)
    assert [d for _, d in got] == list(itertools.islice(itertools.cycle(("BUY", "SELL") if got[0][1] == "BUY"
                                                                       else ("SELL", "BUY")), len(got)))
    # each signal follows its bar directly and shares the closing tick's correlation
    for s in signals:
        b = bars[position[s.causation_id]]
        assert s.correlation_id == b.correlation_id and s.price == b.mid.close


def test_ticks_and_bars_of_other_timeframes_are_ignored():
    service = EmaCrossSignal(fast=2, slow=4)
    ctx = Context("test")
    ctx.begin(None, key=b"k")
    at = utc_from_ms(T0_MS)
    tick = ctx.emit(MarketDataReceived, symbol="EURUSD", source="test",
                    data=TickData(bid=1.38, ask=1.3801, timestamp=at), timestamp=at)
    other = [bar(i, c, timeframe="5m") for i, c in enumerate(HAND_CLOSES)]
    assert feed(service, [tick, *other]) == []
    assert service.snapshot() == {}


def test_symbols_are_independent():
    eur = [bar(i, c, symbol="EURUSD") for i, c in enumerate(HAND_CLOSES)]
    nzd = [bar(i, 20.0 - c, symbol="NZDUSD") for i, c in enumerate(HAND_CLOSES)]
    mixed = feed(EmaCrossSignal(fast=2, slow=4), [e for pair in zip(eur, nzd) for e in pair])
    assert [(s.symbol, s.direction) for s in mixed] == [
        ("EURUSD", "BUY"), ("NZDUSD", "SELL"), ("EURUSD", "SELL"), ("NZDUSD", "BUY"),
    ]


def test_a_bar_with_a_nan_close_is_skipped_without_touching_the_emas():
    service = EmaCrossSignal(fast=2, slow=4)
    feed(service, [bar(i, c) for i, c in enumerate(HAND_CLOSES[:5])])
    before = service.snapshot()
    assert feed(service, [bar(5, math.nan), bar(6, math.inf)]) == []
    assert service.snapshot() == before


def test_a_restore_mid_stream_gives_the_same_signals_with_the_same_ids():
    ticks = eurusd_ticks(20_000)
    uninterrupted = real_run([BarBuilder(timeframes=("1m",)), EmaCrossSignal()], ticks)
    whole = [e for e in uninterrupted if type(e) is TradingSignalGenerated]

    bars = [e for e in uninterrupted if type(e) is BarClosed]
    first = EmaCrossSignal()
    ctx = Context(first.name)
    before = feed(first, bars[:200], ctx)
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()))
    restarted = EmaCrossSignal()
    restarted.restore(state)
    after = feed(restarted, bars[200:])
    assert before and after
    assert before + after == whole


def test_bad_periods_are_refused():
    for fast, slow in ((20, 10), (10, 10), (0, 5)):
        with pytest.raises(ValueError):
            EmaCrossSignal(fast=fast, slow=slow)


def test_in_the_kernel_it_is_handed_bars_only():
    class Counting(EmaCrossSignal):
        def __init__(self) -> None:
            super().__init__()
            self.handled: list[str] = []

        def handle(self, event, ctx):
            self.handled.append(type(event).__name__)
            return super().handle(event, ctx)

    service = Counting()
    events = real_run([BarBuilder(timeframes=("1m", "5m")), service], eurusd_ticks(5_000))
    bars = [e for e in events if type(e) is BarClosed]
    assert bars and service.handled == ["BarClosed"] * len(bars)
