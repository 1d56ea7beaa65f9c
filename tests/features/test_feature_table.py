"""R5.5: the training table comes from the live services, and has no look-ahead."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from tradepipe.features.history import build_feature_table
from tradepipe.sources import sample_paths
from tradepipe.sources.files import RawTick, read_ticks

TICKS = 40_000  # about 10 hours of EURUSD: hundreds of 1m bars, past every warm-up


@pytest.fixture(scope="module")
def sample_ticks() -> list[RawTick]:
    [eurusd] = [p for p in sample_paths() if p.name.startswith("eurusd")]
    return list(itertools.islice(read_ticks(eurusd), TICKS))


@pytest.fixture(scope="module")
def table(sample_ticks):
    return build_feature_table(sample_ticks, symbol="EURUSD", timeframe="1m")


def test_one_row_per_closed_bar_with_every_group(table, sample_ticks):
    minutes = {t.ts_ms // 60_000 for t in sample_ticks}
    assert len(table.bar_time) == len(minutes) - 1  # the last bar is still open
    for name in ("rsi", "macd_hist", "bb_width", "atr_14", "adx_14", "cdl_doji", "tick_count", "realized_vol"):
        assert name in table.columns
    late = table.values[100:]  # past warm-up, every core and technical value is defined
    for name in ("rsi", "macd", "macd_signal", "sma_20", "ema_50", "bb_upper", "atr_14", "stoch_k", "adx_14", "ret_15"):
        assert not np.isnan(late[:, table.columns.index(name)]).any(), name
    counts = table.column("tick_count")
    assert counts.sum() == sum(1 for t in sample_ticks if t.ts_ms // 60_000 < max(minutes))


def test_values_at_a_bar_do_not_depend_on_later_data(table, sample_ticks):
    cut = len(sample_ticks) // 2
    cut_ms = sample_ticks[cut].ts_ms
    changed = sample_ticks[:cut] + [
        RawTick(t.symbol, t.ts_ms, t.bid * 1.01, t.ask * 1.01 + 0.0003, t.volume, t.position, t.source)
        for t in sample_ticks[cut:]
    ]
    other = build_feature_table(changed, symbol="EURUSD", timeframe="1m")
    closed_before = [i for i, bar in enumerate(table.bar_time) if bar.timestamp() * 1000 + 60_000 <= cut_ms]
    assert len(closed_before) > 50
    n = len(closed_before)
    assert other.bar_time[:n] == table.bar_time[:n]
    np.testing.assert_array_equal(other.values[:n], table.values[:n])  # identical, NaN included
    assert not np.array_equal(other.values[n + 5:n + 50], table.values[n + 5:n + 50])  # later bars did change


def test_the_table_matches_what_the_live_services_published(sample_ticks):
    """Same numbers as `tradepipe run` publishes: the table is built from those events."""
    from tradepipe.events import FeaturesCalculated
    from tradepipe.pipeline import feature_services
    from tradepipe.runtime import Context
    from tradepipe.runtime.kernel import InProcessPipeline
    from tradepipe.services.data_bridge import DataBridge

    published = []
    kernel = InProcessPipeline(feature_services(["1m"]), on_event=published.append)
    bridge, ctx = DataBridge(), Context("data-bridge")
    for tick in sample_ticks[:5000]:
        kernel.feed_all(bridge.handle_tick(tick, ctx))
    rsi = [e.features["rsi"] for e in published if type(e) is FeaturesCalculated and e.group == "feature-engineering"]
    table = build_feature_table(sample_ticks[:5000], symbol="EURUSD", timeframe="1m")
    column = table.column("rsi")
    assert len(rsi) == len(column)
    assert all((a is None and math.isnan(b)) or a == b for a, b in zip(rsi, column))


# --- bar files (R5.5: the same services, fed by the bridge's BarClosed) -------------------------

M1_BARS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "eurusd_m1_2014-05.csv.gz"


@pytest.fixture(scope="module")
def m1_bars():
    from tradepipe.sources.files import read_bars

    return list(itertools.islice(read_bars(M1_BARS), 600))


def test_a_bar_file_gives_the_two_bar_driven_groups(m1_bars):
    table = build_feature_table(m1_bars, symbol="EURUSD", timeframe="1m", kind="bars")
    assert len(table.bar_time) == len(m1_bars)  # a bar from a file is closed as it arrives
    assert [int(t.timestamp() * 1000) for t in table.bar_time] == [b.ts_ms for b in m1_bars]
    assert "rsi" in table.columns and "adx_14" in table.columns and "close" in table.columns
    assert not {"spread_mean", "tick_count", "realized_vol"} & set(table.columns)  # no microstructure
    mid = [b.close + (b.spread or 0.0) / 2 for b in m1_bars]  # the bridge's mid close
    np.testing.assert_array_equal(table.column("close"), mid)
    assert not np.isnan(table.values[100:]).any()


def test_a_bar_file_of_another_timeframe_is_refused(m1_bars):
    from tradepipe.features.history import TimeframeMismatch

    with pytest.raises(TimeframeMismatch, match="holds 1m bars, but 5m bars were asked for"):
        build_feature_table(m1_bars, symbol="EURUSD", timeframe="5m", kind="bars")
    with pytest.raises(ValueError, match="kind must be"):
        build_feature_table(m1_bars, symbol="EURUSD", timeframe="1m", kind="quotes")
