"""Audit trail (R7.3, R3.6): every order event recorded with the tick, bar, features,
predictions, signal and verdict behind it, exits with the tick that triggered them."""

from __future__ import annotations

import dataclasses
import io
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from tradepipe.config import Settings
from tradepipe.events.types import (
    OHLC, BarClosed, Contribution, FeaturesCalculated, MarketDataReceived, ModelInfo, OrderExecuted, OrderPlaced,
    PositionClosed, Prediction, PredictionGenerated, RuleVerdict, SagaCompleted, SignalValidated, TickData,
    TradingSignalGenerated,
)
from tradepipe.pipeline import feature_services, model_services
from tradepipe.read.audit_log import AuditLog, render_explanation
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context
from tradepipe.services.audit_trail import AuditTrail, CausalCache
from tradepipe.services.data_bridge import DataBridge

from .conftest import eurusd_ticks

T0 = datetime(2014, 5, 6, 10, 0, tzinfo=timezone.utc)
GROUPS = ("feature-engineering", "technical-analysis", "market-microstructure")
MODELS = {"ml-xgboost": ("XGBoost-v1", "BUY", 0.7, 0.5), "ml-lightgbm": ("LightGBM-v1", "BUY", 0.6, 0.3),
          "ml-lstm": ("LSTM-v1", "SELL", 0.55, 0.2)}  # producer -> model, direction, confidence, weight
RULES = [RuleVerdict(rule="confidence-floor", passed=True, detail="0.62 >= 0.55"),
         RuleVerdict(rule="spread-ceiling", passed=True, detail="spread 0.9 pips <= 3")]


def emit(producer: str, parent, cls, index: bytes = b"", **fields):
    """``cls`` as ``producer`` emits it while handling ``parent`` (None: a root keyed ``index``)."""
    ctx = Context(producer)
    ctx.begin(parent, key=index if parent is None else parent.event_id.bytes + index)
    return ctx.emit(cls, **fields)


def tick(i: int, bid: float) -> MarketDataReceived:
    at = T0 + timedelta(seconds=i)
    return emit("data-bridge", None, MarketDataReceived, f"EURUSD|{i}".encode(), symbol="EURUSD", source="test",
                data=TickData(bid=bid, ask=bid + 0.0001, timestamp=at), timestamp=at)


def bar(parent, timeframe: str) -> BarClosed:
    ohlc = OHLC(open=1.38, high=1.3805, low=1.3795, close=1.3802)
    return emit("bar-builder", parent, BarClosed, timeframe.encode(), timeframe=timeframe, bar_time=T0, bid=ohlc,
                ask=ohlc, mid=ohlc, tick_count=42, spread_mean=0.00009, spread_max=0.00012)


def features(parent, group: str, timeframe: str) -> FeaturesCalculated:
    return emit(group, parent, FeaturesCalculated, timeframe.encode(), timeframe=timeframe, bar_time=T0, group=group,
                features={f"{group[:4]}_a": 1.5, f"{group[:4]}_b": None})


def decision_path(root: MarketDataReceived) -> dict:
    """A 1m decision path on ``root`` as the services emit it, with a 5m bar and its features
    alongside (same correlation, another timeframe: not part of the 1m order's chain)."""
    bars = {tf: bar(root, tf) for tf in ("1m", "5m")}
    feats = {tf: [features(bars[tf], g, tf) for g in GROUPS] for tf in ("1m", "5m")}
    predictions = [
        emit(producer, feats["1m"][-1], PredictionGenerated, timeframe="1m", bar_time=T0, price=1.3802,
             prediction=Prediction(direction=d, confidence=c, time_horizon="5m"), model=ModelInfo(name=m))
        for producer, (m, d, c, _) in MODELS.items()]
    signal = emit("ensemble-coordinator", predictions[-1], TradingSignalGenerated, direction="BUY", confidence=0.62,
                  timeframe="1m", bar_time=T0, price=1.3802, target_price=1.3812, stop_loss=1.3797,
                  contributors=[Contribution(model=m, direction=d, confidence=c, weight=w, producer=producer)
                                for producer, (m, d, c, w) in MODELS.items()])
    verdict = emit("pattern-validator", signal, SignalValidated, signal_id=signal.event_id, direction="BUY",
                   confidence=0.62, verdicts=RULES, timeframe="1m", bar_time=T0, price=1.3802)
    return {"bars": bars, "features": feats, "predictions": predictions, "signal": signal, "verdict": verdict}


