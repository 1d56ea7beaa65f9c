"""Pattern validator (R7.1): every rule judged for every signal, features matched by bar,
trades counted in event time, live configuration, snapshot and restore, and the real
pipeline from ticks to verdicts."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import msgspec
from tradepipe.config import ALL_RULES, Settings, ValidatorSettings
from tradepipe.events.types import (
    AlertRaised, ConfigurationUpdated, Contribution, FeaturesCalculated, SignalRejected, SignalValidated,
    TradingSignalGenerated,
)
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import Checkpoint
from tradepipe.services.validator import PatternValidator

from .conftest import run

# the thresholds these tests were written against, pinned so a change of defaults does not move them
PINNED = ValidatorSettings(min_confidence=0.4, max_spread_bps=2.0)


def pinned(**values) -> ValidatorSettings:
    return ValidatorSettings(**{**PINNED.model_dump(), **values})

T0 = datetime(2014, 5, 6, 10, 0, tzinfo=timezone.utc)  # a Tuesday
PRICE = 1.38
#: a calm, tradable bar: spread 1 bp, ATR 2 bp, no candle pattern
CALM_MM = {"spread_mean": 0.000138, "mid_close": PRICE, "tick_count": 40.0}
CALM_TA = {"atr_14": 0.000276, "cdl_engulfing": 0.0, "cdl_hammer": 0.0, "cdl_doji": 0.0, "stoch_k": 50.0}


def closed_at(bar: int) -> datetime:
    return T0 + timedelta(minutes=bar + 1, milliseconds=100)


def features(group: str, bar: int, values: dict, *, symbol: str = "EURUSD") -> FeaturesCalculated:
    ctx = Context(group)
    ctx.begin(None, key=f"{group}|{symbol}|{bar}".encode())
    ctx.clock.advance(closed_at(bar))
    return ctx.emit(FeaturesCalculated, symbol=symbol, timeframe="1m", bar_time=T0 + timedelta(minutes=bar),
                    group=group, features=values)


def bar(bar: int, mm: dict = CALM_MM, ta: dict = CALM_TA, *, symbol: str = "EURUSD") -> list[FeaturesCalculated]:
    """The three feature groups of one bar, as the feature services publish them."""
    return [features("market-microstructure", bar, mm, symbol=symbol),
            features("feature-engineering", bar, {"close": PRICE, "ema_12": PRICE}, symbol=symbol),
            features("technical-analysis", bar, ta, symbol=symbol)]


def signal(direction: str = "BUY", confidence: float = 0.6, *, bar: int = 0, symbol: str = "EURUSD",
           agreeing: int = 3, delay: timedelta = timedelta(0)) -> TradingSignalGenerated:
    """The ensemble's signal of bar ``bar``: ``agreeing`` of three equally weighted models say ``direction``."""
    ctx = Context("ensemble-coordinator")
    ctx.begin(None, key=f"signal|{symbol}|{bar}|{delay}".encode())
    ctx.clock.advance(closed_at(bar) + delay)
    other = "SELL" if direction == "BUY" else "BUY"
    return ctx.emit(
        TradingSignalGenerated, symbol=symbol, direction=direction, confidence=confidence, timeframe="1m",
        bar_time=T0 + timedelta(minutes=bar), price=PRICE,
        target_price=PRICE + 0.001 if direction == "BUY" else PRICE - 0.001,
        stop_loss=PRICE - 0.0005 if direction == "BUY" else PRICE + 0.0005,
        contributors=[Contribution(model=f"model-{i}", direction=direction if i < agreeing else other,
                                   confidence=0.6, weight=1 / 3) for i in range(3)],
        correlation_id=uuid.uuid5(uuid.NAMESPACE_OID, f"{symbol}|{bar}"),
    )


def update(changes: dict, at: datetime = T0) -> ConfigurationUpdated:
    ctx = Context("operator")
    ctx.begin(None, key=repr(changes).encode())
    ctx.clock.advance(at)
    return ctx.emit(ConfigurationUpdated, changes=changes)


def verdict_of(outputs: list) -> SignalValidated | SignalRejected:
    [verdict] = [e for e in outputs if type(e) in (SignalValidated, SignalRejected)]
    return verdict


def failed(verdict) -> list[str]:
    return [v.rule for v in verdict.verdicts if not v.passed]


