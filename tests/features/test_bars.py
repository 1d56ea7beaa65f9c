"""The bar builder on the real EURUSD ticks of May 2014, checked against the provider's own
M1 bars, and on handcrafted ticks for out-of-order, NaN, new symbols and inactivity flushes."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path

import msgspec
import pytest

from tradepipe.events.envelope import utc_from_ms
from tradepipe.events.types import OHLC, BarClosed, MarketDataReceived, TickData
from tradepipe.features.bars import TIMEFRAMES, BarAccumulator, OpenBars, event_time_ms
from tradepipe.runtime.clock import EventClock
from tradepipe.runtime.service import Context, Service
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.data_bridge import DataBridge
from tradepipe.sources.files import read_bars, read_ticks, timeframe_ms

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EURUSD_TICKS = DATA_DIR / "eurusd_ticks_2014-05.csv.gz"
EURUSD_M1 = DATA_DIR / "eurusd_m1_2014-05.csv.gz"

T0 = 1_399_284_000_000  # 2014-05-05 10:00:00 UTC
SECOND = 1000
MINUTE = 60_000


def market_data(path: Path) -> list[MarketDataReceived]:
    """The ticks of a real file as the data bridge publishes them."""
    bridge, ctx = DataBridge(), Context("data-bridge")
    return [event for raw in read_ticks(path) for event in bridge.handle_tick(raw, ctx)]


def make_tick(ts_ms: int, bid: float, ask: float, symbol: str = "EURUSD") -> MarketDataReceived:
    """A root tick event as the bridge builds one (no validation: these tests feed odd ones)."""
    ctx = Context("data-bridge")
    ctx.begin(None, key=f"{symbol}|{ts_ms}|{bid}|{ask}".encode())
    at = utc_from_ms(ts_ms)
    ctx.clock.advance(at)
    data = TickData(bid=bid, ask=ask, timestamp=at)
    return ctx.emit(MarketDataReceived, symbol=symbol, source="test", data=data)


def run(service: Service, events, ctx: Context | None = None) -> list[tuple[int, list]]:
    """(index of the input, its outputs) for every input that produced some, as a runner
    calls the service."""
    ctx = ctx or Context(service.name)
    produced = []
    for index, event in enumerate(events):
        ctx.begin(event)
        outputs = service.handle(event, ctx)
        if outputs:
            produced.append((index, outputs))
    return produced


def outputs_after_restart(make_service: Callable[[], Service], events, split: int) -> tuple[list, list]:
    """Outputs for ``events[split:]`` of an uninterrupted service, and of one restored at
    ``split`` from the first one's snapshot (through msgspec JSON, as a checkpoint stores it)."""
    uninterrupted = make_service()
    run(uninterrupted, events[:split])
    state = msgspec.json.decode(msgspec.json.encode(uninterrupted.snapshot()))
    restarted = make_service()
    restarted.restore(state)
    return run(uninterrupted, events[split:]), run(restarted, events[split:])


@pytest.fixture(scope="module")
def ticks() -> list[MarketDataReceived]:
    return market_data(EURUSD_TICKS)


@pytest.fixture(scope="module")
def built(ticks) -> tuple[BarBuilder, list[tuple[int, list[BarClosed]]]]:
    builder = BarBuilder()
    return builder, run(builder, ticks)


@pytest.fixture(scope="module")
def bars_by_timeframe(built) -> dict[str, list[BarClosed]]:
    _, produced = built
    bars = [bar for _, outputs in produced for bar in outputs]
    return {tf: [bar for bar in bars if bar.timeframe == tf] for tf in TIMEFRAMES}


def test_1m_bars_equal_the_providers_m1_bars(bars_by_timeframe):
    provider = list(read_bars(EURUSD_M1))
    ours = bars_by_timeframe["1m"]
    assert len(ours) == len(provider) - 1 == 15_365  # the last bar is still open
    for bar, m1 in zip(ours, provider):
        assert bar.bar_time == utc_from_ms(m1.ts_ms)
        assert bar.bid == OHLC(open=m1.open, high=m1.high, low=m1.low, close=m1.close)
        assert bar.tick_count == m1.volume
        assert bar.ask.close - bar.bid.close == pytest.approx(m1.spread, abs=1e-9)


def _merged(parts: list[OHLC]) -> OHLC:
    return OHLC(
        open=parts[0].open,
        high=max(p.high for p in parts),
        low=min(p.low for p in parts),
        close=parts[-1].close,
    )