def trade(verdict: SignalValidated, exit_tick: MarketDataReceived) -> dict:
    """Order A on ``verdict``, its fill and saga; a stop-loss order B on ``exit_tick`` closing it."""
    placed = emit("trading-engine", verdict, OrderPlaced, order_id="A", side="BUY", volume=10_000.0, price=1.3803,
                  stop_loss=1.3797, take_profit=1.3812, position_id="A")
    filled = emit("trading-engine", placed, OrderExecuted, order_id="A", side="BUY", volume=10_000.0, price=1.38034,
                  commission=0.65, slippage=0.00004, position_id="A")
    saga = emit("saga", filled, SagaCompleted, outcome="COMPLETED", steps=["validate", "place", "fill"], order_id="A")
    close = emit("trading-engine", exit_tick, OrderPlaced, order_id="B", side="SELL", volume=10_000.0,
                 position_id="A", reason="stop-loss", correlation_id=verdict.correlation_id)
    close_fill = emit("trading-engine", close, OrderExecuted, order_id="B", side="SELL", volume=10_000.0,
                      price=1.37965, position_id="A")
    closed = emit("trading-engine", close_fill, PositionClosed, position_id="A", order_id="B", side="BUY",
                  volume=10_000.0, entry_price=1.38034, exit_price=1.37965, pnl=-8.2, reason="stop-loss")
    return {"placed": placed, "filled": filled, "saga": saga, "close": close, "close_fill": close_fill,
            "closed": closed}


@pytest.fixture
def story(tmp_path):
    """The whole story fed through the kernel, with unrelated ticks around it."""
    root, exit_tick = tick(60, 1.3802), tick(95, 1.3796)
    path = decision_path(root)
    orders = trade(path["verdict"], exit_tick)
    events = [tick(59, 1.3801), root, *path["bars"].values(), *path["features"]["1m"], *path["features"]["5m"],
              *path["predictions"], path["signal"], path["verdict"], orders["placed"], orders["filled"],
              orders["saga"], tick(80, 1.3799), exit_tick, orders["close"], orders["close_fill"], orders["closed"]]
    log = AuditLog(tmp_path / "audit.db")
    trail = AuditTrail(log, cache_events=1000)
    InProcessPipeline([trail]).feed_all(events)
    yield log, trail, root, exit_tick, path, orders, events
    log.close()


def test_explain_returns_every_piece_of_the_chain_with_the_right_ids(story):
    log, trail, root, exit_tick, path, orders, _ = story
    assert (trail.appended, trail.duplicates, trail.skipped) == (6, 0, 0)
    x = log.explain("A")
    assert x.tick == root and x.bar == path["bars"]["1m"]
    assert x.features == path["features"]["1m"] and x.predictions == path["predictions"]
    assert x.signal == path["signal"] and x.verdict == path["verdict"] and x.exit_ticks == [exit_tick]
    assert x.events == [orders[k] for k in ("placed", "filled", "saga", "close", "close_fill", "closed")]
    assert x.missing == []
    assert log.explain("B") == dataclasses.replace(x, order_id="B")  # the closing order: the same trade
    assert log.verify().ok and log.verify().records == 6


