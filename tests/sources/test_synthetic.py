"""The seeded synthetic tick generator: determinism, sane quotes, and the intended structure."""

from __future__ import annotations

from datetime import datetime, timezone
from itertools import islice

import numpy as np
import pytest

from tradepipe.sources.files import RawTick
from tradepipe.sources.synthetic import (
    BLOCK_TICKS, CALM, QUIET_HOURS, TRENDING, VOLATILE, synthetic_blocks, synthetic_ticks,
)
from tradepipe.sources.validation import TickValidator

COUNT = 500_000


@pytest.fixture(scope="module")
def ticks() -> dict[str, np.ndarray]:
    """500k ticks (~two weeks of quotes) as concatenated arrays."""
    blocks = list(synthetic_blocks(COUNT, seed=7))
    return {field: np.concatenate([getattr(b, field) for b in blocks]) for field in blocks[0]._fields}


def test_same_seed_same_ticks_and_a_shorter_run_is_a_prefix():
    first = list(synthetic_ticks(n=BLOCK_TICKS + 1_000, seed=42))
    assert list(synthetic_ticks(n=BLOCK_TICKS + 1_000, seed=42)) == first
    assert list(synthetic_ticks(n=1_000, seed=42)) == first[:1_000]
    assert [t.ts_ms for t in synthetic_ticks(n=1_000, seed=43)] != [t.ts_ms for t in first[:1_000]]


def test_tick_fields_start_and_count():
    ticks = list(synthetic_ticks("USDJPY", n=70_000, seed=1, start="2024-03-04T08:00:00Z", price=150.0, digits=3))
    assert len(ticks) == 70_000
    assert all(type(t) is RawTick for t in ticks)
    assert [t.position for t in ticks] == list(range(1, 70_001))
    assert {(t.symbol, t.source, t.line) for t in ticks} == {("USDJPY", "synthetic", "")}
    start_ms = int(datetime(2024, 3, 4, 8, tzinfo=timezone.utc).timestamp() * 1000)
    assert start_ms <= ticks[0].ts_ms < start_ms + 60_000
    assert 140 < ticks[0].bid < 160
    assert all(round(t.bid, 3) == t.bid and round(t.ask, 3) == t.ask for t in ticks)  # 3-digit grid
    assert sum(t.volume == 0 for t in ticks) / len(ticks) == pytest.approx(0.5, abs=0.02)
    assert {t.volume for t in ticks} == {float(v) for v in range(11)}


def test_quotes_positive_never_crossed_or_locked_times_strictly_increasing(ticks):
    assert (ticks["bid"] > 0).all()
    assert (ticks["ask"] > ticks["bid"]).all()
    assert (np.diff(ticks["ts_ms"]) >= 1).all()
    assert np.array_equal(np.round(ticks["bid"], 5), ticks["bid"])  # on the 5-digit grid


def test_arrivals_are_irregular_and_follow_the_hour_of_day(ticks):
    gaps = np.diff(ticks["ts_ms"]) / 1000.0
    # A Poisson process has coefficient of variation 1; a rate switching with regime and hour
    # makes it burstier.
    assert gaps.std() / gaps.mean() > 1.2
    assert 0.8 < gaps.mean() < 3.0  # the real OANDA EURUSD feed: ~1.8 s
    hours = (ticks["ts_ms"] // 3_600_000) % 24
    days = (ticks["ts_ms"][-1] - ticks["ts_ms"][0]) / 86_400_000
    quiet = np.isin(hours, list(QUIET_HOURS))
    quiet_rate = quiet.sum() / (len(QUIET_HOURS) * 3600 * days)
    active_rate = (~quiet).sum() / ((24 - len(QUIET_HOURS)) * 3600 * days)
    assert 2.5 < active_rate / quiet_rate < 5.0  # activity 0.3 at night vs ~1.1 in the day


def test_regimes_switch_and_differ_in_volatility_and_tick_rate(ticks):
    regime = ticks["regime"]
    episodes = np.count_nonzero(np.diff(regime)) + 1
    assert episodes > 20
    assert set(np.unique(regime)) == {CALM, TRENDING, VOLATILE}
    mid = (ticks["bid"] + ticks["ask"]) / 2
    gaps = np.diff(ticks["ts_ms"]) / 1000.0
    # Log-mid change per sqrt(second), grouped by the regime of the later tick.
    scaled = np.diff(np.log(mid)) / np.sqrt(gaps)
    volatility = {r: scaled[regime[1:] == r].std() for r in (CALM, TRENDING, VOLATILE)}
    assert volatility[VOLATILE] > 2.5 * volatility[CALM]
    assert volatility[TRENDING] > 1.1 * volatility[CALM]
    mean_gap = {r: gaps[regime[1:] == r].mean() for r in (CALM, VOLATILE)}
    assert mean_gap[CALM] > 2 * mean_gap[VOLATILE]


def test_spread_is_realistic_and_wider_in_quiet_hours_and_volatile_regime(ticks):
    pips = (ticks["ask"] - ticks["bid"]) * 10_000
    assert 0.8 <= np.median(pips) <= 1.6  # real EURUSD: median 1.1 pip
    assert 2.0 <= np.percentile(pips, 99) <= 10.0  # real EURUSD: p99 7.6 pips
    assert pips.min() >= 0.1 - 1e-9
    hours = (ticks["ts_ms"] // 3_600_000) % 24
    quiet = np.isin(hours, list(QUIET_HOURS))
    calm = ticks["regime"] == CALM
    assert np.median(pips[quiet & calm]) > 1.5 * np.median(pips[~quiet & calm])
    assert np.median(pips[~quiet & (ticks["regime"] == VOLATILE)]) > 2 * np.median(pips[~quiet & calm])


def test_the_validator_accepts_every_synthetic_tick():
    validator = TickValidator()
    rejected = [
        (t.position, rejection)
        for t in synthetic_ticks("EURUSD", n=200_000, seed=11)
        if (rejection := validator.check(t.symbol, t.ts_ms, t.bid, t.ask)) is not None
    ]
    assert rejected == []


def test_bad_arguments():
    with pytest.raises(ValueError):
        list(islice(synthetic_ticks(n=10, price=0.0), 1))
    assert list(synthetic_ticks(n=0)) == []
