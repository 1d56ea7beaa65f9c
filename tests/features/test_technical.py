"""TechnicalIndicators (R5.2, R5.5) against TA-Lib on real bars, and the technical-analysis service.

Series: EURUSD mid bars (1m and 5m) built from the May 2014 ticks (``real_bars``), and the bid
OHLC of the shipped EURUSD May 2014 and GBPUSD Feb 2012 1-minute bar files.
"""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest
import talib
from numpy.testing import assert_allclose, assert_array_equal

from tradepipe.events import BarClosed, FeaturesCalculated
from tradepipe.events.envelope import new_event_id, utc_from_ms
from tradepipe.events.types import OHLC
from tradepipe.features.technical import TechnicalIndicators
from tradepipe.runtime.service import Context
from tradepipe.services.technical_analysis import TechnicalAnalysis

from .conftest import REPO

DATA = REPO.parent / "shared" / "data"
BID_BAR_FILES = {"eurusd_bid_1m": "eurusd_m1_2014-05.csv.gz", "gbpusd_bid_1m": "gbpusd_m1_2012-02.csv.gz"}
NAMES = TechnicalIndicators.names
COLUMN = {name: i for i, name in enumerate(NAMES)}
# TA-Lib lookbacks: the first bar with a value
FIRST = {"atr_14": 14, "stoch_k": 17, "stoch_d": 17, "adx_14": 27, "ret_1": 1, "ret_5": 5, "ret_15": 15,
         "cdl_engulfing": 2, "cdl_doji": 10, "cdl_hammer": 11}


def read_bar_file(name: str) -> tuple[np.ndarray, ...]:
    with gzip.open(DATA / name, "rt", newline="") as f:
        rows = csv.DictReader(f)  # ts_utc,open,high,low,close,volume,spread
        ohlc = [(r["open"], r["high"], r["low"], r["close"]) for r in rows]
    return tuple(np.array(column, dtype=np.float64) for column in zip(*ohlc))


@pytest.fixture(scope="module")
def series(real_bars) -> dict[str, tuple[np.ndarray, ...]]:
    """name -> (open, high, low, close) of each real series."""
    out = {f"eurusd_mid_{tf}": real_bars[tf][:4] for tf in ("1m", "5m")}
    out.update({name: read_bar_file(file) for name, file in BID_BAR_FILES.items()})
    return out


@pytest.fixture(scope="module")
def mid_1m(series) -> tuple[np.ndarray, ...]:
    return series["eurusd_mid_1m"]


@pytest.mark.parametrize("name", ["eurusd_mid_1m", "eurusd_mid_5m", "eurusd_bid_1m", "gbpusd_bid_1m"])
def test_equals_talib_on_real_bars(series, name):
    o, h, l, c = series[name]
    values = TechnicalIndicators().history(o, h, l, c)
    slow_k, slow_d = talib.STOCH(h, l, c, fastk_period=14, slowk_period=3, slowk_matype=0,
                                 slowd_period=3, slowd_matype=0)
    reference = {
        "atr_14": talib.ATR(h, l, c, 14), "stoch_k": slow_k, "stoch_d": slow_d, "adx_14": talib.ADX(h, l, c, 14),
    }
    for feature, expected in reference.items():
        got = values[:, COLUMN[feature]]
        assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=feature)
        assert np.isnan(expected[: FIRST[feature]]).all() and not np.isnan(expected[FIRST[feature]:]).any()
        defined = ~np.isnan(expected)
        assert_allclose(got[defined], expected[defined], rtol=1e-9, atol=0, err_msg=feature)

    patterns = {"cdl_engulfing": talib.CDLENGULFING, "cdl_doji": talib.CDLDOJI, "cdl_hammer": talib.CDLHAMMER}
    for feature, function in patterns.items():
        got, first = values[:, COLUMN[feature]], FIRST[feature]
        expected = function(o, h, l, c).astype(np.float64)
        assert np.isnan(got[:first]).all(), feature  # TA-Lib's lookback; it writes 0 there
        assert_array_equal(got[first:], expected[first:], err_msg=feature)
        assert np.count_nonzero(expected) > 100, feature  # the series does exercise the pattern

    log_close = np.log(c)
    for horizon in (1, 5, 15):
        got = values[:, COLUMN[f"ret_{horizon}"]]
        assert np.isnan(got[:horizon]).all()
        # same math as numpy's; numba's log may differ from numpy's in the last bit
        assert_allclose(got[horizon:], log_close[horizon:] - log_close[:-horizon], rtol=0, atol=2e-16)


def test_engulfing_reports_talibs_weak_signal(series):
    """TA-Lib's CDLENGULFING gives ±80 when an open equals the other candle's close; kept as is."""
    o, h, l, c = series["gbpusd_bid_1m"]
    engulfing = TechnicalIndicators().history(o, h, l, c)[:, COLUMN["cdl_engulfing"]]
    assert set(np.unique(engulfing[2:])) <= {-100.0, -80.0, 0.0, 80.0, 100.0}
    assert {-80.0, 80.0} <= set(np.unique(engulfing[2:]))