def test_a_signal_passing_every_rule_is_validated_with_the_signals_fields_and_ids():
    validator = PatternValidator(PINNED)
    sig = signal()
    [verdict] = run([validator], [*bar(0), sig])
    assert type(verdict) is SignalValidated
    assert [v.rule for v in verdict.verdicts] == list(ALL_RULES) and failed(verdict) == []
    assert [v.detail for v in verdict.verdicts] == [
        "confidence 0.600 >= floor 0.400", "spread 1.00 bp <= max 2.00 bp", "ATR 2.00 bp in [0.50, 50.00] bp",
        "3 of 3 models, weight 1.00 >= 0.50", "0 validated in the last hour < max 6",
        "Tue 10:01 UTC: hour 10 in [0, 24)", "no pattern contradicts BUY"]
    assert verdict.signal_id == sig.event_id and verdict.causation_id == sig.event_id
    assert verdict.correlation_id == sig.correlation_id and verdict.symbol == "EURUSD"
    assert (verdict.direction, verdict.confidence, verdict.timeframe, verdict.bar_time, verdict.price,
            verdict.target_price, verdict.stop_loss) == (
        "BUY", 0.6, "1m", T0, PRICE, sig.target_price, sig.stop_loss)
    assert verdict.timestamp == sig.timestamp and verdict.metadata.producer == "pattern-validator"
    assert (validator.validated, validator.rejected) == (1, 0)


def test_every_rule_is_judged_even_when_several_fail():
    validator = PatternValidator(pinned(trading_hours=(12, 16)))
    wide = {**CALM_MM, "spread_mean": 0.000414}  # 3 bp
    bearish = {**CALM_TA, "cdl_engulfing": -100.0}
    verdict = verdict_of(run([validator], [*bar(0, wide, bearish), signal(confidence=0.3, agreeing=1)]))
    assert type(verdict) is SignalRejected
    assert [v.rule for v in verdict.verdicts] == list(ALL_RULES)
    assert failed(verdict) == ["confidence_floor", "spread_ceiling", "model_agreement", "trading_hours",
                               "candlestick_confirmation"]
    details = {v.rule: v.detail for v in verdict.verdicts}
    assert details["spread_ceiling"] == "spread 3.00 bp > max 2.00 bp"
    assert details["model_agreement"] == "1 of 3 models, weight 0.33 < 0.50"
    assert details["candlestick_confirmation"] == "bearish engulfing (-100) contradicts BUY"
    assert validator.rejected == 1 and validator.rejected_by_rule == Counter(failed(verdict))


def test_rules_are_judged_in_the_settings_order_and_only_those_named():
    validator = PatternValidator(pinned(rules=("trading_hours", "confidence_floor")))
    verdict = verdict_of(run([validator], [*bar(0), signal(confidence=0.1)]))
    assert [(v.rule, v.passed) for v in verdict.verdicts] == [("trading_hours", True), ("confidence_floor", False)]


def test_a_hold_signal_is_rejected_with_a_direction_verdict_first_and_all_the_others():
    validator = PatternValidator()
    verdict = verdict_of(run([validator], [*bar(0), signal("HOLD", 0.7)]))
    assert type(verdict) is SignalRejected and verdict.direction == "HOLD"
    assert [v.rule for v in verdict.verdicts] == ["direction", *ALL_RULES]
    assert (verdict.verdicts[0].passed, verdict.verdicts[0].detail) == (False, "HOLD: nothing to trade")
    assert failed(verdict) == ["direction"]
    assert validator.rejected_by_rule == Counter({"direction": 1}) and validator.trade_times == {}


def test_the_features_of_the_signals_own_bar_are_used():
    validator = PatternValidator()
    wide = {**CALM_MM, "spread_mean": 0.000414}
    # bar 0 is wide, bar 1 calm; the signal of bar 0 arrives after bar 1's features
    verdict = verdict_of(run([validator], [*bar(0, wide), *bar(1), signal(bar=0, delay=timedelta(minutes=1))]))
    assert failed(verdict) == ["spread_ceiling"]
    assert type(verdict_of(run([validator], [signal(bar=1)]))) is SignalValidated
    # bar 5 has no features: the rules that need them say so
    verdict = verdict_of(run([validator], [signal(bar=5)]))
    details = {v.rule: (v.passed, v.detail) for v in verdict.verdicts}
    assert details["spread_ceiling"] == (True, "not checked: no features for bar 2014-05-06T10:05:00+00:00")
    assert details["volatility_regime"] == (False, "ATR unknown (no features for bar 2014-05-06T10:05:00+00:00)")
    assert details["candlestick_confirmation"] == (
        True, "not checked: no features for bar 2014-05-06T10:05:00+00:00")
    assert failed(verdict) == ["volatility_regime"]


def test_features_are_kept_per_symbol_for_the_last_two_bars_and_other_groups_are_not_kept():
    validator = PatternValidator()
    run([validator], [*bar(0), *bar(1), *bar(2), *bar(0, symbol="NZDUSD")])
    assert {key: sorted(t.minute for t in bars) for key, bars in validator.features.items()} == {
        ("EURUSD", "1m"): [1, 2], ("NZDUSD", "1m"): [0]}
    assert validator.features["EURUSD", "1m"][T0 + timedelta(minutes=2)] == {
        "spread_mean": 0.000138, "mid_close": PRICE, "atr_14": 0.000276, "cdl_engulfing": 0.0,
        "cdl_hammer": 0.0, "cdl_doji": 0.0}
    run([validator], bar(0))  # a late bar older than both kept: dropped
    assert sorted(t.minute for t in validator.features["EURUSD", "1m"]) == [1, 2]