@pytest.mark.parametrize("timeframe", ["5m", "15m", "1h"])
def test_higher_timeframes_aggregate_the_1m_bars(bars_by_timeframe, timeframe):
    length = timeframe_ms(timeframe)
    def bar_index(bar: BarClosed) -> int:
        return event_time_ms(bar.bar_time) // length

    groups = [(index, list(minutes)) for index, minutes in groupby(bars_by_timeframe["1m"], key=bar_index)]
    ours = bars_by_timeframe[timeframe]
    assert len(ours) == len(groups) - 1  # the last group lacks the open 1m bar; its bar is open
    for bar, (index, minutes) in zip(ours, groups):
        assert bar.bar_time == utc_from_ms(index * length)
        assert bar.bid == _merged([m.bid for m in minutes])
        assert bar.ask == _merged([m.ask for m in minutes])
        assert bar.mid == _merged([m.mid for m in minutes])
        assert bar.tick_count == sum(m.tick_count for m in minutes)
        assert bar.spread_max == max(m.spread_max for m in minutes)
        assert bar.spread_mean == pytest.approx(
            sum(m.spread_mean * m.tick_count for m in minutes) / bar.tick_count, rel=1e-12
        )


def test_bars_exist_only_where_there_are_ticks(ticks, bars_by_timeframe):
    for timeframe in TIMEFRAMES:
        length = timeframe_ms(timeframe)
        tick_bars = {event_time_ms(t.data.timestamp) // length * length for t in ticks}
        ours = [event_time_ms(bar.bar_time) for bar in bars_by_timeframe[timeframe]]
        assert len(ours) == len(set(ours)) == len(tick_bars) - 1
        assert set(ours) < tick_bars


def test_weekend_gap_closes_the_friday_bars(ticks, built):
    _, produced = built
    friday_close = datetime.fromisoformat("2014-05-02T21:00:00+00:00")
    first_after = next(i for i, t in enumerate(ticks) if t.data.timestamp >= friday_close)
    last_friday = ticks[first_after - 1].data.timestamp
    sunday = ticks[first_after].data.timestamp
    assert sunday - last_friday > timedelta(hours=47)
    outputs = dict(produced)[first_after]
    assert [bar.timeframe for bar in outputs] == list(TIMEFRAMES)
    for bar in outputs:
        length = timeframe_ms(bar.timeframe)
        assert event_time_ms(bar.bar_time) == event_time_ms(last_friday) // length * length
        assert bar.timestamp == sunday
    # nothing is emitted for the weekend: the next bars are emitted by Sunday's ticks, for Sunday
    later = [bar for i, outputs in produced if i > first_after for bar in outputs]
    assert min(bar.bar_time for bar in later) >= sunday.replace(second=0, microsecond=0)


def test_bar_events_carry_the_closing_tick(ticks, built):
    _, produced = built
    for index, outputs in produced:
        tick = ticks[index]
        timeframes = [bar.timeframe for bar in outputs]
        assert timeframes == [tf for tf in TIMEFRAMES if tf in timeframes]  # ordered, one each
        for bar in outputs:
            assert bar.timestamp == tick.timestamp == tick.data.timestamp
            assert bar.correlation_id == bar.causation_id == tick.event_id
            assert bar.symbol == "EURUSD"
            assert bar.bar_time + timedelta(milliseconds=timeframe_ms(bar.timeframe)) <= tick.timestamp


def test_all_ticks_are_used_and_bar_events_are_ignored(ticks, built, bars_by_timeframe):
    builder, _ = built
    still_open = builder.bars.open_bar("EURUSD", "1m").tick_count
    assert sum(bar.tick_count for bar in bars_by_timeframe["1m"]) + still_open == len(ticks)
    assert (builder.bars.dropped_out_of_order, builder.bars.skipped_not_finite) == (0, 0)
    before = builder.snapshot()
    assert all(builder.handle(bar, Context(builder.name)) == [] for bar in bars_by_timeframe["1h"][:5])
    assert builder.snapshot() == before


def test_snapshot_restore_mid_stream_gives_the_same_events(ticks):
    uninterrupted, restarted = outputs_after_restart(BarBuilder, ticks[:40_000], split=23_456)
    assert len(uninterrupted) > 500
    assert restarted == uninterrupted


def test_out_of_order_tick_does_not_corrupt_bars():
    builder = BarBuilder(timeframes=("1m", "5m"))
    closed = run(builder, [
        make_tick(T0 + 5 * SECOND, 1.1000, 1.1001),
        make_tick(T0 + 70 * SECOND, 1.1002, 1.1003),  # closes 10:00 (1m)
        make_tick(T0 + 30 * SECOND, 1.2000, 1.2001),  # belongs to the closed 10:00 bar: dropped
        make_tick(T0 + 65 * SECOND, 1.0000, 1.0001),  # before the last tick, in the open bar: kept
        make_tick(T0 + 5 * MINUTE, 1.1004, 1.1005),  # closes 10:01 (1m) and 10:00 (5m)
    ])
    assert builder.bars.dropped_out_of_order == 1
    (_, [first]), (_, [minute, five]) = closed
    assert first.bid == OHLC(open=1.1000, high=1.1000, low=1.1000, close=1.1000)
    assert (minute.bid, minute.tick_count) == (OHLC(open=1.1002, high=1.1002, low=1.0000, close=1.0000), 2)
    assert (five.bid, five.tick_count) == (OHLC(open=1.1000, high=1.1002, low=1.0000, close=1.0000), 3)


def test_nan_price_is_skipped_and_counted():
    builder = BarBuilder(timeframes=("1m",))
    closed = run(builder, [
        make_tick(T0, 1.1000, 1.1002),
        make_tick(T0 + SECOND, math.nan, 1.1002),
        make_tick(T0 + 2 * SECOND, 1.1000, math.inf),
        make_tick(T0 + MINUTE, 1.1001, 1.1003),
    ])
    assert builder.bars.skipped_not_finite == 2
    [(_, [bar])] = closed
    assert (bar.tick_count, bar.spread_max, bar.ask.high) == (1, 1.1002 - 1.1000, 1.1002)


def test_symbol_appearing_mid_stream_starts_its_own_bars():
    builder = BarBuilder(timeframes=("1m",))
    closed = run(builder, [
        make_tick(T0, 1.1000, 1.1002),
        make_tick(T0 + 3 * MINUTE, 1.5000, 1.5003, symbol="GBPUSD"),  # its first tick closes nothing
        make_tick(T0 + 3 * MINUTE + SECOND, 1.1001, 1.1003),  # closes EURUSD's 10:00 bar
        make_tick(T0 + 4 * MINUTE, 1.5001, 1.5004, symbol="GBPUSD"),  # closes GBPUSD's 10:03 bar
    ])
    assert [(i, bar.symbol, bar.bar_time, bar.tick_count) for i, [bar] in closed] == [
        (2, "EURUSD", utc_from_ms(T0), 1),
        (3, "GBPUSD", utc_from_ms(T0 + 3 * MINUTE), 1),
    ]


def test_inactivity_flush_on_timer():
    builder = BarBuilder(timeframes=("1m", "5m"), flush_after_s=5)
    run(builder, [make_tick(T0 + 5 * SECOND, 1.1000, 1.1002), make_tick(T0 + 30 * SECOND, 1.1001, 1.1002)])
    wall = EventClock()
    timer_ctx = Context(builder.name, wall)
    wall.advance(utc_from_ms(T0 + MINUTE + 4_999))
    assert builder.on_timer(timer_ctx) == []  # 10:01:00 + 5 s grace has not passed yet
    wall.advance(utc_from_ms(T0 + MINUTE + 5 * SECOND))
    [bar] = builder.on_timer(timer_ctx)
    assert (bar.symbol, bar.timeframe, bar.bar_time, bar.tick_count) == ("EURUSD", "1m", utc_from_ms(T0), 2)
    assert bar.timestamp == wall.now()
    assert builder.on_timer(timer_ctx) == []  # flushed once
    # a late tick of the flushed bar would reopen an emitted bar: dropped
    assert run(builder, [make_tick(T0 + 59 * SECOND, 1.1003, 1.1004)]) == []
    assert builder.bars.dropped_out_of_order == 1
    # the next minute opens normally and the 5m bar, still open, holds every kept tick
    run(builder, [make_tick(T0 + 90 * SECOND, 1.1005, 1.1006)])
    [(_, [minute, five])] = run(builder, [make_tick(T0 + 5 * MINUTE, 1.1000, 1.1001)])
    assert (minute.bar_time, minute.tick_count, five.tick_count) == (utc_from_ms(T0 + MINUTE), 1, 3)


def test_no_flush_without_flush_after():
    builder = BarBuilder()
    run(builder, [make_tick(T0, 1.1000, 1.1002)])
    wall = EventClock(utc_from_ms(T0 + 24 * 3600 * SECOND))
    assert builder.on_timer(Context(builder.name, wall)) == []


def test_open_bars_snapshot_is_plain_data():
    bars = OpenBars(BarAccumulator, ("1m",))
    bars.add("EURUSD", T0, 1.1000, 1.1002)
    state = bars.snapshot()
    assert msgspec.json.decode(msgspec.json.encode(state)) == state
    assert state["symbols"][0][:2] == ["EURUSD", T0]
