"""The pattern validator's rules (R7.1): one small pure function per rule.

A rule is ``(signal, facts, settings) -> RuleVerdict``: it reads the ensemble's signal, what the
validator knows about the signal's bar (:class:`BarFacts`) and the live
:class:`~tradepipe.config.ValidatorSettings`, and says whether the signal passes, with a
``detail`` that always states the measured value and the threshold it was held to
("confidence 0.380 < floor 0.400"), so a rejection can be read without the code.

Rules never raise on missing data; they decide what unknown means for them:

- spread and candle patterns may legitimately not exist (bar files carry no spread, a warm-up
  bar no pattern): the rule passes with a detail starting "not checked";
- an unknown ATR (indicator warm-up) fails: a bar too early to measure is too early to trade;
- when the validator has no features at all for the signal's bar, ``facts.missing`` says so
  ("no features for bar ...") and the rules that needed them quote it.

:data:`RULES` maps every :data:`~tradepipe.config.RuleName` to its function; the validator
evaluates those named in ``settings.rules``, in that order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

import msgspec

from tradepipe.config import RuleName, ValidatorSettings
from tradepipe.events.types import RuleVerdict, TradingSignalGenerated

HOUR = timedelta(hours=1)
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# normalised weights are float sums: three agreeing thirds must reach an agreement of 1.0
AGREEMENT_TOLERANCE = 1e-9


class BarFacts(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the validator knows about a signal's bar: the market-microstructure features
    ``spread_mean`` and ``mid_close`` (``price``; the signal's own price when that group is
    absent), the technical-analysis features ``atr_14`` and TA-Lib candle values
    (``cdl_engulfing`` ±100/±80, ``cdl_hammer`` +100, ``cdl_doji`` 100), and the event times of
    the symbol's recently validated signals, oldest first. None = unknown. ``missing`` is
    empty, or why the bar's features are unknown altogether."""

    bar_time: datetime | None = None
    price: float | None = None
    spread_mean: float | None = None
    atr_14: float | None = None
    cdl_engulfing: float | None = None
    cdl_hammer: float | None = None
    cdl_doji: float | None = None
    trade_times: Sequence[datetime] = ()
    missing: str = ""


Rule = Callable[[TradingSignalGenerated, BarFacts, ValidatorSettings], RuleVerdict]


def confidence_floor(signal: TradingSignalGenerated, facts: BarFacts, settings: ValidatorSettings) -> RuleVerdict:
    confidence, floor = signal.confidence, settings.min_confidence
    passed = confidence >= floor
    return RuleVerdict(rule="confidence_floor", passed=passed,
                       detail=f"confidence {confidence:.3f} {'>=' if passed else '<'} floor {floor:.3f}")


def spread_ceiling(signal: TradingSignalGenerated, facts: BarFacts, settings: ValidatorSettings) -> RuleVerdict:
    spread, price = facts.spread_mean, facts.price
    if spread is None or not price:
        return RuleVerdict(rule="spread_ceiling", passed=True,
                           detail=f"not checked: {facts.missing or 'no spread for this bar'}")
    bps, ceiling = spread / price * 1e4, settings.max_spread_bps
    passed = bps <= ceiling
    return RuleVerdict(rule="spread_ceiling", passed=passed,
                       detail=f"spread {bps:.2f} bp {'<=' if passed else '>'} max {ceiling:.2f} bp")


def volatility_regime(signal: TradingSignalGenerated, facts: BarFacts, settings: ValidatorSettings) -> RuleVerdict:
    atr, price = facts.atr_14, facts.price
    if atr is None or not price:
        why = facts.missing or ("warm-up" if atr is None else "no price for this bar")
        return RuleVerdict(rule="volatility_regime", passed=False, detail=f"ATR unknown ({why})")
    bps, low, high = atr / price * 1e4, settings.min_atr_bps, settings.max_atr_bps
    if low <= bps <= high:
        return RuleVerdict(rule="volatility_regime", passed=True,
                           detail=f"ATR {bps:.2f} bp in [{low:.2f}, {high:.2f}] bp")
    if bps < low:
        detail = f"ATR {bps:.2f} bp < min {low:.2f} bp (too quiet)"
    elif bps > high:
        detail = f"ATR {bps:.2f} bp > max {high:.2f} bp (too wild)"
    else:
        detail = f"ATR is not a number ({atr})"
    return RuleVerdict(rule="volatility_regime", passed=False, detail=detail)


