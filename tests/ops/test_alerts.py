"""The alert rules service (R8.4): each of the seed's eight rules raises once when its figure
crosses the threshold and resolves when it clears, with the figures as values; thresholds
come from the configuration; the output is deterministic, in the kernel as on a bus."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from infra import free_port

from tradepipe.bus import open_bus
from tradepipe.bus.base import TopicPartition
from tradepipe.config import AlertSettings, Settings, load_settings
from tradepipe.distributed import default_port
from tradepipe.events.types import (
    DEAD_LETTER, MARKET_DATA, SYSTEM, AlertRaised, AlertResolved, CircuitBreakerStateChanged, DeadLetter, FeaturesCalculated,
    FeaturesMetadata, ModelInfo, OrderExecuted, OrderPlaced, OrderRejected, PerformanceCalculated, PositionClosed,
    Prediction, PredictionGenerated, TradingStateChanged,
)
from tradepipe.ops.alerts import RULES, AlertRules
from tradepipe.ops.metrics import ConsumerLag
from tradepipe.pipeline import service_factories
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.service import Context
from tradepipe.runtime.store import EventStore
from tradepipe.services.notifier import Notifier
from tradepipe.services.trading_engine import TradingEngine

SMALL = AlertSettings(min_samples=4)


def judge(rules: AlertRules, events) -> list:
    """Hand ``events`` to ``rules`` as a runner would; its outputs, in order."""
    ctx = Context(rules.name)
    out = []
    for event in events:
        ctx.begin(event)
        out.extend(rules.handle(event, ctx))
    return out


def alerts(out) -> list[tuple[str, str, str, float | None]]:
    """(kind, rule, subject, value rounded) of each alert event."""
    return [("raised" if type(e) is AlertRaised else "resolved", e.rule, e.subject, round(e.value, 6))
            for e in out]


def test_validation_failure_rate(events):
    rules = AlertRules(SMALL)
    ticks = [events.tick() for _ in range(18)]
    dead = [events.emit(DeadLetter, "data-bridge", reason="crossed quote", error_type="crossed") for _ in range(2)]
    raised = judge(rules, ticks + dead)  # 1 of 19 = 5.26 % > 5 %, then 2 of 20: once
    assert alerts(raised) == [("raised", "validation_failure_rate", "", round(1 / 19, 6))]
    alert = raised[0]
    assert (alert.severity, alert.threshold, alert.symbol) == ("warning", 0.05, None)
    assert alert.causation_id == dead[0].event_id
    assert alert.message == "validation failure rate is 5.26%, above 5.00%"
    # 5 % is not above the threshold, nor clear of it by the band (4.5 %): still firing, no repeat
    assert judge(rules, [events.tick() for _ in range(20)]) == []  # 2 of 40
    resolved = judge(rules, [events.tick() for _ in range(5)])  # 2 of 45 = 4.44 %
    assert alerts(resolved) == [("resolved", "validation_failure_rate", "", round(2 / 45, 6))]
    assert resolved[0].message == "validation failure rate is back to 4.44%"


def test_a_rate_is_not_judged_below_min_samples(events):
    rules = AlertRules(AlertSettings(min_samples=20))
    dead = [events.emit(DeadLetter, "data-bridge", reason="bad row") for _ in range(5)]
    assert judge(rules, dead) == []  # 100 % of 5 inputs: too few to judge
    assert alerts(judge(rules, [events.tick() for _ in range(15)])) == [
        ("raised", "validation_failure_rate", "", 0.25)]


def predictions(events, model: str, directions: str, *, start_price: float = 1.1, step: float = 0.001):
    """One prediction of ``model`` per minute bar, prices rising by ``step`` each bar, the
    direction per bar from ``directions`` ("B"/"S"), horizon one bar."""
    out = []
    for i, d in enumerate(directions):
        out.append(events.emit(
            PredictionGenerated, model.lower(), timeframe="1m", bar_time=events.next_bar(),
            price=start_price + i * step, model=ModelInfo(name=model, accuracy=0.55),
            prediction=Prediction(direction="BUY" if d == "B" else "SELL", confidence=0.6, time_horizon="1m")))
    return out


def test_model_accuracy_per_model(events):
    rules = AlertRules(SMALL)
    # rising prices: BUY hits, SELL misses. Resolved one bar later.
    raised = judge(rules, predictions(events, "XGBoost-v1", "BSBSS"))  # resolved: B S B S -> 50 %
    assert alerts(raised) == [("raised", "model_accuracy", "XGBoost-v1", 0.5)]
    assert raised[0].message == "model accuracy of XGBoost-v1 is 50.00%, below 60.00%"
    # the last SELL misses too (2 of 5), then hits: 3/6, 4/7, 5/8 (62.5 %: above 60 % but inside
    # the band, still firing), 6/9 = 66.7 % >= 66 %: resolved, once
    out = judge(rules, predictions(events, "XGBoost-v1", "BBBBBBBBB", start_price=1.2))
    assert alerts(out) == [("resolved", "model_accuracy", "XGBoost-v1", round(6 / 9, 6))]


def test_signal_accuracy(events):
    rules = AlertRules(SMALL)

    def closed(pnl: float):
        return events.emit(PositionClosed, "trading-engine", position_id="p", side="BUY", volume=1000.0,
                           entry_price=1.1, exit_price=1.1, pnl=pnl)

    raised = judge(rules, [closed(5.0), closed(-3.0), closed(4.0), closed(-1.0)])  # 50 % < 70 %
    assert alerts(raised) == [("raised", "signal_accuracy", "", 0.5)]
    assert judge(rules, [closed(1.0)] * 2) == []  # 4 of 6: 66.7 %, still firing
    resolved = judge(rules, [closed(1.0)] * 3)  # 5/7, 6/8, 7/9 = 77.8 % >= 77 %
    assert alerts(resolved) == [("resolved", "signal_accuracy", "", round(7 / 9, 6))]


def test_drawdown_from_performance_and_the_engine(events):
    rules = AlertRules(SMALL)

    def performance(equity: float):
        return events.emit(PerformanceCalculated, "performance-analytics", equity=equity, realized_pnl=0.0,
                           unrealized_pnl=0.0, symbol=None)

    raised = judge(rules, [performance(100_000.0), performance(102_000.0), performance(99_000.0)])
    assert alerts(raised) == [("raised", "drawdown", "", round(1 - 99_000 / 102_000, 6))]
    assert (raised[0].severity, raised[0].threshold) == ("critical", 0.02)
    assert judge(rules, [events.emit(TradingStateChanged, "trading-engine", state="ACTIVE", drawdown=0.025)]) == []
    resolved = judge(rules, [events.emit(TradingStateChanged, "trading-engine", state="ACTIVE", drawdown=0.01)])
    assert alerts(resolved) == [("resolved", "drawdown", "", 0.01)]


def test_execution_failure_rate_counts_only_placed_orders(events):
    rules = AlertRules(SMALL)
    out = []
    for i in range(4):
        placed = events.emit(OrderPlaced, "trading-engine", order_id=f"o-{i}", side="BUY", volume=1000.0)
        outcome = (events.emit(OrderRejected, "trading-engine", order_id=f"o-{i}", reason="broker: no money")
                   if i == 3 else
                   events.emit(OrderExecuted, "trading-engine", order_id=f"o-{i}", side="BUY", volume=1000.0, price=1.1))
        out += judge(rules, [placed, outcome])
    # a risk refusal was never placed: not an execution failure
    out += judge(rules, [events.emit(OrderRejected, "trading-engine", order_id="o-risk", reason="risk: exposure")])
    assert alerts(out) == [("raised", "execution_failure_rate", "", 0.25)]
    assert out[0].severity == "critical"
    fills = []
    for i in range(4, 120):
        placed = events.emit(OrderPlaced, "trading-engine", order_id=f"o-{i}", side="SELL", volume=1000.0)
        fills += [placed, events.emit(OrderExecuted, "trading-engine", order_id=f"o-{i}", side="SELL", volume=1000.0,
                                      price=1.1)]
    resolved = judge(rules, fills)
    # the refusal leaves the 100-order window: 0 % <= 0.9 %
    assert alerts(resolved) == [("resolved", "execution_failure_rate", "", 0.0)]


def test_circuit_breaker_open_until_closed(events):
    rules = AlertRules(SMALL)

    def moved(from_state: str, to_state: str):
        return events.emit(CircuitBreakerStateChanged, "ml-lstm", breaker="ml-lstm/LSTM-v1", from_state=from_state,
                           to_state=to_state, failures=5, reason="timeouts")

    raised = judge(rules, [moved("CLOSED", "OPEN")])
    assert alerts(raised) == [("raised", "circuit_breaker_open", "ml-lstm/LSTM-v1", 2.0)]
    assert raised[0].message == "circuit breaker ml-lstm/LSTM-v1 opened"
    assert judge(rules, [moved("OPEN", "HALF_OPEN"), moved("HALF_OPEN", "OPEN")]) == []  # still open: no repeat
    resolved = judge(rules, [moved("OPEN", "HALF_OPEN"), moved("HALF_OPEN", "CLOSED")])
    assert alerts(resolved) == [("resolved", "circuit_breaker_open", "ml-lstm/LSTM-v1", 0.0)]


def test_processing_time_from_the_reported_compute_times(events):
    rules = AlertRules(SMALL)

    def features(took: str):
        return events.emit(FeaturesCalculated, "technical-analysis", timeframe="1m", features={"rsi": 50.0},
                           metadata=FeaturesMetadata(producer="technical-analysis", calculation_time=took))

    raised = judge(rules, [features("150000.0us"), features("120ms"), features("0.2s"), features("90.5us")])
    # p95 of 4 (nearest rank: the largest) = 200 ms
    assert alerts(raised) == [("raised", "processing_time", "technical-analysis", 200.0)]
    assert raised[0].message == "processing time p95 of technical-analysis is 200.0 ms, above 100.0 ms"
    # the three slow samples stay in the window; the p95 (nearest rank) is the 4th largest once
    # there are 60 samples: the 90.5 us one
    resolved = judge(rules, [features("80us") for _ in range(100)])
    assert alerts(resolved) == [("resolved", "processing_time", "technical-analysis", 0.0905)]


def test_consumer_lag_from_the_bus(events, tmp_path):
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    ensure_topics(bus, partitions=1)
    EventStore(bus).append([events.tick() for _ in range(1500)])
    consumer = bus.consumer("bar-builder", [MARKET_DATA])
    consumer.commit({TopicPartition(MARKET_DATA, 0): 0})  # running, and all behind
    lag = ConsumerLag(bus, {"bar-builder": (MARKET_DATA,), "auditor": (DEAD_LETTER,)})
    rules = AlertRules(SMALL, lag=lag, lag_every_s=0.0)
    raised = judge(rules, [events.tick()])
    assert alerts(raised) == [("raised", "consumer_lag", f"bar-builder:{MARKET_DATA}[0]", 1500.0)]
    assert raised[0].message == f"consumer lag of bar-builder:{MARKET_DATA}[0] is 1,500 records, above 1,000 records"
    consumer.commit({TopicPartition(MARKET_DATA, 0): 1200})
    resolved = judge(rules, [events.tick()])
    assert alerts(resolved) == [("resolved", "consumer_lag", f"bar-builder:{MARKET_DATA}[0]", 300.0)]
    # on the runner's idle timer too
    EventStore(bus).append([events.tick() for _ in range(900)])
    ctx = Context(rules.name)
    ctx.begin(None, key=b"timer")
    assert alerts(rules.on_timer(ctx)) == [("raised", "consumer_lag", f"bar-builder:{MARKET_DATA}[0]", 1200.0)]
    consumer.close()
    bus.close()


def test_thresholds_come_from_the_configuration(events, tmp_path, monkeypatch):
    config = tmp_path / "tradepipe.toml"
    config.write_text("[alerts]\ndrawdown = 0.05\nmin_samples = 4\n")
    monkeypatch.setenv("TRADEPIPE_ALERTS__SIGNAL_ACCURACY", "0.4")
    settings = load_settings(config)
    rules = AlertRules.from_settings(settings)
    assert rules.thresholds == {"processing_time": 100.0, "consumer_lag": 1000.0, "circuit_breaker_open": 0.5,
                                "validation_failure_rate": 0.05, "model_accuracy": 0.6, "signal_accuracy": 0.4,
                                "drawdown": 0.05, "execution_failure_rate": 0.01}

    def performance(equity: float):
        return events.emit(PerformanceCalculated, "performance-analytics", equity=equity, realized_pnl=0.0,
                           unrealized_pnl=0.0)

    def closed(pnl: float):
        return events.emit(PositionClosed, "trading-engine", position_id="p", side="BUY", volume=1.0,
                           entry_price=1.0, exit_price=1.0, pnl=pnl)

    # a 3 % drawdown and 50 % winners alert with the defaults, not with these thresholds
    quiet = [performance(100_000.0), performance(97_000.0)] + [closed(p) for p in (1.0, -1.0, 1.0, -1.0)]
    assert judge(rules, quiet) == []
    assert alerts(judge(rules, [performance(94_000.0)])) == [("raised", "drawdown", "", 0.06)]
    assert alerts(judge(AlertRules(SMALL), quiet)) == [("raised", "drawdown", "", 0.03),
                                                       ("raised", "signal_accuracy", "", 0.5)]


def test_bad_thresholds_are_refused_naming_the_field(tmp_path):
    config = tmp_path / "tradepipe.toml"
    config.write_text("[alerts]\nmodel_accuracy = 1.5\n")
    with pytest.raises(Exception, match="alerts.model_accuracy"):
        load_settings(config)


def test_every_seed_rule_is_there():
    assert sorted(RULES) == sorted([
        "processing_time", "consumer_lag", "circuit_breaker_open", "validation_failure_rate", "model_accuracy",
        "signal_accuracy", "drawdown", "execution_failure_rate"])


def mixed_sequence(events) -> list:
    """Events that raise and resolve several rules."""
    seq = [events.tick() for _ in range(6)]
    seq += [events.emit(DeadLetter, "data-bridge", reason="bad row") for _ in range(2)]
    seq += predictions(events, "LightGBM-v1", "SSSSSBBBBBBBBBBBB")
    seq += [events.emit(CircuitBreakerStateChanged, "ml-xgboost", breaker="ml-xgboost/XGBoost-v1", from_state=a,
                        to_state=b) for a, b in (("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED"))]
    seq += [events.tick() for _ in range(40)]
    return seq


def test_output_is_deterministic_and_survives_a_restart(events):
    seq = mixed_sequence(events)
    first = judge(AlertRules(SMALL), seq)
    assert len(first) >= 6 and first == judge(AlertRules(SMALL), seq)  # same ids, same everything
    # stopped half-way and restored from its snapshot: the same alerts
    half = len(seq) // 2
    before = AlertRules(SMALL)
    out = judge(before, seq[:half])
    after = AlertRules(SMALL)
    after.restore(before.snapshot())
    assert out + judge(after, seq[half:]) == first


def test_in_the_kernel_the_notifier_tells_the_alerts(events, caplog):
    seq = mixed_sequence(events)
    seen = []
    kernel = InProcessPipeline([AlertRules(SMALL), Notifier()], on_event=seen.append)
    with caplog.at_level("INFO", logger="tradepipe.notifier"):
        kernel.feed_all(seq)
    # the kernel runs the same handler with the same context: the same alert events
    assert [e for e in seen if type(e) in (AlertRaised, AlertResolved)] == judge(AlertRules(SMALL), seq)
    assert kernel.counts["AlertRaised"] == kernel.counts["AlertResolved"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert "Alert circuit_breaker_open: circuit breaker ml-xgboost/XGBoost-v1 opened (value 2)" in messages
    assert ("Resolved circuit_breaker_open (ml-xgboost/XGBoost-v1): circuit breaker ml-xgboost/XGBoost-v1 closed"
            in messages)


def test_the_alerts_service_of_a_deployment_watches_every_group():
    settings = Settings()
    factories = service_factories(settings, strategy="ema-cross")
    assert default_port("alerts") == 8021
    rules = factories["alerts"]()
    assert rules.lag.groups["trading-engine"] == TradingEngine.inputs
    assert set(rules.lag.groups) == set(factories)  # every service but the bridge consumes


@pytest.mark.slow
def test_tradepipe_service_alerts_as_a_process(events, tmp_path):
    """`tradepipe service alerts` on a SQLite bus: an open breaker and a group 1,500 records
    behind raise their alerts on the bus; /metrics counts what it handled; SIGTERM stops it."""
    url = f"sqlite:///{tmp_path / 'bus.db'}"
    bus = open_bus(url)
    ensure_topics(bus, partitions=1)
    store = EventStore(bus)
    store.append([events.emit(CircuitBreakerStateChanged, "ml-lstm", breaker="ml-lstm/LSTM-v1", from_state="CLOSED",
                              to_state="OPEN", failures=5)] + [events.tick() for _ in range(1500)])
    with bus.consumer("bar-builder", [MARKET_DATA]) as consumer:  # a bar builder that started, then stalled
        consumer.commit({TopicPartition(MARKET_DATA, 0): 0})
    port = free_port()
    with open(tmp_path / "alerts.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "tradepipe", "service", "alerts", "--bus", url,
                                    "--strategy", "ema-cross", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        raised: dict = {}
        lagging = ("consumer_lag", f"bar-builder:{MARKET_DATA}[0]")
        while not {("circuit_breaker_open", "ml-lstm/LSTM-v1"), lagging} <= set(raised):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "alerts.log").read_text()
            time.sleep(0.2)
            raised = {(e.rule, e.subject): e for e in (s.event for s in store.replay(SYSTEM)) if type(e) is AlertRaised}
        # the groups that never committed are not running: only the bar builder lags
        lags = {subject: e.value for (rule, subject), e in raised.items() if rule == "consumer_lag"}
        assert lags == {f"bar-builder:{MARKET_DATA}[0]": 1500.0}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        assert f'tradepipe_events_processed_total{{service="alerts",topic="{MARKET_DATA}"}} 1500.0' in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        bus.close()
