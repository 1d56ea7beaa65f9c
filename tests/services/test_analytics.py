"""Performance analytics (R7.4): positions marked to the last quote, equity sampled in event
time, hit rates against realized moves, PerformanceCalculated on the interval."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from tradepipe.config import AnalyticsSettings, Settings
from tradepipe.events.types import (
    OHLC, BarClosed, MarketDataReceived, ModelInfo, OrderExecuted, PerformanceCalculated, PositionClosed, Prediction,
    PredictionGenerated, TickData, TradingSignalGenerated,
)
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import Checkpoint
from tradepipe.services.analytics import PerformanceAnalytics
from tradepipe.trading.performance import periods_per_year, sharpe

T0 = datetime(2014, 5, 6, 10, 0, tzinfo=timezone.utc)
BAND = 0.35e-4


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def emit(cls, seconds: float, symbol: str = "EURUSD", **fields):
    """An event of ``cls`` at T0 + ``seconds``, with real ids."""
    ctx = Context("test")
    ctx.begin(None, key=f"{cls.__name__}|{symbol}|{seconds}|{sorted(fields)}|{fields.get('order_id')}".encode())
    ctx.clock.advance(at(seconds))
    return ctx.emit(cls, symbol=symbol, **fields)


def tick(seconds: float, bid: float, ask: float, symbol: str = "EURUSD") -> MarketDataReceived:
    return emit(MarketDataReceived, seconds, symbol, source="test", data=TickData(bid=bid, ask=ask, timestamp=at(seconds)))


def bar(minute: int, close: float, timeframe: str = "1m", symbol: str = "EURUSD") -> BarClosed:
    """The ``minute``th 1m bar from T0, closed at its end."""
    ohlc = OHLC(open=close, high=close, low=close, close=close)
    return emit(BarClosed, 60 * (minute + 1), symbol, timeframe=timeframe, bar_time=T0 + timedelta(minutes=minute),
                bid=ohlc, ask=ohlc, mid=ohlc, tick_count=10, spread_mean=0.0001, spread_max=0.0002)


def prediction(minute: int, model: str, direction: str, price: float, *, fallback: bool = False) -> PredictionGenerated:
    return emit(PredictionGenerated, 60 * (minute + 1), prediction=Prediction(
        direction=direction, confidence=0.6, time_horizon="5m"), model=ModelInfo(name=model), fallback=fallback,
        timeframe="1m", bar_time=T0 + timedelta(minutes=minute), price=price)


def signal(minute: int, direction: str, price: float) -> TradingSignalGenerated:
    return emit(TradingSignalGenerated, 60 * (minute + 1), direction=direction, confidence=0.6, timeframe="1m",
                bar_time=T0 + timedelta(minutes=minute), price=price)


def fill(seconds: float, order_id: str, position_id: str, side: str, price: float, volume: float = 100_000,
         commission: float = 4.0) -> OrderExecuted:
    return emit(OrderExecuted, seconds, order_id=order_id, position_id=position_id, side=side, volume=volume,
                price=price, commission=commission)


def closed(seconds: float, position_id: str, pnl: float, *, entry: float, exit: float, volume: float = 100_000,
           side: str = "BUY") -> PositionClosed:
    return emit(PositionClosed, seconds, position_id=position_id, side=side, volume=volume, entry_price=entry,
                exit_price=exit, pnl=pnl, order_id="close-" + position_id, opened_at=at(30))


def analytics(interval_s: float = 3600.0) -> PerformanceAnalytics:
    return PerformanceAnalytics(AnalyticsSettings(interval_s=interval_s), initial_equity=100_000.0, horizon_bars=5,
                                dead_band=BAND)


def feed(service: PerformanceAnalytics, events) -> list:
    outputs: list = []
    inputs = {id(e) for e in events}
    InProcessPipeline([service], on_event=lambda e: outputs.append(e) if id(e) not in inputs else None).feed_all(events)
    return outputs


# a long round trip: bought 100k at the ask 1.3802 (commission 4), sold at 1.3830 (commission 4)
ROUND_TRIP = [
    tick(0, 1.3800, 1.3802),
    fill(30, "o1", "o1", "BUY", 1.3802),
    tick(45, 1.3810, 1.3812),
    tick(70, 1.3790, 1.3792),  # crosses 60 s: sample 100,076 (as of the 45 s tick)
    tick(130, 1.3830, 1.3832),  # crosses 120 s: sample 99,876
    fill(150, "o2", "o1", "SELL", 1.3830),
    closed(150, "o1", 272.0, entry=1.3802, exit=1.3830),
    tick(190, 1.3835, 1.3837),  # crosses 180 s: sample 100,272
]


def test_a_round_trip_is_marked_to_the_bid_then_realized():
    service = analytics()
    feed(service, ROUND_TRIP[:3])
    assert service.unrealized_pnl() == pytest.approx(80.0 - 4.0)  # (1.3810 - 1.3802) x 100k - entry commission
    feed(service, ROUND_TRIP[3:4])
    assert service.unrealized_pnl() == pytest.approx(-120.0 - 4.0)
    feed(service, ROUND_TRIP[4:6])
    assert service.unrealized_pnl() == pytest.approx(280.0 - 8.0)  # frozen at the closing fill, both commissions
    assert service.realized_pnl == 0.0
    feed(service, ROUND_TRIP[6:])
    assert (service.realized_pnl, service.unrealized_pnl(), service.positions, service.quotes) == (272.0, 0.0, {}, {})
    assert service.equity() == pytest.approx(100_272.0)
    assert service.curve_ms == [event_ms(0), event_ms(60), event_ms(120), event_ms(150), event_ms(180)]
    assert service.curve_equity == pytest.approx([100_000, 100_076, 99_876, 100_272, 100_272])
    s = service.summary()
    assert s["max_drawdown"] == pytest.approx(200 / 100_076)
    assert (s["max_drawdown_peak"], s["max_drawdown_trough"]) == (at(60).isoformat(), at(120).isoformat())
    assert s["trades"] == 1 and s["win_rate"] == 1.0 and s["profit_factor"] is None and s["average_win"] == 272.0
    assert s["exposure"] == pytest.approx(120 / 190)  # open from 30 s to 150 s of 0..190 s
    # Sharpe from the samples of the fixed grid only (not the PositionClosed point)
    assert s["sharpe"] == pytest.approx(sharpe([100_000, 100_076, 99_876, 100_272], periods_per_year(60)))
    assert s["returns_sampled"] == 3 and s["sortino"] is not None


def event_ms(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1000)


def test_a_short_is_marked_to_the_ask_and_a_loss_counts_in_drawdown_and_profit_factor():
    service = analytics()
    feed(service, [tick(0, 1.3800, 1.3802), fill(10, "s1", "s1", "SELL", 1.3800, commission=0.0),
                   tick(20, 1.3805, 1.3807)])
    assert service.unrealized_pnl() == pytest.approx(-70.0)  # buy back at the ask 1.3807
    feed(service, [fill(30, "s2", "s1", "BUY", 1.3808, commission=0.0),
                   closed(30, "s1", -80.0, entry=1.38, exit=1.3808, side="SELL"),
                   fill(40, "b1", "b1", "BUY", 1.3802, commission=0.0), closed(50, "b1", 50.0, entry=1.38, exit=1.3807)])
    s = service.summary()
    assert s["trades"] == 2 and s["win_rate"] == 0.5 and s["profit_factor"] == pytest.approx(50 / 80)
    assert s["realized_pnl"] == pytest.approx(-30.0) and s["max_drawdown"] == pytest.approx(80 / 100_000)
    assert s["average_loss"] == -80.0


def test_a_close_of_an_unknown_position_still_counts_and_does_not_crash():
    service = analytics()
    feed(service, [tick(0, 1.38, 1.3802), fill(5, "x2", "x1", "SELL", 1.38), closed(5, "x1", 10.0, entry=1.3, exit=1.3)])
    assert service.realized_pnl == 10.0 and service.unknown_positions == 2 and service.positions == {}


def test_hit_rates_of_each_model_and_the_ensemble_against_later_bars():
    service = analytics()
    events = [
        bar(0, 1.3801),
        prediction(0, "XGBoost-v1", "BUY", 1.3801), prediction(0, "LightGBM-v1", "SELL", 1.3801),
        prediction(0, "LSTM-v1", "HOLD", 1.3801), prediction(0, "TrendRule", "BUY", 1.3801, fallback=True),
        signal(0, "BUY", 1.3801),
        bar(4, 1.3700),  # 4 minutes: not yet
        bar(1, 1.3811, timeframe="5m"),  # another series: resolves nothing
    ]
    feed(service, events)
    assert service.hits == {}
    feed(service, [bar(5, 1.3811),  # +7.2 bp: BUY was right
                   prediction(5, "XGBoost-v1", "SELL", 1.3811), prediction(5, "LightGBM-v1", "SELL", 1.3811),
                   prediction(5, "LSTM-v1", "HOLD", 1.3811), signal(5, "HOLD", 1.3811),
                   bar(10, 1.3811 * (1 + 0.3e-4))])  # +0.3 bp: inside the band, HOLD was right
    rates = service.summary()["hit_rates"]
    assert set(rates) == {"XGBoost-v1", "LightGBM-v1", "LSTM-v1", "ensemble"}  # fallbacks are not scored
    assert rates["XGBoost-v1"] == {"resolved": 2, "hits": 1, "directional": 2, "directional_hits": 1, "holds": 0,
                                   "hit_rate": 0.5, "hit_rate_all": 0.5}
    assert (rates["LightGBM-v1"]["hit_rate"], rates["LightGBM-v1"]["hit_rate_all"]) == (0.0, 0.0)
    assert (rates["LSTM-v1"]["hit_rate"], rates["LSTM-v1"]["hit_rate_all"], rates["LSTM-v1"]["holds"]) == (None, 0.5, 2)
    assert (rates["ensemble"]["hit_rate"], rates["ensemble"]["directional"], rates["ensemble"]["hit_rate_all"]) == (1.0, 1, 1.0)
    metrics = service.metrics()
    assert metrics["hit_rate_XGBoost-v1"] == 0.5 and metrics["hit_rate_ensemble"] == 1.0
    assert metrics["hit_rate_LSTM-v1"] is None and metrics["hit_rate_all_LSTM-v1"] == 0.5


def test_performance_is_emitted_every_interval_of_event_time_by_the_event_that_crossed_it():
    service = analytics(interval_s=600)
    ticks = [tick(s, 1.38, 1.3802) for s in range(0, 2000, 250)] + [tick(9000, 1.38, 1.3802)]
    out = feed(service, ticks)
    reports = [e for e in out if type(e) is PerformanceCalculated]
    # due at 600 s, 1200 s, 1800 s (T0 is on the grid): the first events at or after them,
    # and one report for the whole gap to 9000 s
    assert len(out) == len(reports) == 3
    assert [r.causation_id for r in reports] == [ticks[i].event_id for i in (3, 5, 8)]
    assert [r.timestamp for r in reports] == [at(750), at(1250), at(9000)]
    first = reports[0]
    assert first.correlation_id is None and first.symbol is None and first.metadata.producer == "performance-analytics"
    assert (first.equity, first.realized_pnl, first.unrealized_pnl, first.trades) == (100_000.0, 0.0, 0.0, 0)
    assert set(first.metrics) >= {"sharpe", "sortino", "max_drawdown", "win_rate", "profit_factor", "exposure"}
    assert first.metrics["exposure"] == 0.0 and first.metrics["sharpe"] is None  # flat equity


def test_performance_reports_carry_the_pnl_of_the_moment():
    service = analytics(interval_s=60)
    out = feed(service, ROUND_TRIP)
    reports = [e for e in out if type(e) is PerformanceCalculated]
    assert [r.timestamp for r in reports] == [at(70), at(130), at(190)]
    assert [r.unrealized_pnl for r in reports] == pytest.approx([76.0, -124.0, 0.0])  # as of the crossing
    assert reports[-1].realized_pnl == 272.0 and reports[-1].trades == 1 and reports[-1].equity == pytest.approx(100_272)


def scenario() -> list:
    """Trades, quotes and predictions interleaved in time order."""
    events = [*ROUND_TRIP[:5], bar(0, 1.3801), prediction(0, "XGBoost-v1", "BUY", 1.3801), signal(0, "SELL", 1.3801),
              *ROUND_TRIP[5:], fill(200, "o3", "o3", "SELL", 1.3835), tick(230, 1.3820, 1.3822)]
    events += [tick(60 * m + 20, 1.3820 + 0.0001 * (m % 3), 1.3822 + 0.0001 * (m % 3)) for m in range(4, 12)]
    events += [bar(6, 1.3822), prediction(6, "XGBoost-v1", "SELL", 1.3822), tick(800, 1.3800, 1.3802),
               fill(810, "o4", "o3", "BUY", 1.3803), closed(810, "o3", 24.0, entry=1.3835, exit=1.3803, side="SELL"),
               bar(12, 1.3802), tick(900, 1.3801, 1.3803)]
    return sorted(events, key=lambda e: e.timestamp)


def test_a_restore_mid_run_continues_as_if_uninterrupted():
    events = scenario()
    whole = analytics(interval_s=120)
    whole_out = feed(whole, events)
    split = next(i for i, e in enumerate(events) if type(e) is OrderExecuted and e.order_id == "o3") + 3
    before = analytics(interval_s=120)
    out = feed(before, events[:split])
    state = before.snapshot()
    assert state["positions"] and state["awaiting"] and state["quotes"]  # an open position, predictions waiting
    stored = msgspec.msgpack.decode(msgspec.msgpack.encode(Checkpoint(positions=[], state=state)), type=Checkpoint)
    after = analytics(interval_s=120)
    after.restore(stored.state)
    assert out + feed(after, events[split:]) == whole_out
    assert after.summary() == whole.summary() and after.snapshot() == whole.snapshot()
    assert whole.summary()["trades"] == 2 and whole.summary()["hit_rates"]["XGBoost-v1"]["resolved"] == 2


def test_the_curve_kept_for_plots_is_bounded(monkeypatch):
    import tradepipe.services.analytics as module

    monkeypatch.setattr(module, "MAX_CURVE_POINTS", 10)
    service = analytics()
    feed(service, [tick(60 * m, 1.38, 1.3802) for m in range(100)])
    assert len(service.curve_ms) <= 10 and service.returns.count == 99  # every sample still counts
    gaps = {b - a for a, b in zip(service.curve_ms, service.curve_ms[1:])}
    assert gaps == {16 * 60_000}  # thinned evenly


def test_from_settings():
    settings = Settings()
    service = PerformanceAnalytics.from_settings(settings)
    assert (service.initial_equity, service.horizon_bars, service.scorer.dead_band, service.sample_ms) == (
        settings.trading.initial_equity, 5, pytest.approx(0.35e-4), 3_600_000)
    assert service.interval_ms == 3_600_000 and service.port == 8002


def test_ticks_without_a_position_change_nothing_but_the_time():
    service = analytics()
    feed(service, [tick(0, 1.38, 1.3802)])
    state = service.snapshot()
    feed(service, [tick(s, 1.38 + s * 1e-6, 1.3802) for s in range(1, 59)])
    later = service.snapshot()
    assert later.pop("last_ms") != state.pop("last_ms") and later == state