def model_agreement(signal: TradingSignalGenerated, facts: BarFacts, settings: ValidatorSettings) -> RuleVerdict:
    contributors = signal.contributors
    if not contributors:
        return RuleVerdict(rule="model_agreement", passed=False, detail="no model answered")
    direction = signal.direction
    agreeing = weight = fallbacks = 0
    for c in contributors:
        if c.direction == direction:
            agreeing += 1
            weight += c.weight
            fallbacks += c.fallback
    floor = settings.min_agreement
    passed = weight + AGREEMENT_TOLERANCE >= floor
    note = f" ({fallbacks} by fallback)" if fallbacks else ""
    return RuleVerdict(rule="model_agreement", passed=passed,
                       detail=f"{agreeing} of {len(contributors)} models{note}, "
                              f"weight {weight:.2f} {'>=' if passed else '<'} {floor:.2f}")


def max_trades_per_hour(signal: TradingSignalGenerated, facts: BarFacts, settings: ValidatorSettings) -> RuleVerdict:
    times = facts.trade_times
    # the window is the hour of event time up to this signal: (now - 1h, now]
    recent = len(times) - bisect_right(times, signal.timestamp - HOUR)
    limit = settings.max_trades_per_hour
    passed = recent < limit
    return RuleVerdict(rule="max_trades_per_hour", passed=passed,
                       detail=f"{recent} validated in the last hour {'<' if passed else '>='} max {limit}")


def trading_hours(signal: TradingSignalGenerated, facts: BarFacts, settings: ValidatorSettings) -> RuleVerdict:
    ts = signal.timestamp
    if ts.tzinfo is not timezone.utc:
        ts = ts.astimezone(timezone.utc)
    day, hour = ts.weekday(), ts.hour
    when = f"{DAY_NAMES[day]} {hour:02d}:{ts.minute:02d} UTC"
    if day not in settings.trading_days:
        days = ", ".join(DAY_NAMES[d] for d in sorted(settings.trading_days)) or "none"
        return RuleVerdict(rule="trading_hours", passed=False, detail=f"{when}: not a trading day ({days})")
    start, end = settings.trading_hours
    passed = start <= hour < end if start <= end else (hour >= start or hour < end)  # start > end wraps midnight
    return RuleVerdict(rule="trading_hours", passed=passed,
                       detail=f"{when}: hour {hour} {'in' if passed else 'not in'} [{start}, {end})")


def candlestick_confirmation(signal: TradingSignalGenerated, facts: BarFacts,
                             settings: ValidatorSettings) -> RuleVerdict:
    direction = signal.direction
    engulfing, hammer, doji = facts.cdl_engulfing, facts.cdl_hammer, facts.cdl_doji
    if direction == "HOLD":
        return RuleVerdict(rule="candlestick_confirmation", passed=True, detail="not checked: HOLD")
    if engulfing is None and hammer is None and doji is None:
        return RuleVerdict(rule="candlestick_confirmation", passed=True,
                           detail=f"not checked: {facts.missing or 'candle patterns unknown'}")
    bullish: list[str] = []
    bearish: list[str] = []
    if engulfing:
        (bullish if engulfing > 0 else bearish).append(
            f"{'bullish' if engulfing > 0 else 'bearish'} engulfing ({engulfing:+.0f})")
    if hammer and hammer > 0:  # TA-Lib's hammer is a bullish reversal only
        bullish.append(f"hammer ({hammer:+.0f})")
    agreeing, contradicting = (bullish, bearish) if direction == "BUY" else (bearish, bullish)
    if contradicting:
        return RuleVerdict(rule="candlestick_confirmation", passed=False,
                           detail=f"{', '.join(contradicting)} contradicts {direction}")
    if agreeing:
        return RuleVerdict(rule="candlestick_confirmation", passed=True,
                           detail=f"{', '.join(agreeing)} confirms {direction}")
    indecision = " (doji: indecision)" if doji else ""
    if settings.require_candle_pattern:
        return RuleVerdict(rule="candlestick_confirmation", passed=False,
                           detail=f"no pattern confirms {direction}, one is required{indecision}")
    return RuleVerdict(rule="candlestick_confirmation", passed=True,
                       detail=f"no pattern contradicts {direction}{indecision}")


RULES: dict[RuleName, Rule] = {
    "confidence_floor": confidence_floor,
    "spread_ceiling": spread_ceiling,
    "volatility_regime": volatility_regime,
    "model_agreement": model_agreement,
    "max_trades_per_hour": max_trades_per_hour,
    "trading_hours": trading_hours,
    "candlestick_confirmation": candlestick_confirmation,
}


__all__ = ["BarFacts", "RULES", "Rule"]
