"""Performance metrics (R7.4) against values computed by hand."""

from __future__ import annotations

import math

import pytest

from tradepipe.trading.performance import (
    ExposureClock, ReturnStats, drawdown_series, exposure, max_drawdown, periods_per_year, sharpe, sortino,
    trade_stats,
)

# returns +10 %, -10 %, +10 %: mean 1/30, sample std sqrt(0.02/1.5) = 0.11547, downside rms sqrt(0.01/3)
EQUITY = [100.0, 110.0, 99.0, 108.9]


def test_sharpe_is_the_mean_over_the_sample_std_annualised():
    assert sharpe(EQUITY, 4) == pytest.approx((1 / 30) / math.sqrt(0.04 / 3) * 2)
    assert sharpe(EQUITY, 4) == pytest.approx(0.57735, rel=1e-4)


def test_sortino_divides_by_the_downside_deviation_over_all_returns():
    assert sortino(EQUITY, 4) == pytest.approx((1 / 30) / math.sqrt(0.01 / 3) * 2)
    assert sortino(EQUITY, 4) == pytest.approx(1.1547, rel=1e-4)


def test_ratios_are_none_when_undefined():
    assert sharpe([100.0, 101.0], 4) is None and sortino([100.0, 101.0], 4) is None  # one return
    assert sharpe([100.0, 100.0, 100.0], 4) is None  # no deviation
    assert sortino([100.0, 101.0, 103.0], 4) is None and sharpe([100.0, 101.0, 103.0], 4) is not None  # no loss
    assert ReturnStats().sharpe(1) is None


def test_a_trading_year_of_minutes():
    assert periods_per_year(60) == 260 * 24 * 60 == 374_400
    assert periods_per_year(86_400) == 260


def test_max_drawdown_is_the_largest_fall_from_a_peak_with_its_times():
    dd = max_drawdown([0, 1, 2, 3, 4, 5], [100.0, 120.0, 90.0, 110.0, 130.0, 117.0])
    assert dd.max_drawdown == pytest.approx(0.25)  # 120 -> 90; 130 -> 117 is only 10 %
    assert (dd.max_peak_ms, dd.max_trough_ms) == (1, 2)
    assert dd.peak == 130.0 and dd.current(117.0) == pytest.approx(0.1)
    rising = max_drawdown([0, 1], [100.0, 101.0])
    assert rising.max_drawdown == 0.0 and rising.max_peak_ms is None
    assert drawdown_series([100.0, 120.0, 90.0, 130.0]) == pytest.approx([0, 0, 0.25, 0])


def test_trade_statistics():
    stats = trade_stats([10.0, -5.0, 20.0, -15.0, 0.0])
    assert (stats.trades, stats.wins, stats.losses) == (5, 2, 2)
    assert stats.win_rate == pytest.approx(0.4)  # a flat trade is no win
    assert stats.profit_factor == pytest.approx(30 / 20)
    assert stats.average_win == pytest.approx(15.0) and stats.average_loss == pytest.approx(-10.0)
    winners = trade_stats([5.0, 7.0])
    assert winners.profit_factor is None and winners.average_loss is None and winners.win_rate == 1.0
    nothing = trade_stats([])
    assert nothing.win_rate is None and nothing.trades == 0


def test_exposure_counts_overlapping_positions_once():
    assert exposure([(20, 40), (10, 30), (60, 70)], 0, 100) == pytest.approx(0.4)
    assert exposure([], 0, 100) == 0.0
    assert exposure([(0, 10)], 0, 0) is None  # no time observed


def test_exposure_clock_counts_a_position_still_open():
    clock = ExposureClock()
    clock.observe(0)
    clock.opened(50)
    assert clock.share(100) == pytest.approx(0.5)
    clock.closed(60)
    clock.closed(70)  # a close without its open (before we watched) changes nothing
    assert clock.share(100) == pytest.approx(0.1)
