"""CoreIndicators (R5.1, R5.5) and the feature engineering service.

Series: EURUSD mid-price bars (1m, 5m, 1h) built from the real May 2014 ticks (``real_bars``).
TA-Lib (the PyPI ``ta-lib`` wheel) is the reference: every value after the warm-up must agree
to 1e-9 relative, and the warm-up (NaN) positions must be the same.
"""

from __future__ import annotations

import uuid

import msgspec
import numpy as np
import pytest
import talib
from numpy.testing import assert_allclose, assert_array_equal

from tradepipe.events import BarClosed, FeaturesCalculated
from tradepipe.events.envelope import utc_from_ms
from tradepipe.events.types import OHLC
from tradepipe.features.core import STATE_SIZE, CoreIndicators
from tradepipe.runtime.service import Context
from tradepipe.services.feature_engineering import FeatureEngineering


def talib_reference(close: np.ndarray) -> np.ndarray:
    """TA-Lib's values in CoreIndicators.names order (bb_width from TA-Lib's bands)."""
    macd, signal, hist = talib.MACD(close, fastperiod=12, slowperiod=26, signalperiod=9)
    upper, middle, lower = talib.BBANDS(close, timeperiod=20, nbdevup=2, nbdevdn=2, matype=0)
    return np.column_stack([
        talib.RSI(close, timeperiod=14), macd, signal, hist,
        talib.SMA(close, timeperiod=20), talib.EMA(close, timeperiod=50),
        upper, middle, lower, (upper - lower) / middle,
    ])


@pytest.mark.parametrize("timeframe", ["1m", "5m", "1h"])
def test_equals_talib_on_real_bars(real_bars, timeframe):
    o, h, l, c, _ = real_bars[timeframe]
    ours = CoreIndicators().history(o, h, l, c)
    reference = talib_reference(c)
    for column, name in enumerate(CoreIndicators.names):
        defined = ~np.isnan(reference[:, column])
        assert_array_equal(np.isnan(ours[:, column]), ~defined, err_msg=f"{timeframe} {name}: warm-up")
        assert defined.sum() > len(c) - 50, f"{timeframe} {name}: too few values to compare"
        assert_allclose(ours[defined, column], reference[defined, column], rtol=1e-9, atol=0,
                        err_msg=f"{timeframe} {name}")


def test_warm_up_lengths_are_talib_lookbacks(real_bars):
    o, h, l, c, _ = (a[:60] for a in real_bars["1m"])
    first_value = {name: int(np.argmax(~np.isnan(column)))
                   for name, column in zip(CoreIndicators.names, CoreIndicators().history(o, h, l, c).T)}
    assert first_value == {
        "rsi": 14, "macd": 33, "macd_signal": 33, "macd_hist": 33, "sma_20": 19, "ema_50": 49,
        "bb_upper": 19, "bb_middle": 19, "bb_lower": 19, "bb_width": 19,
    }


def test_update_per_bar_equals_history_exactly(real_bars):
    o, h, l, c, _ = real_bars["1m"]
    live = CoreIndicators()
    streamed = np.array([live.update(*bar) for bar in zip(o.tolist(), h.tolist(), l.tolist(), c.tolist())])
    batch = CoreIndicators()
    assert_array_equal(streamed, batch.history(o, h, l, c))  # NaN == NaN, otherwise bit for bit
    assert live.snapshot() == batch.snapshot()


def test_history_in_two_halves_equals_history_of_the_whole(real_bars):
    o, h, l, c, _ = real_bars["5m"]
    cut = len(c) // 2 + 7
    halves = CoreIndicators()
    first = halves.history(o[:cut], h[:cut], l[:cut], c[:cut])
    second = halves.history(o[cut:], h[cut:], l[cut:], c[cut:])
    whole = CoreIndicators()
    assert_array_equal(np.vstack([first, second]), whole.history(o, h, l, c))
    assert halves.snapshot() == whole.snapshot()


def test_snapshot_restore_mid_series_continues_identically(real_bars):
    o, h, l, c, _ = real_bars["1m"]
    cut = 5000
    original = CoreIndicators()
    original.history(o[:cut], h[:cut], l[:cut], c[:cut])
    saved = msgspec.json.decode(msgspec.json.encode(original.snapshot()))  # as a checkpoint stores it
    restored = CoreIndicators()
    restored.restore(saved)
    assert_array_equal(restored.history(o[cut:], h[cut:], l[cut:], c[cut:]),
                       original.history(o[cut:], h[cut:], l[cut:], c[cut:]))
    with pytest.raises(ValueError):
        CoreIndicators().restore(saved[:-1])


def test_state_is_bounded(real_bars):
    o, h, l, c, _ = real_bars["1m"]
    indicators = CoreIndicators()
    indicators.history(o, h, l, c)
    assert len(indicators.snapshot()) == STATE_SIZE


def test_no_look_ahead(real_bars):
    o, h, l, c, _ = real_bars["1m"]
    baseline = CoreIndicators().history(o, h, l, c)
    rng = np.random.default_rng(7)
    for t in (0, 19, 33, 49, 700, 641, 5000, len(c) - 2):
        altered = c.copy()
        altered[t + 1:] *= rng.uniform(0.9, 1.1, len(c) - t - 1)
        values = CoreIndicators().history(o, h, l, altered)
        assert_array_equal(values[: t + 1], baseline[: t + 1], err_msg=f"bar {t}")
        assert not np.array_equal(values[t + 1:], baseline[t + 1:])