def test_a_bar_without_microstructure_is_priced_by_the_signal_and_its_spread_not_checked():
    validator = PatternValidator()
    technical_only = [e for e in bar(0) if e.group == "technical-analysis"]  # a bar file: no ticks
    verdict = verdict_of(run([validator], [*technical_only, signal()]))
    details = {v.rule: (v.passed, v.detail) for v in verdict.verdicts}
    assert details["spread_ceiling"] == (True, "not checked: no spread for this bar")
    assert details["volatility_regime"] == (True, "ATR 2.00 bp in [0.50, 50.00] bp")
    assert type(verdict) is SignalValidated


def test_max_trades_per_hour_counts_validated_signals_of_the_symbol_in_event_time():
    validator = PatternValidator(pinned(max_trades_per_hour=2))
    outcomes = []
    for minute, symbol in ((0, "EURUSD"), (10, "EURUSD"), (20, "EURUSD"), (25, "NZDUSD"), (30, "EURUSD"),
                           (61, "EURUSD")):
        outputs = run([validator], [*bar(minute, symbol=symbol), signal(bar=minute, symbol=symbol)])
        verdict = verdict_of(outputs)
        outcomes.append((minute, type(verdict).__name__, verdict.verdicts[4].detail))
    assert outcomes == [
        (0, "SignalValidated", "0 validated in the last hour < max 2"),
        (10, "SignalValidated", "1 validated in the last hour < max 2"),
        (20, "SignalRejected", "2 validated in the last hour >= max 2"),
        (25, "SignalValidated", "0 validated in the last hour < max 2"),  # another symbol
        (30, "SignalRejected", "2 validated in the last hour >= max 2"),  # rejections do not count
        (61, "SignalValidated", "1 validated in the last hour < max 2"),  # minute 0 left the hour
    ]
    # the kept times are the last hour's only
    assert [t.minute for t in validator.trade_times["EURUSD"]] == [11, 2]


def test_a_live_configuration_update_changes_the_next_decision():
    validator = PatternValidator(PINNED)
    assert failed(verdict_of(run([validator], [*bar(0), signal(confidence=0.38)]))) == ["confidence_floor"]
    assert run([validator], [update({"validator.min_confidence": 0.35, "trading.max_drawdown": 0.1})]) == []
    assert validator.settings.min_confidence == 0.35
    verdict = verdict_of(run([validator], [*bar(1), signal(confidence=0.38, bar=1)]))
    assert type(verdict) is SignalValidated and verdict.verdicts[0].detail == "confidence 0.380 >= floor 0.350"
    run([validator], [update({"validator.rules": ["confidence_floor"], "validator.min_confidence": 0.9})])
    verdict = verdict_of(run([validator], [*bar(2), signal(confidence=0.38, bar=2)]))
    assert [(v.rule, v.passed) for v in verdict.verdicts] == [("confidence_floor", False)]


def test_an_invalid_update_raises_an_alert_naming_the_field_and_the_old_settings_stay():
    validator = PatternValidator(PINNED)
    before = validator.settings
    [alert] = run([validator], [update({"validator.min_confidence": 0.3, "validator.max_spread_bps": -1,
                                        "validator.no_such_rule": 1})])
    assert type(alert) is AlertRaised and (alert.rule, alert.severity) == ("configuration", "warning")
    assert "validator.max_spread_bps" in alert.message and "validator.no_such_rule" in alert.message
    assert "validator.min_confidence" not in alert.message  # a valid value, refused with the rest
    assert validator.settings is before  # all or nothing
    verdict = verdict_of(run([validator], [*bar(0), signal(confidence=0.38)]))
    assert failed(verdict) == ["confidence_floor"]
    [alert] = run([validator], [update({"validator.trading_hours": [25, 3]})])
    assert "trading_hours" in alert.message and validator.settings is before


def _stream() -> list:
    """Signals of two symbols over 90 minutes with a live update in the middle."""
    events: list = []
    for minute in range(0, 90, 3):
        for symbol in ("EURUSD", "NZDUSD"):
            ta = {**CALM_TA, "cdl_engulfing": -100.0 if minute % 9 == 0 else 0.0}
            events += [*bar(minute, ta=ta, symbol=symbol),
                       signal("BUY", 0.35 + 0.01 * (minute % 10), bar=minute, symbol=symbol)]
        if minute == 30:
            events.append(update({"validator.min_confidence": 0.37, "validator.max_trades_per_hour": 4},
                                 at=closed_at(minute)))
    return events