def test_update_per_bar_equals_history(mid_1m):
    o, h, l, c = mid_1m
    live = TechnicalIndicators()
    streamed = np.array([live.update(*bar) for bar in zip(o.tolist(), h.tolist(), l.tolist(), c.tolist())])
    batch = TechnicalIndicators()
    assert_array_equal(streamed, batch.history(o, h, l, c))
    assert live.snapshot() == batch.snapshot()


def test_history_continues_from_the_current_state(mid_1m):
    o, h, l, c = mid_1m
    whole = TechnicalIndicators().history(o, h, l, c)
    chunked = TechnicalIndicators()
    bounds = ((0, 7), (7, 7), (7, 5000), (5000, len(c)))  # includes an empty chunk
    parts = [chunked.history(o[a:b], h[a:b], l[a:b], c[a:b]) for a, b in bounds]
    assert_array_equal(np.concatenate(parts), whole)


def test_snapshot_restore_continues_identically(mid_1m):
    o, h, l, c = mid_1m
    whole = TechnicalIndicators().history(o, h, l, c)
    first = TechnicalIndicators()
    split = 4321
    first.history(o[:split], h[:split], l[:split], c[:split])
    restored = TechnicalIndicators()
    restored.restore(json.loads(json.dumps(first.snapshot())))  # as a checkpoint stores it
    assert_array_equal(restored.history(o[split:], h[split:], l[split:], c[split:]), whole[split:])
    with pytest.raises(ValueError):
        restored.restore([0.0, 1.0])


def test_no_look_ahead(mid_1m):
    """Values at or before bar t do not change when bars after t are altered."""
    o, h, l, c = (a.copy() for a in mid_1m)
    whole = TechnicalIndicators().history(o, h, l, c)
    t = 5000
    rng = np.random.default_rng(7)
    shift = rng.normal(0, 0.001, len(c) - t - 1)
    o[t + 1:] += shift
    c[t + 1:] -= shift
    h[t + 1:] = np.maximum(o[t + 1:], c[t + 1:]) + 0.0005
    l[t + 1:] = np.minimum(o[t + 1:], c[t + 1:]) - 0.0005
    altered = TechnicalIndicators().history(o, h, l, c)
    assert_array_equal(altered[: t + 1], whole[: t + 1])
    assert not np.array_equal(altered[t + 1:], whole[t + 1:])


@pytest.mark.parametrize("bad_at", [3, 2000])  # during warm-up and after it
@pytest.mark.parametrize("bad_field", [0, 3])  # a NaN open, a NaN close
def test_nan_bar_yields_nan_and_leaves_the_state(mid_1m, bad_at, bad_field):
    """A bar with a NaN price gets NaN values and is skipped: later values are those of the series
    without it (no NaN spreads into the rolling sums or the smoothed averages)."""
    o, h, l, c = (a[:3000] for a in mid_1m)
    clean = TechnicalIndicators().history(o, h, l, c)
    bad_bar = [o[bad_at], h[bad_at], l[bad_at], c[bad_at]]
    bad_bar[bad_field] = np.nan
    with_bad = [np.insert(a, bad_at, value) for a, value in zip((o, h, l, c), bad_bar)]
    values = TechnicalIndicators().history(*with_bad)
    assert np.isnan(values[bad_at]).all()
    assert_array_equal(np.delete(values, bad_at, axis=0), clean)

    live = TechnicalIndicators()
    live.history(o[:bad_at], h[:bad_at], l[:bad_at], c[:bad_at])
    before = live.snapshot()
    assert np.isnan(live.update(*bad_bar)).all()
    assert live.snapshot() == before


def bar_closed(o: float, h: float, l: float, c: float, bar_ms: int, symbol: str = "EURUSD") -> BarClosed:
    mid = OHLC(open=o, high=h, low=l, close=c)
    return BarClosed(
        event_id=new_event_id(), timestamp=utc_from_ms(bar_ms + 60_000), symbol=symbol, timeframe="1m",
        bar_time=utc_from_ms(bar_ms), bid=mid, ask=mid, mid=mid, tick_count=1, spread_mean=0.0, spread_max=0.0,
    )


def test_service_emits_technical_analysis_features(real_bars):
    o, h, l, c, bar_ms = (a[:40] for a in real_bars["1m"])
    expected = TechnicalIndicators().history(o, h, l, c)
    service, ctx = TechnicalAnalysis(), Context(TechnicalAnalysis.name)
    assert (service.name, service.port) == ("technical-analysis", 8024)
    emitted = []
    for i in range(len(c)):
        event = bar_closed(o[i], h[i], l[i], c[i], int(bar_ms[i]))
        ctx.begin(event)
        (out,) = service.handle(event, ctx)
        assert type(out) is FeaturesCalculated
        assert (out.group, out.timeframe, out.symbol) == ("technical-analysis", "1m", "EURUSD")
        assert out.bar_time == event.bar_time
        assert out.correlation_id == event.event_id
        emitted.append(out.features)
    for i, features in enumerate(emitted):
        assert tuple(features) == NAMES
        for name, value in features.items():
            if i < FIRST[name]:
                assert value is None, (i, name)  # warm-up: null, never NaN
            else:
                assert value == expected[i, COLUMN[name]], (i, name)
    assert emitted[0] == dict.fromkeys(NAMES)