@pytest.mark.parametrize("bad_close", [np.nan, np.inf, -np.inf])
def test_non_finite_close_skips_the_bar(real_bars, bad_close):
    """Chosen behaviour: a bar whose close is NaN/inf yields NaN for every value and leaves the
    state untouched; the later bars get exactly the values of the series without that bar."""
    o, h, l, c, _ = (a[:300] for a in real_bars["1m"])
    bad = 120
    with_bad = [array.copy() for array in (o, h, l, c)]
    with_bad[3][bad] = bad_close
    values = CoreIndicators().history(*with_bad)
    without = CoreIndicators().history(*(np.delete(array, bad) for array in (o, h, l, c)))
    assert np.isnan(values[bad]).all()
    assert_array_equal(np.delete(values, bad, axis=0), without)

    live = CoreIndicators()
    live.history(o[:bad], h[:bad], l[:bad], c[:bad])
    before = live.snapshot()
    assert np.isnan(live.update(o[bad], h[bad], l[bad], bad_close)).all()
    assert live.snapshot() == before


def bar_closed(ctx: Context, o: float, h: float, l: float, c: float, bar_ms: int) -> BarClosed:
    mid = OHLC(open=o, high=h, low=l, close=c)
    return ctx.emit(
        BarClosed, timestamp=utc_from_ms(bar_ms + 60_000), symbol="EURUSD",
        correlation_id=uuid.UUID(int=bar_ms),  # stands for the tick that closed the bar
        timeframe="1m", bar_time=utc_from_ms(bar_ms), bid=mid, ask=mid, mid=mid,
        tick_count=1, spread_mean=0.0, spread_max=0.0,
    )


def feed(service: FeatureEngineering, bars: list[BarClosed]) -> list[FeaturesCalculated]:
    ctx = Context(service.name)
    emitted = []
    for bar in bars:
        ctx.begin(bar)
        emitted.extend(service.handle(bar, ctx))
    return emitted


def test_service_emits_feature_engineering_features(real_bars):
    o, h, l, c, bar_ms = (a[:80] for a in real_bars["1m"])
    bars_ctx = Context("bars")
    bars = [bar_closed(bars_ctx, o[i], h[i], l[i], c[i], int(bar_ms[i])) for i in range(len(c))]
    service = FeatureEngineering()
    assert (service.name, service.port) == ("feature-engineering", 8011)
    emitted = feed(service, bars)

    expected = CoreIndicators().history(o, h, l, c)
    assert len(emitted) == len(bars)
    for bar, event, values in zip(bars, emitted, expected):
        assert type(event) is FeaturesCalculated
        assert (event.group, event.timeframe, event.symbol) == ("feature-engineering", "1m", "EURUSD")
        assert event.bar_time == bar.bar_time
        assert event.correlation_id == bar.correlation_id
        assert event.causation_id == bar.event_id
        assert list(event.features) == [*CoreIndicators.names, "close"]
        assert event.features["close"] == bar.mid.close
        assert event.metadata.calculation_time.endswith("us")
        assert [event.features[name] for name in CoreIndicators.names] == [
            None if np.isnan(v) else float(v) for v in values
        ]
    assert all(emitted[0].features[name] is None for name in CoreIndicators.names)  # warming up: null, never NaN
    assert emitted[33].features["macd_signal"] is not None
    assert all(v is not None for v in emitted[49].features.values())


def test_service_snapshot_restore_continues_identically(real_bars):
    o, h, l, c, bar_ms = (a[:90] for a in real_bars["1m"])
    bars_ctx = Context("bars")
    bars = [bar_closed(bars_ctx, o[i], h[i], l[i], c[i], int(bar_ms[i])) for i in range(len(c))]
    uninterrupted = feed(FeatureEngineering(), bars)

    first = FeatureEngineering()
    feed(first, bars[:40])
    restarted = FeatureEngineering()
    restarted.restore(msgspec.json.decode(msgspec.json.encode(first.snapshot())))
    resumed = feed(restarted, bars[40:])
    assert [e.features for e in resumed] == [e.features for e in uninterrupted[40:]]


def test_service_bar_with_nan_close_publishes_nulls_and_keeps_state(real_bars):
    o, h, l, c, bar_ms = (a[:60] for a in real_bars["1m"])
    bars_ctx = Context("bars")
    bars = [bar_closed(bars_ctx, o[i], h[i], l[i], c[i], int(bar_ms[i])) for i in range(len(c))]
    bad = bar_closed(bars_ctx, o[30], h[30], l[30], float("nan"), int(bar_ms[30]) + 30_000)
    clean = feed(FeatureEngineering(), bars)
    with_bad = feed(FeatureEngineering(), bars[:31] + [bad] + bars[31:])
    assert all(v is None for v in with_bad[31].features.values())
    assert [e.features for e in with_bad[:31] + with_bad[32:]] == [e.features for e in clean]