def test_each_record_holds_its_own_chain_in_causal_order(story):
    log, _, root, exit_tick, path, orders, _ = story
    upstream = [root, path["bars"]["1m"], *path["features"]["1m"], *path["predictions"], path["signal"],
                path["verdict"]]
    chains = {r.event_type + r.order_id: log.chain(r) for r in log.records("A")}
    assert chains["OrderPlacedA"] == upstream
    assert chains["OrderExecutedA"] == [*upstream, orders["placed"]]
    assert chains["SagaCompletedA"] == [*upstream, orders["placed"], orders["filled"]]
    opening = [orders["placed"], orders["filled"], orders["saga"]]
    assert chains["OrderPlacedB"] == [exit_tick, *opening]
    assert chains["OrderExecutedB"] == [exit_tick, *opening, orders["close"]]
    assert chains["PositionClosedB"] == [exit_tick, *opening, orders["close"], orders["close_fill"]]


def test_render_tells_the_story_in_causal_order(story):
    log = story[0]
    console = Console(width=400, file=io.StringIO())
    console.print(render_explanation(log.explain("A")))
    text = console.file.getvalue()
    expected = ["1.38020", "1.38030",  # tick bid, ask
                "1m", "1.38000", "1.38050", "0.000090",  # bar: mid open, high, spread
                "feat_a=1.5", "tech_b=-", "mark_a=1.5",  # features
                "XGBoost-v1", "LightGBM-v1", "LSTM-v1", "0.500", "0.300", "0.200",  # models, weights
                "confidence-floor", "0.62 >= 0.55", "spread-ceiling",  # rules
                "filled BUY 10000 at 1.38034, commission 0.65, slippage 4e-05",  # the fill
                "1.37960",  # the exit tick
                "PnL -8.20 (stop-loss)"]
    positions = [text.find(piece) for piece in expected]
    assert -1 not in positions, [p for p, at in zip(expected, positions) if at < 0]
    assert positions == sorted(positions)
    assert "missing" not in text


def test_re_delivered_events_are_no_ops_and_snapshot_commits(story, tmp_path):
    log, trail, *_, events = story
    trail.snapshot()
    with sqlite3.connect(log.path) as reader:
        assert reader.execute("SELECT count(*) FROM records").fetchone()[0] == 6
    restarted = AuditTrail(AuditLog(log.path), cache_events=1000)
    InProcessPipeline([restarted]).feed_all(events)
    assert (restarted.appended, restarted.duplicates) == (0, 6) and restarted.snapshot() is None
    assert len(log) == 6 and log.verify().ok
    restarted.log.close()


def test_a_chain_with_gaps_is_recorded_as_found(tmp_path):
    root = tick(60, 1.3802)
    path = decision_path(root)
    orders = trade(path["verdict"], tick(95, 1.3796))
    log = AuditLog(tmp_path / "audit.db")
    trail = AuditTrail(log, cache_events=1000)
    # the trail started after the tick and the bar: they were never seen; the exit tick neither
    kernel = InProcessPipeline([trail])
    kernel.feed_all([*path["features"]["1m"][:2], *path["predictions"][1:], path["signal"], path["verdict"],
                     orders["placed"], orders["close"], saga_without_order(path["verdict"])])
    assert (trail.appended, trail.skipped) == (2, 1)
    x = log.explain("A")
    assert x.tick is None and x.bar is None and x.exit_ticks == []
    assert x.missing == ["the tick", "the bar", "features: market-microstructure", "the prediction of ml-xgboost",
                         "the tick that triggered the exit"]
    log.close()


def saga_without_order(verdict) -> SagaCompleted:
    return emit("saga", verdict, SagaCompleted, b"rejected", outcome="REJECTED", reason="HOLD")


def test_the_cache_evicts_whole_correlations_oldest_first():
    cache = CausalCache(capacity=5)
    roots = [tick(i, 1.38) for i in range(3)]
    bars = [bar(r, "1m") for r in roots]
    for event in (roots[0], bars[0], roots[1], bars[1], roots[2]):
        cache.add(event)
    assert len(cache) == 5 and cache.tick(roots[0].event_id) == roots[0]
    cache.add(bars[2])  # 6 events: the oldest correlation (2 events) goes
    assert len(cache) == 4 and cache.tick(roots[0].event_id) is None and cache.correlation(roots[0].event_id) == []
    assert cache.correlation(roots[2].event_id) == [roots[2], bars[2]]
    assert cache.tick(bars[1].event_id) is None  # only ticks are ticks


