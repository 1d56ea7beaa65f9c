"""The validator's rules (R7.1): each passes and fails on values, says the value and the
threshold, and decides what unknown data means."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tradepipe.config import ALL_RULES, ValidatorSettings
from tradepipe.events.types import Contribution, TradingSignalGenerated
from tradepipe.runtime.service import Context
from tradepipe.trading.rules import (
    RULES, BarFacts, candlestick_confirmation, confidence_floor, max_trades_per_hour, model_agreement,
    spread_ceiling, trading_hours, volatility_regime,
)

TUESDAY_10 = datetime(2014, 5, 6, 10, 0, tzinfo=timezone.utc)
PRICE = 1.38
# the thresholds these tests were written against, pinned so a change of defaults does not move them
DEFAULTS = ValidatorSettings(min_confidence=0.4, max_spread_bps=2.0)


def signal(direction: str = "BUY", confidence: float = 0.5, *, at: datetime = TUESDAY_10,
           contributors: tuple[tuple[str, float, bool], ...] = ()) -> TradingSignalGenerated:
    """A signal at ``at``; contributors as (direction, normalised weight, fallback)."""
    ctx = Context("ensemble-coordinator")
    ctx.begin(None, key=b"signal")
    ctx.clock.advance(at)
    return ctx.emit(
        TradingSignalGenerated, symbol="EURUSD", direction=direction, confidence=confidence, timeframe="1m",
        bar_time=at - timedelta(minutes=1), price=PRICE,
        contributors=[Contribution(model=f"m{i}", direction=d, confidence=0.5, weight=w, fallback=f)
                      for i, (d, w, f) in enumerate(contributors)],
    )


def facts(**values) -> BarFacts:
    return BarFacts(bar_time=TUESDAY_10 - timedelta(minutes=1), price=PRICE, **values)


def settings(**values) -> ValidatorSettings:
    return ValidatorSettings(**{**DEFAULTS.model_dump(), **values})


def verdict(rule, sig=None, bar=None, config=DEFAULTS) -> tuple[bool, str]:
    v = rule(sig or signal(), bar or facts(), config)
    assert v.rule == rule.__name__
    return v.passed, v.detail


def test_every_configurable_rule_has_a_function_of_its_name():
    assert tuple(RULES) == ALL_RULES
    assert all(fn.__name__ == name for name, fn in RULES.items())


def test_confidence_floor():
    assert verdict(confidence_floor, signal(confidence=0.38)) == (False, "confidence 0.380 < floor 0.400")
    assert verdict(confidence_floor, signal(confidence=0.4)) == (True, "confidence 0.400 >= floor 0.400")
    assert verdict(confidence_floor, signal(confidence=0.38), config=settings(min_confidence=0.35)) == (
        True, "confidence 0.380 >= floor 0.350")


def test_spread_ceiling_in_basis_points_of_the_price():
    # 0.000138 / 1.38 = 1 bp
    assert verdict(spread_ceiling, bar=facts(spread_mean=0.000138)) == (True, "spread 1.00 bp <= max 2.00 bp")
    assert verdict(spread_ceiling, bar=facts(spread_mean=0.000345)) == (False, "spread 2.50 bp > max 2.00 bp")
    assert verdict(spread_ceiling, bar=facts(spread_mean=0.000345), config=settings(max_spread_bps=3)) == (
        True, "spread 2.50 bp <= max 3.00 bp")


def test_an_unknown_spread_is_not_checked():
    assert verdict(spread_ceiling, bar=facts()) == (True, "not checked: no spread for this bar")
    no_features = BarFacts(price=PRICE, missing="no features for bar 2014-05-06T09:59:00+00:00")
    assert verdict(spread_ceiling, bar=no_features) == (
        True, "not checked: no features for bar 2014-05-06T09:59:00+00:00")


def test_volatility_regime_bounds_the_atr_from_both_sides():
    assert verdict(volatility_regime, bar=facts(atr_14=0.000276)) == (True, "ATR 2.00 bp in [0.50, 50.00] bp")
    assert verdict(volatility_regime, bar=facts(atr_14=0.0000276)) == (
        False, "ATR 0.20 bp < min 0.50 bp (too quiet)")
    assert verdict(volatility_regime, bar=facts(atr_14=0.0138)) == (False, "ATR 100.00 bp > max 50.00 bp (too wild)")
    assert verdict(volatility_regime, bar=facts(atr_14=0.000276), config=settings(min_atr_bps=2.5)) == (
        False, "ATR 2.00 bp < min 2.50 bp (too quiet)")


def test_an_unknown_atr_fails():
    assert verdict(volatility_regime, bar=facts()) == (False, "ATR unknown (warm-up)")
    assert verdict(volatility_regime, bar=BarFacts(missing="no features for bar X")) == (
        False, "ATR unknown (no features for bar X)")
    assert verdict(volatility_regime, bar=facts(atr_14=float("nan"))) == (False, "ATR is not a number (nan)")


def test_model_agreement_sums_the_weights_of_the_models_saying_the_signals_direction():
    two_of_three = (("BUY", 0.38, False), ("BUY", 0.30, False), ("SELL", 0.32, False))
    assert verdict(model_agreement, signal(contributors=two_of_three)) == (
        True, "2 of 3 models, weight 0.68 >= 0.50")
    assert verdict(model_agreement, signal("SELL", contributors=two_of_three)) == (
        False, "1 of 3 models, weight 0.32 < 0.50")
    # normalised weights that all agree reach a floor of 1.0 although their float sum is 0.999...
    unanimous = (("BUY", 0.7, False), ("BUY", 0.2, False), ("BUY", 0.1, False))
    assert 0.7 + 0.2 + 0.1 < 1.0
    assert verdict(model_agreement, signal(contributors=unanimous), config=settings(min_agreement=1.0)) == (
        True, "3 of 3 models, weight 1.00 >= 1.00")


def test_a_fallback_counts_as_the_direction_it_gave_and_is_named():
    with_fallback = (("BUY", 0.4, True), ("BUY", 0.2, False), ("HOLD", 0.4, True))
    assert verdict(model_agreement, signal(contributors=with_fallback)) == (
        True, "2 of 3 models (1 by fallback), weight 0.60 >= 0.50")
    assert verdict(model_agreement, signal()) == (False, "no model answered")


def test_max_trades_per_hour_counts_validated_signals_in_the_hour_of_event_time_before_the_signal():
    now = TUESDAY_10
    times = [now - timedelta(minutes=m) for m in (60, 59, 30, 1)]  # the one 60 minutes ago has left the window
    assert verdict(max_trades_per_hour, bar=facts(trade_times=times)) == (
        True, "3 validated in the last hour < max 6")
    assert verdict(max_trades_per_hour, bar=facts(trade_times=times), config=settings(max_trades_per_hour=3)) == (
        False, "3 validated in the last hour >= max 3")
    later = signal(at=now + timedelta(minutes=30))  # only the one a minute before `now` is left
    assert verdict(max_trades_per_hour, later, facts(trade_times=times), settings(max_trades_per_hour=2)) == (
        True, "1 validated in the last hour < max 2")
    assert verdict(max_trades_per_hour, config=settings(max_trades_per_hour=0)) == (
        False, "0 validated in the last hour >= max 0")


def test_trading_hours_in_utc():
    day = settings(trading_hours=(8, 17))
    assert verdict(trading_hours, config=day) == (True, "Tue 10:00 UTC: hour 10 in [8, 17)")
    assert verdict(trading_hours, signal(at=TUESDAY_10.replace(hour=17)), config=day) == (
        False, "Tue 17:00 UTC: hour 17 not in [8, 17)")
    assert verdict(trading_hours, signal(at=TUESDAY_10.replace(hour=7, minute=59)), config=day) == (
        False, "Tue 07:59 UTC: hour 7 not in [8, 17)")
    assert verdict(trading_hours) == (True, "Tue 10:00 UTC: hour 10 in [0, 24)")  # (0, 24): all day
    # a timestamp with another UTC offset is judged in UTC: 12:00+02:00 is 10:00 UTC
    cest = TUESDAY_10.astimezone(timezone(timedelta(hours=2)))
    assert verdict(trading_hours, signal(at=cest), config=settings(trading_hours=(10, 11)))[0] is True


def test_trading_hours_wrap_around_midnight_when_start_is_after_end():
    night = settings(trading_hours=(22, 6))
    for hour, passed in ((22, True), (23, True), (0, True), (5, True), (6, False), (10, False), (21, False)):
        ok, detail = verdict(trading_hours, signal(at=TUESDAY_10.replace(hour=hour)), config=night)
        assert ok is passed and detail.endswith(f"hour {hour} {'in' if passed else 'not in'} [22, 6)")


def test_weekends_are_not_traded_by_default():
    saturday = datetime(2014, 5, 10, 10, 0, tzinfo=timezone.utc)
    assert verdict(trading_hours, signal(at=saturday)) == (
        False, "Sat 10:00 UTC: not a trading day (Mon, Tue, Wed, Thu, Fri)")
    assert verdict(trading_hours, signal(at=saturday), config=settings(trading_days=(5, 6))) == (
        True, "Sat 10:00 UTC: hour 10 in [0, 24)")
    assert verdict(trading_hours, config=settings(trading_days=(5, 6))) == (
        False, "Tue 10:00 UTC: not a trading day (Sat, Sun)")


@pytest.mark.parametrize("direction, candles, passed, detail", [
    ("BUY", dict(cdl_engulfing=-100.0, cdl_hammer=0.0, cdl_doji=0.0), False, "bearish engulfing (-100) contradicts BUY"),
    ("BUY", dict(cdl_engulfing=100.0, cdl_hammer=0.0, cdl_doji=0.0), True, "bullish engulfing (+100) confirms BUY"),
    ("BUY", dict(cdl_engulfing=0.0, cdl_hammer=100.0, cdl_doji=0.0), True, "hammer (+100) confirms BUY"),
    ("BUY", dict(cdl_engulfing=0.0, cdl_hammer=0.0, cdl_doji=100.0), True,
     "no pattern contradicts BUY (doji: indecision)"),
    ("SELL", dict(cdl_engulfing=80.0, cdl_hammer=0.0, cdl_doji=0.0), False, "bullish engulfing (+80) contradicts SELL"),
    ("SELL", dict(cdl_engulfing=0.0, cdl_hammer=100.0, cdl_doji=0.0), False, "hammer (+100) contradicts SELL"),
    ("SELL", dict(cdl_engulfing=100.0, cdl_hammer=100.0, cdl_doji=0.0), False,
     "bullish engulfing (+100), hammer (+100) contradicts SELL"),
    ("SELL", dict(cdl_engulfing=-80.0, cdl_hammer=0.0, cdl_doji=0.0), True, "bearish engulfing (-80) confirms SELL"),
    ("SELL", dict(cdl_engulfing=0.0, cdl_hammer=0.0, cdl_doji=0.0), True, "no pattern contradicts SELL"),
    # the TA warm-up leaves some values unknown: the known ones are still read
    ("SELL", dict(cdl_engulfing=100.0), False, "bullish engulfing (+100) contradicts SELL"),
    ("BUY", {}, True, "not checked: candle patterns unknown"),
    ("HOLD", dict(cdl_engulfing=-100.0), True, "not checked: HOLD"),
])
def test_candlestick_confirmation_fails_on_a_contradicting_pattern(direction, candles, passed, detail):
    assert verdict(candlestick_confirmation, signal(direction), facts(**candles)) == (passed, detail)


def test_candlestick_confirmation_can_require_an_agreeing_pattern():
    required = settings(require_candle_pattern=True)
    none = facts(cdl_engulfing=0.0, cdl_hammer=0.0, cdl_doji=100.0)
    assert verdict(candlestick_confirmation, signal("BUY"), none, required) == (
        False, "no pattern confirms BUY, one is required (doji: indecision)")
    assert verdict(candlestick_confirmation, signal("SELL"), facts(cdl_engulfing=-100.0), required) == (
        True, "bearish engulfing (-100) confirms SELL")
    # unknown candles are not checked even when a pattern is required
    assert verdict(candlestick_confirmation, signal("BUY"), BarFacts(missing="no features for bar X"), required) == (
        True, "not checked: no features for bar X")
