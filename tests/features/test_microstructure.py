"""Market microstructure features: exact values on handcrafted ticks, micro-price with and
without sizes, and agreement with the bar builder on the shipped real sample."""

from __future__ import annotations

import math

import pytest

from tradepipe.events.envelope import utc_from_ms
from tradepipe.events.types import FeaturesCalculated
from tradepipe.features.bars import OpenBars
from tradepipe.features.microstructure import NAMES, MicrostructureAccumulator, micro_price, microstructure_features
from tradepipe.runtime.clock import EventClock
from tradepipe.runtime.service import Context
from tradepipe.services.bar_builder import BarBuilder
from tradepipe.services.market_microstructure import MarketMicrostructure
from tradepipe.sources import sample_paths

from .test_bars import MINUTE, SECOND, T0, make_tick, market_data, outputs_after_restart, run


def test_features_of_a_handcrafted_bar():
    ticks = [
        make_tick(T0, 1.10000, 1.10010),  # mid 1.10005, spread 1.0 pip
        make_tick(T0 + 10 * SECOND, 1.10010, 1.10020),  # mid 1.10015: up
        make_tick(T0 + 20 * SECOND, 1.10010, 1.10030),  # mid 1.10020: up, spread 2.0 pips
        make_tick(T0 + 30 * SECOND, 1.10000, 1.10010),  # mid 1.10005: down
        make_tick(T0 + 40 * SECOND, 1.10000, 1.10010),  # unchanged: a tick, not a move
        make_tick(T0 + MINUTE, 1.10100, 1.10110),  # first tick of 10:01: closes 10:00
    ]
    service = MarketMicrostructure(timeframes=("1m",))
    [(closing, [event])] = run(service, ticks)
    assert closing == 5
    assert type(event) is FeaturesCalculated
    assert (event.group, event.timeframe, event.bar_time) == ("market-microstructure", "1m", utc_from_ms(T0))
    assert event.timestamp == ticks[5].timestamp
    assert event.correlation_id == event.causation_id == ticks[5].event_id
    assert event.metadata.calculation_time.endswith("us")
    f = event.features
    assert f["spread_mean"] == pytest.approx(0.00012, rel=1e-9)  # (1 + 1 + 2 + 1 + 1) pips / 5
    assert f["spread_max"] == pytest.approx(0.0002, rel=1e-9)
    assert f["mid_close"] == pytest.approx(1.10005, rel=1e-15)
    assert f["micro_price"] is None  # the ticks carry no sizes
    assert f["tick_count"] == 5
    assert f["tick_rate"] == 5 / 60
    returns = [math.log(1.10015 / 1.10005), math.log(1.10020 / 1.10015), math.log(1.10005 / 1.10020)]
    assert f["realized_vol"] == pytest.approx(math.sqrt(sum(r * r for r in returns)), rel=1e-9)
    assert f["realized_vol"] == pytest.approx(1.7006e-4, rel=1e-4)
    assert f["tick_imbalance"] == pytest.approx(1 / 3, rel=1e-15)  # 2 up, 1 down


def test_single_tick_bar_has_no_moves():
    service = MarketMicrostructure(timeframes=("1m", "5m"))
    [(_, [event])] = run(service, [make_tick(T0, 1.1000, 1.1001), make_tick(T0 + MINUTE, 1.1002, 1.1003)])
    assert event.timeframe == "1m"
    assert (event.features["realized_vol"], event.features["tick_imbalance"]) == (0.0, None)
    assert event.features["tick_rate"] == 1 / 60


def test_micro_price_with_sizes():
    assert micro_price(1.1000, 1.1002, bid_size=1.0, ask_size=3.0) == pytest.approx(1.10005, rel=1e-15)
    assert micro_price(1.1000, 1.1002, bid_size=2.0, ask_size=2.0) == pytest.approx(1.1001, rel=1e-15)
    assert micro_price(1.1000, 1.1002, bid_size=0.0, ask_size=0.0) is None
    assert micro_price(1.1000, 1.1002, bid_size=math.nan, ask_size=1.0) is None
    # per bar: the sizes of the bar's last tick
    bars = OpenBars(MicrostructureAccumulator, ("1m",))
    bars.add("EURUSD", T0, 1.1000, 1.1002, 5.0, 1.0)
    bars.add("EURUSD", T0 + SECOND, 1.1000, 1.1002, 3.0, 1.0)
    [bar] = bars.add("EURUSD", T0 + MINUTE, 1.1001, 1.1003, 1.0, 1.0)
    expected = (1.1000 * 1.0 + 1.1002 * 3.0) / (3.0 + 1.0)
    assert microstructure_features(bar)["micro_price"] == pytest.approx(expected, rel=1e-15)
    assert tuple(microstructure_features(bar)) == NAMES  # the names the model services map to this group


@pytest.fixture(scope="module")
def sample_ticks():
    return market_data(next(p for p in sample_paths() if p.name.startswith("eurusd")))


def test_real_sample_agrees_with_the_bar_builder(sample_ticks):
    bars = [bar for _, outputs in run(BarBuilder(), sample_ticks) for bar in outputs]
    features = [event for _, outputs in run(MarketMicrostructure(), sample_ticks) for event in outputs]
    assert len(features) == len(bars) > 3000
    for bar, event in zip(bars, features):
        assert (event.timeframe, event.bar_time) == (bar.timeframe, bar.bar_time)
        assert event.correlation_id == bar.correlation_id
        f = event.features
        assert f["tick_count"] == bar.tick_count
        assert (f["spread_max"], f["mid_close"]) == (bar.spread_max, bar.mid.close)
        assert f["spread_mean"] == pytest.approx(bar.spread_mean, rel=1e-12)
        assert f["micro_price"] is None  # OANDA ticks have no sizes
        assert 0.0 <= f["realized_vol"] < 0.01
        assert f["tick_imbalance"] is None or -1.0 <= f["tick_imbalance"] <= 1.0


def test_snapshot_restore_mid_stream_gives_the_same_features(sample_ticks):
    ticks = sample_ticks[:30_000]
    uninterrupted, restarted = outputs_after_restart(MarketMicrostructure, ticks, split=12_345)
    assert len(uninterrupted) > 300

    def comparable(produced):  # calculationTime is a measured duration, the rest is deterministic
        return [
            (i, [(e.event_id, e.timestamp, e.timeframe, e.bar_time, e.features) for e in outputs])
            for i, outputs in produced
        ]

    assert comparable(restarted) == comparable(uninterrupted)


def test_inactivity_flush_emits_features():
    service = MarketMicrostructure(timeframes=("1m",), flush_after_s=2.5)
    run(service, [make_tick(T0, 1.1000, 1.1001), make_tick(T0 + SECOND, 1.1001, 1.1002)])
    [event] = service.on_timer(Context(service.name, EventClock(utc_from_ms(T0 + MINUTE + 2_500))))
    assert (event.symbol, event.bar_time, event.features["tick_count"], event.features["tick_imbalance"]) == (
        "EURUSD", utc_from_ms(T0), 2, 1.0,
    )