def test_a_restored_validator_decides_exactly_as_the_original():
    events = _stream()
    uninterrupted = run([PatternValidator()], events)
    assert len(uninterrupted) == 60 and {type(e) for e in uninterrupted} == {SignalValidated, SignalRejected}
    split = next(i for i, e in enumerate(events)
                 if type(e) is TradingSignalGenerated and e.bar_time == T0 + timedelta(minutes=63))
    original = PatternValidator()
    before = run([original], events[:split])
    state = original.snapshot()
    assert state["settings"]["min_confidence"] == 0.37 and state["trade_times"] and state["features"]
    stored = msgspec.msgpack.decode(msgspec.msgpack.encode(Checkpoint(positions=[], state=state)), type=Checkpoint)
    restored = PatternValidator(pinned(min_confidence=0.9))  # the snapshot's live settings win
    restored.restore(stored.state)
    assert restored.settings == original.settings
    assert (restored.features, {s: list(t) for s, t in restored.trade_times.items()}) == (
        original.features, {s: list(t) for s, t in original.trade_times.items()})
    assert before + run([restored], events[split:]) == uninterrupted
    assert restored.snapshot() == _final_snapshot(events)


def _final_snapshot(events) -> dict:
    validator = PatternValidator()
    run([validator], events)
    return validator.snapshot()


def test_events_of_no_interest_are_ignored():
    validator = PatternValidator()
    ctx = Context(validator.name)
    alert = run([PatternValidator()], [update({"validator.min_atr_bps": 99})])[0]
    ctx.begin(alert)
    assert validator.handle(alert, ctx) == () and validator.snapshot() == PatternValidator().snapshot()


# --- the real pipeline -----------------------------------------------------------------------

def verdict_statistics(signals: list[TradingSignalGenerated], verdicts: list) -> dict:
    """Share of signals by direction, pass rate of each rule over the BUY and SELL signals,
    validated count."""
    rules: dict[str, list[bool]] = {}
    for verdict in verdicts:
        if verdict.direction != "HOLD":
            for v in verdict.verdicts:
                rules.setdefault(v.rule, []).append(v.passed)
    return {
        "signals": len(signals),
        "direction_share": {d: round(n / len(signals), 3) for d, n in Counter(s.direction for s in signals).items()},
        "pass_rate": {rule: round(sum(p) / len(p), 3) for rule, p in rules.items()},
        "validated": sum(type(v) is SignalValidated for v in verdicts),
    }


def test_on_real_data_every_signal_gets_one_verdict_with_every_rule(trained, feature_events):
    from tradepipe.pipeline import model_services

    validator = PatternValidator(Settings().validator)
    services = [*model_services(Settings(), trained.registry), validator]
    events: list = []  # inputs and outputs, in dispatch order
    InProcessPipeline(services, on_event=events.append).feed_all(feature_events)
    for service in services:
        if hasattr(service, "close"):
            service.close()
    signals = [e for e in events if type(e) is TradingSignalGenerated]
    verdicts = [e for e in events if type(e) in (SignalValidated, SignalRejected)]
    assert len(signals) > 200 and len(verdicts) == len(signals)
    by_signal = {v.signal_id: v for v in verdicts}
    assert len(by_signal) == len(verdicts)
    for s in signals:
        verdict = by_signal[s.event_id]
        assert verdict.correlation_id == s.correlation_id and verdict.causation_id == s.event_id
        assert [v.rule for v in verdict.verdicts] == ["direction"] * (s.direction == "HOLD") + list(ALL_RULES)
        assert (type(verdict) is SignalValidated) == all(v.passed for v in verdict.verdicts)
        assert (verdict.direction, verdict.bar_time, verdict.price) == (s.direction, s.bar_time, s.price)
        # the feature groups of every bar reached the validator before its signal
        assert not any("no features" in v.detail for v in verdict.verdicts)
    stats = verdict_statistics(signals, verdicts)
    print("verdict statistics:", stats)
    assert validator.validated + validator.rejected == len(signals) and validator.validated == stats["validated"]
    assert validator.rejected_by_rule == Counter(rule for v in verdicts for rule in failed(v))

    # replayed without the models, the features and signals give the same verdicts; with a
    # floor the ensemble's confidence reaches, some are validated and the hourly cap holds
    recorded = [e for e in events if type(e) in (FeaturesCalculated, TradingSignalGenerated)]
    assert run([PatternValidator(Settings().validator)], recorded) == verdicts
    capped = pinned(min_confidence=0.3, max_trades_per_hour=3)
    validated = [v for v in run([PatternValidator(capped)], recorded) if type(v) is SignalValidated]
    assert len(validated) > 10
    for v in validated:
        in_hour = [w for w in validated if v.timestamp - timedelta(hours=1) < w.timestamp <= v.timestamp]
        assert len(in_hour) <= 3
