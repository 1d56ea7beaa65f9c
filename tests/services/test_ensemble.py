"""Ensemble coordinator (R6.3): wait for the models of one correlationId up to a deadline,
weigh them by live hit rate, say who contributed and who was missing."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from tradepipe.config import EnsembleSettings
from tradepipe.events.types import ModelInfo, Prediction, PredictionGenerated, TradingSignalGenerated
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import Checkpoint
from tradepipe.services.ensemble import EnsembleCoordinator, HitWindow

from .conftest import features_of, eurusd_ticks, run, without_timing

PRODUCERS = ("ml-xgboost", "ml-lightgbm", "ml-lstm")
MODELS = {"ml-xgboost": "XGBoost-v1", "ml-lightgbm": "LightGBM-v1", "ml-lstm": "LSTM-v1"}
T0 = datetime(2014, 5, 6, 10, 0, tzinfo=timezone.utc)
BAND = 0.35e-4


def prediction(producer: str, direction: str = "BUY", confidence: float = 0.6, *, bar: int = 0,
               price: float = 1.3800, accuracy: float | None = 0.5, fallback: bool = False,
               model: str | None = None, horizon: str = "5m", delay_ms: int = 0, symbol: str = "EURUSD",
               correlation: uuid.UUID | None = None) -> PredictionGenerated:
    """A model service's prediction of bar ``bar`` (1m bars from T0), emitted by the tick that
    closed it (1 minute later, + ``delay_ms``)."""
    ctx = Context(producer)
    ctx.begin(None, key=f"{producer}|{symbol}|{bar}".encode())
    ctx.clock.advance(T0 + timedelta(minutes=bar + 1, milliseconds=delay_ms))
    target = price + 0.001 if direction == "BUY" else price - 0.001 if direction == "SELL" else None
    stop = price - 0.0005 if direction == "BUY" else price + 0.0005 if direction == "SELL" else None
    return ctx.emit(
        PredictionGenerated,
        symbol=symbol,
        correlation_id=correlation or uuid.uuid5(uuid.NAMESPACE_OID, f"{symbol}|{bar}"),
        causation_id=uuid.uuid5(uuid.NAMESPACE_OID, f"{symbol}|{bar}|features"),
        prediction=Prediction(direction=direction, confidence=confidence, target_price=target, stop_loss=stop,
                              time_horizon=horizon),
        model=ModelInfo(name=model or MODELS[producer], accuracy=accuracy, inference_time="20us"),
        fallback=fallback,
        timeframe="1m",
        bar_time=T0 + timedelta(minutes=bar),
        price=price,
    )


def coordinator(**settings) -> EnsembleCoordinator:
    return EnsembleCoordinator(PRODUCERS, EnsembleSettings(**settings), dead_band=BAND)


def signals(outputs) -> list[TradingSignalGenerated]:
    return [e for e in outputs if type(e) is TradingSignalGenerated]


def test_it_waits_for_every_model_then_combines_them():
    ensemble = coordinator()
    xgb, lgb, lstm = (prediction(p, d, c) for p, d, c in
                      zip(PRODUCERS, ("BUY", "BUY", "SELL"), (0.6, 0.8, 0.9)))
    kernel_outputs = run([ensemble], [xgb, lgb])
    assert kernel_outputs == [] and len(ensemble.groups) == 1
    [signal] = run([ensemble], [lstm])
    assert signal.direction == "BUY" and signal.missing_models == []
    assert [(c.model, c.direction, c.confidence) for c in signal.contributors] == [
        ("XGBoost-v1", "BUY", 0.6), ("LightGBM-v1", "BUY", 0.8), ("LSTM-v1", "SELL", 0.9)]
    # equal weights (no history yet, same validation accuracy): BUY 1.4 vs SELL 0.9 of 3
    assert [c.weight for c in signal.contributors] == pytest.approx([1 / 3] * 3)
    assert signal.confidence == pytest.approx((0.6 + 0.8) / 3)
    assert signal.target_price == pytest.approx(1.381) and signal.stop_loss == pytest.approx(1.3795)
    assert (signal.symbol, signal.timeframe, signal.bar_time, signal.price) == ("EURUSD", "1m", T0, 1.38)
    assert signal.correlation_id == lstm.correlation_id and signal.causation_id == lstm.event_id
    assert signal.timestamp == lstm.timestamp and signal.metadata.producer == "ensemble-coordinator"
    assert ensemble.groups == {} and ensemble.signals == 1 and ensemble.partial_signals == 0


def test_at_the_deadline_it_combines_what_arrived_and_names_the_missing_models():
    ensemble = coordinator(deadline_s=2.0)
    first = [prediction("ml-xgboost", "SELL", 0.7), prediction("ml-lightgbm", "SELL", 0.5, delay_ms=300)]
    next_bar = prediction("ml-xgboost", bar=1)
    assert run([ensemble], first) == []
    # event time: the next prediction, a minute later, is past the deadline of the first bar
    [signal] = run([ensemble], [next_bar])
    assert signal.direction == "SELL" and signal.missing_models == ["ml-lstm"]
    assert [c.model for c in signal.contributors] == ["XGBoost-v1", "LightGBM-v1"]
    assert signal.confidence == pytest.approx((0.7 + 0.5) / 2)
    assert signal.correlation_id == first[0].correlation_id and signal.causation_id == first[1].event_id
    assert signal.bar_time == T0 and ensemble.partial_signals == 1
    # the late model's prediction does not make a second signal for that bar (its time,
    # 30 s after the next bar's first prediction, closes that bar's group)
    [bar_1] = run([ensemble], [prediction("ml-lstm", "BUY", delay_ms=90_000)])
    assert bar_1.correlation_id == next_bar.correlation_id
    assert bar_1.missing_models == ["ml-lightgbm", "ml-lstm"]
    assert ensemble.late_predictions == 1 and ensemble.groups == {}


def test_the_deadline_is_measured_in_event_time_and_on_timer_fires_it_live():
    ensemble = coordinator(deadline_s=2.0)
    ctx = Context(ensemble.name)
    for p in (prediction("ml-xgboost"), prediction("ml-lstm", delay_ms=1999)):
        ctx.begin(p)
        assert ensemble.handle(p, ctx) == []
    ctx.begin(None, key=b"timer")
    ctx.clock.advance(T0 + timedelta(minutes=1, milliseconds=1999))
    assert ensemble.on_timer(ctx) == []
    ctx.clock.advance(T0 + timedelta(minutes=1, seconds=2))
    [signal] = ensemble.on_timer(ctx)
    assert signal.missing_models == ["ml-lightgbm"] and signal.symbol == "EURUSD"


def test_weights_move_toward_the_model_that_is_right_once_horizons_resolve():
    ensemble = coordinator(hit_window=50, prior_weight=5)
    prices = [1.3800 + 0.0002 * (b % 20 if (b // 20) % 2 == 0 else 20 - b % 20) for b in range(120)]
    outputs = []
    for bar, price in enumerate(prices):
        future = prices[min(bar + 5, len(prices) - 1)]
        move = future / price - 1
        right = "BUY" if move > BAND else "SELL" if move < -BAND else "HOLD"
        wrong = {"BUY": "SELL", "SELL": "BUY", "HOLD": "BUY"}[right]
        outputs += run([ensemble], [
            prediction("ml-xgboost", right, 0.55, bar=bar, price=price),
            prediction("ml-lightgbm", wrong, 0.6, bar=bar, price=price),
            prediction("ml-lstm", wrong, 0.6, bar=bar, price=price, horizon=""),  # never scored
        ])
    sigs = signals(outputs)
    assert len(sigs) == 120
    resolved = len(ensemble.hit_rates["XGBoost-v1"])
    assert resolved == 50 and ensemble.hit_rates["XGBoost-v1"].hits == 50
    assert ensemble.hit_rates["LightGBM-v1"].hits == 0 and "LSTM-v1" not in ensemble.hit_rates
    assert ensemble.weight("XGBoost-v1") == pytest.approx((50 + 5 * 0.5) / 55)
    assert ensemble.weight("LightGBM-v1") == pytest.approx((0 + 5 * 0.5) / 55)
    assert ensemble.weight("LSTM-v1") == 0.5  # only its prior
    first, last = sigs[0], sigs[-1]
    assert [c.weight for c in first.contributors] == pytest.approx([1 / 3] * 3)
    w = [c.weight for c in last.contributors]
    assert w[0] > w[2] > w[1] and sum(w) == pytest.approx(1.0)
    # early on the two wrong models outvote it; once their misses resolve, it leads
    follows = [s.direction == s.contributors[0].direction for s in sigs]
    assert not follows[0] and all(follows[-60:])


def test_scoring_uses_the_dead_band_and_the_first_bar_at_or_after_the_horizon():
    ensemble = coordinator(prior_weight=0)
    run([ensemble], [prediction(p, "HOLD", bar=0, price=1.0) for p in PRODUCERS])
    run([ensemble], [prediction(p, "BUY", bar=4, price=1.00002) for p in PRODUCERS])
    assert ensemble.hit_rates == {}  # 4 minutes: the 5m horizon has not passed
    run([ensemble], [prediction(p, "BUY", bar=7, price=1.00003) for p in PRODUCERS])  # a gap: 7 >= 5
    assert {m: (len(w), w.hits) for m, w in ensemble.hit_rates.items()} == {m: (1, 1) for m in MODELS.values()}
    # +0.3 bp is inside the 0.35 bp dead band: HOLD was right


def test_fallback_predictions_count_with_their_models_weight_but_are_not_scored_and_are_marked():
    ensemble = coordinator(prior_weight=1)
    for bar in range(12):  # xgboost right every time, its later fallbacks are never scored
        run([ensemble], [prediction("ml-xgboost", "BUY", bar=bar, price=1.0 + 0.001 * bar),
                         prediction("ml-lightgbm", "SELL", bar=bar, price=1.0 + 0.001 * bar),
                         prediction("ml-lstm", "HOLD", 0.0, bar=bar, price=1.0 + 0.001 * bar,
                                    fallback=True, model="TrendRule", accuracy=None)])
    assert ensemble.weight("XGBoost-v1") > ensemble.weight("LightGBM-v1")
    [signal] = run([ensemble], [
        prediction("ml-xgboost", "SELL", 0.7, bar=12, price=1.012, fallback=True),  # its last good answer
        prediction("ml-lightgbm", "SELL", 0.5, bar=12, price=1.012),
        prediction("ml-lstm", "BUY", 0.5, bar=12, price=1.012, fallback=True, model="TrendRule", accuracy=None),
    ])
    assert [(c.model, c.producer, c.fallback) for c in signal.contributors] == [
        ("XGBoost-v1", "ml-xgboost", True), ("LightGBM-v1", "ml-lightgbm", False), ("TrendRule", "ml-lstm", True)]
    weight = ensemble.weight("XGBoost-v1")  # as combined: bar 7 was resolved by bar 12's first prediction
    assert len(ensemble.hit_rates["XGBoost-v1"]) == 8
    total = weight + ensemble.weight("LightGBM-v1") + 1 / 3
    assert signal.contributors[0].weight == pytest.approx(weight / total)
    assert signal.contributors[2].weight == pytest.approx((1 / 3) / total)
    assert "TrendRule" not in ensemble.hit_rates
    run([ensemble], [prediction(p, bar=30, price=1.0) for p in PRODUCERS])
    assert len(ensemble.hit_rates["XGBoost-v1"]) == 12  # bars 0-11; bar 12 was a fallback: not scored


def test_a_tie_is_hold():
    ensemble = coordinator()
    [signal] = run([ensemble], [prediction("ml-xgboost", "BUY", 0.5), prediction("ml-lightgbm", "SELL", 0.5),
                                prediction("ml-lstm", "HOLD", 0.2)])
    assert signal.direction == "HOLD" and signal.confidence == pytest.approx(0.2 / 3)
    assert signal.target_price is None and signal.stop_loss is None


def test_predictions_of_unknown_services_are_ignored():
    ensemble = coordinator()
    p = prediction("ml-xgboost")
    other = msgspec.structs.replace(p, metadata=msgspec.structs.replace(p.metadata, producer="ml-other"))
    assert run([ensemble], [other]) == [] and ensemble.unexpected_predictions == 1
    assert ensemble.groups == {} and ensemble.hit_rates == {} and ensemble.model_of == {}


def replay_predictions() -> list[PredictionGenerated]:
    """Three models over 200 bars of two symbols, one model sometimes late or missing."""
    out = []
    for bar in range(200):
        for symbol, base in (("EURUSD", 1.38), ("NZDUSD", 0.86)):
            price = base * (1 + 0.0001 * ((bar * 7919) % 13 - 6))
            for i, producer in enumerate(PRODUCERS):
                if producer == "ml-lstm" and bar % 17 == 0:
                    continue  # missing: the deadline closes the group
                direction = ("BUY", "SELL", "HOLD")[(bar * (i + 3)) % 3]
                out.append(prediction(producer, direction, 0.4 + 0.1 * i, bar=bar, price=price, symbol=symbol,
                                      delay_ms=100 * i))
    return out


def test_a_replay_gives_the_same_signals_and_a_restore_mid_stream_the_same_as_uninterrupted():
    events = replay_predictions()
    first, second = run([coordinator()], events), run([coordinator()], events)
    assert first == second and len(signals(first)) == 400
    assert any(s.missing_models == ["ml-lstm"] for s in signals(first))
    split = len(events) // 2 + 1  # one prediction of a bar in: a group in flight
    before_part = coordinator()
    before = run([before_part], events[:split])
    state = before_part.snapshot()
    assert state["groups"] and state["hit_rates"] and state["awaiting"]
    stored = msgspec.msgpack.decode(msgspec.msgpack.encode(Checkpoint(positions=[], state=state)), type=Checkpoint)
    after_part = coordinator()
    after_part.restore(stored.state)
    assert before + run([after_part], events[split:]) == first
    assert after_part.snapshot() == _final_snapshot(events)


def _final_snapshot(events):
    ensemble = coordinator()
    run([ensemble], events)
    return ensemble.snapshot()


def test_memory_is_bounded():
    ensemble = coordinator(hit_window=10)
    for bar in range(300):
        run([ensemble], [prediction(p, bar=bar, price=1.0 + 0.0001 * (bar % 7)) for p in PRODUCERS[:2]])
    assert all(len(w) == 10 for w in ensemble.hit_rates.values())
    assert len(ensemble.groups) <= 1
    assert sum(len(q) for queues in ensemble.awaiting.values() for q in queues.values()) <= 2 * 6


def test_hit_window_keeps_a_running_count():
    window = HitWindow(3, [1, 0, 1])
    window.add(1)
    assert list(window.outcomes) == [0, 1, 1] and window.hits == 2 and len(window) == 3


def test_on_the_real_model_services_in_the_kernel(trained):
    from tradepipe.config import Settings
    from tradepipe.pipeline import model_services

    events = features_of(eurusd_ticks(8000))

    def kernel_run() -> list:
        outputs: list = []
        kernel = InProcessPipeline(model_services(Settings(), trained.registry), on_event=outputs.append)
        kernel.feed_all(events)
        return [without_timing(e) for e in outputs]

    outputs = kernel_run()
    assert kernel_run() == outputs  # deterministic over a replay, ids included
    preds = [e for e in outputs if type(e) is PredictionGenerated]
    sigs = signals(outputs)
    assert len(preds) == 3 * len(sigs) > 200
    by_correlation = {}
    for p in preds:
        by_correlation.setdefault(p.correlation_id, []).append(p)
    for s in sigs:
        group = by_correlation[s.correlation_id]
        assert [c.model.split(" ")[0] for c in s.contributors] == [p.model.name for p in group]
        assert s.causation_id == group[-1].event_id and s.missing_models == []
        assert s.bar_time == group[0].bar_time and s.price == group[0].price