def test_the_cache_counts_a_lone_event_as_one_and_a_second_one_joins_it():
    cache = CausalCache(capacity=3)
    roots = [tick(i, 1.38) for i in range(5)]
    for root in roots[:3]:
        cache.add(root)
    assert len(cache) == 3 and cache.correlation(roots[0].event_id) == [roots[0]]
    joined = bar(roots[2], "1m")
    cache.add(joined)  # 4 events: the oldest lone tick goes
    assert len(cache) == 3 and cache.tick(roots[0].event_id) is None
    assert cache.correlation(roots[2].event_id) == [roots[2], joined] and cache.tick(roots[2].event_id) == roots[2]
    cache.add(roots[3])
    assert len(cache) == 3 and cache.tick(roots[1].event_id) is None and cache.tick(roots[3].event_id) == roots[3]
    cache.add(roots[4])  # the oldest correlation now holds 2 events: both go
    assert len(cache) == 2 and cache.correlation(roots[2].event_id) == []


@pytest.fixture(scope="module")
def real_run(trained, tmp_path_factory):
    """The first 12,000 sample ticks through the feature services, the three tiny real models,
    the ensemble and the audit trail; returns the trail, the kernel and the signals."""
    signals: list[TradingSignalGenerated] = []
    log = AuditLog(tmp_path_factory.mktemp("audit") / "audit.db")
    trail = AuditTrail(log)
    models = model_services(Settings(), trained.registry)
    kernel = InProcessPipeline(
        [*feature_services(("1m",)), *models, trail],
        on_event=lambda e: signals.append(e) if type(e) is TradingSignalGenerated else None,
    )
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    for raw in eurusd_ticks(12_000):
        kernel.feed_all(bridge.handle_tick(raw, ctx))
    for service in models:
        if hasattr(service, "close"):
            service.close()
    yield trail, kernel, signals
    log.close()


def test_explain_shows_the_real_tick_bar_features_and_predictions_behind_an_order(real_run):
    trail, kernel, signals = real_run
    assert len(signals) > 100 and trail.appended == 0
    signal = next(s for s in reversed(signals) if not any(c.fallback for c in s.contributors))
    verdict = emit("pattern-validator", signal, SignalValidated, signal_id=signal.event_id,
                   direction=signal.direction, confidence=signal.confidence, verdicts=RULES, timeframe="1m",
                   bar_time=signal.bar_time, price=signal.price)
    placed = emit("trading-engine", verdict, OrderPlaced, order_id="REAL-1", side="BUY", volume=1000.0,
                  price=signal.price, position_id="REAL-1")
    filled = emit("trading-engine", placed, OrderExecuted, order_id="REAL-1", side="BUY", volume=1000.0,
                  price=signal.price, commission=0.07, position_id="REAL-1")
    kernel.feed_all([verdict, placed, filled])
    trail.flush()
    x = trail.log.explain("REAL-1")
    assert x.missing == [] and x.events == [placed, filled]
    assert x.signal == signal and x.verdict == verdict
    assert x.tick.event_id == signal.correlation_id and type(x.tick) is MarketDataReceived
    assert x.bar.timeframe == "1m" and x.bar.bar_time == signal.bar_time and x.bar.correlation_id == x.tick.event_id
    assert x.bar.mid.close == pytest.approx(signal.price)
    assert sorted(f.group for f in x.features) == sorted(GROUPS)
    assert all(f.bar_time == signal.bar_time and f.correlation_id == signal.correlation_id for f in x.features)
    assert [p.event_id for p in x.predictions] == [p.event_id for p in x.predictions if p.bar_time == signal.bar_time]
    assert {p.metadata.producer for p in x.predictions} == {c.producer for c in signal.contributors}
    assert {p.model.name for p in x.predictions} == {c.model for c in signal.contributors}
    assert trail.log.verify().ok
