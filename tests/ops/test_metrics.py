"""Metrics (R8.3): a service's /metrics after a known run on a SQLite bus (scraped over HTTP),
and the pipeline metrics a watcher derives from a known sequence of events."""

from __future__ import annotations

import signal
import time
import urllib.request
from datetime import timedelta

import pytest
from infra import wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tradepipe.bus import open_bus
from tradepipe.bus.base import Record, TopicPartition
from tradepipe.config import AlertSettings
from tradepipe.events.codec import JsonCodec
from tradepipe.events.types import (
    MARKET_DATA, SYSTEM, AlertRaised, AlertResolved, CircuitBreakerStateChanged, ConfigurationUpdated, DeadLetter,
    ModelInfo, OrderExecuted, OrderPlaced, OrderRejected, PerformanceCalculated, PositionClosed, Prediction,
    PredictionGenerated, SignalRejected, SignalValidated,
)
from tradepipe.ops.metrics import ConsumerLag, EventMetrics, duration_ms
from tradepipe.runtime.breaker import CircuitBreaker
from tradepipe.runtime.host import ServiceHost
from tradepipe.runtime.runner import ServiceRunner, ensure_topics
from tradepipe.runtime.service import Service
from tradepipe.runtime.store import PRODUCED_AT_HEADER, EventStore, event_headers
from tradepipe.runtime.tail import BusTail

CODEC = JsonCodec()


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def registry_text(*collectors) -> str:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode()


class Recorder(Service):
    """Takes ticks and system events; holds a breaker that is open."""

    name = "recorder"
    inputs = (MARKET_DATA, SYSTEM)

    def __init__(self, now) -> None:
        self.upstream = CircuitBreaker("recorder/upstream", threshold=1)
        self.upstream.failure(now, "upstream down")

    def handle(self, event, ctx):
        return ()


def test_service_metrics_scraped_from_the_host(events, tmp_path):
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    ensure_topics(bus, partitions=2)
    store = EventStore(bus)
    store.append([events.tick() for _ in range(5)]
                 + [events.emit(ConfigurationUpdated, "operator", changes={"x": i}) for i in range(3)])
    runner = ServiceRunner(Recorder(events.at), bus)
    host = ServiceHost(runner, service="recorder", instance="recorder-0", group="recorder", port=0)
    pages = []

    def scrape_when_idle() -> bool:
        # everything was polled; 7 more ticks arrive before the next poll: a lag of 7
        store.append([events.tick() for _ in range(7)])
        with urllib.request.urlopen(f"http://127.0.0.1:{host.port}/metrics", timeout=10) as response:
            pages.append(response.read().decode())
        return True

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        host.run(until=scrape_when_idle)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    metrics = scraped(pages[0])
    service = (("service", "recorder"),)
    assert metrics[("tradepipe_events_processed_total", service + (("topic", MARKET_DATA),))] == 5
    assert metrics[("tradepipe_events_processed_total", service + (("topic", SYSTEM),))] == 3
    assert metrics[("tradepipe_event_processing_seconds_count", service)] == 8
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in metrics.items()
                     if name == "tradepipe_event_processing_seconds_bucket")
    assert buckets[-1] == (float("inf"), 8) and [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert 0 < metrics[("tradepipe_event_processing_seconds_sum", service)] < 8
    lag = {(dict(labels)["topic"], dict(labels)["partition"]): value for (name, labels), value in metrics.items()
           if name == "tradepipe_consumer_lag"}
    tick_partition = str(next(p for p, end in bus.end_offsets(MARKET_DATA).items() if end))
    assert lag == {(MARKET_DATA, tick_partition): 7, (MARKET_DATA, str(1 - int(tick_partition))): 0,
                   (SYSTEM, "0"): 0, (SYSTEM, "1"): 0}
    assert metrics[("tradepipe_circuit_breaker_state", (("breaker", "bus:recorder"),) + service)] == 0
    assert metrics[("tradepipe_circuit_breaker_state", (("breaker", "recorder/upstream"),) + service)] == 2
    # the runner's own counters are still there
    assert metrics[("tradepipe_handled_total", (("instance", "recorder-0"),) + service)] == 8
    bus.close()


def prediction(events, model: str, direction: str, price: float):
    return events.emit(PredictionGenerated, model.lower(), timeframe="1m", bar_time=events.next_bar(), price=price,
                       model=ModelInfo(name=model, inference_time="250us"),
                       prediction=Prediction(direction=direction, confidence=0.6, time_horizon="1m"))


def known_sequence(events) -> list:
    """Events with known figures (min_samples 4): validation 2/40, rejection 1/4, model 2/4,
    4 of 5 positions won, execution 1/4, drawdown 2 %, an open breaker, one alert firing."""
    seq = [events.tick() for _ in range(38)]
    seq += [events.emit(DeadLetter, "data-bridge", reason="crossed quote") for _ in range(2)]
    seq += [events.emit(SignalValidated, "pattern-validator", signal_id=events.tick().event_id, direction="BUY",
                        confidence=0.7) for _ in range(3)]
    seq += [events.emit(SignalRejected, "pattern-validator", signal_id=events.tick().event_id, direction="SELL",
                        confidence=0.2)]
    # prices rise: BUY hits, SELL misses (the last prediction is not resolved yet)
    seq += [prediction(events, "LightGBM-v1", d, 1.1 + i * 0.001) for i, d in enumerate(("BUY", "SELL") * 2 + ("BUY",))]
    for i in range(4):
        seq.append(events.emit(OrderPlaced, "trading-engine", order_id=f"o-{i}", side="BUY", volume=1000.0))
        seq.append(events.emit(OrderRejected, "trading-engine", order_id=f"o-{i}", reason="broker: off quotes")
                   if i == 0 else
                   events.emit(OrderExecuted, "trading-engine", order_id=f"o-{i}", side="BUY", volume=1000.0, price=1.1))
    seq.append(events.emit(OrderRejected, "trading-engine", order_id="o-risk", reason="risk: exposure"))
    seq += [events.emit(PositionClosed, "trading-engine", position_id="p", side="BUY", volume=1.0, entry_price=1.0,
                        exit_price=1.0, pnl=pnl) for pnl in (3.0, 1.0, -2.0, 5.0, 0.5)]
    seq += [events.emit(PerformanceCalculated, "performance-analytics", equity=e, realized_pnl=0.0, unrealized_pnl=0.0)
            for e in (100_000.0, 102_000.0, 99_960.0)]
    seq.append(events.emit(CircuitBreakerStateChanged, "ml-lstm", breaker="ml-lstm/LSTM-v1", from_state="CLOSED",
                           to_state="OPEN", failures=5))
    seq += [events.emit(AlertRaised, "alerts", rule="drawdown", severity="critical", message="dd", subject=""),
            events.emit(AlertRaised, "alerts", rule="model_accuracy", severity="warning", message="m",
                        subject="LightGBM-v1"),
            events.emit(AlertResolved, "alerts", rule="model_accuracy", subject="LightGBM-v1")]
    return seq


def test_event_metrics_after_a_known_sequence(events):
    metrics = EventMetrics(AlertSettings(min_samples=4))
    for event in known_sequence(events):
        metrics(event)  # as the kernel's on_event hook
    m = scraped(registry_text(metrics))
    assert m[("tradepipe_validation_failure_ratio", ())] == pytest.approx(2 / 40)
    assert m[("tradepipe_signal_rejection_ratio", ())] == pytest.approx(1 / 4)
    assert m[("tradepipe_model_accuracy", (("model", "LightGBM-v1"),))] == pytest.approx(2 / 4)
    assert m[("tradepipe_signal_accuracy", ())] == pytest.approx(4 / 5)
    assert m[("tradepipe_execution_failure_ratio", ())] == pytest.approx(1 / 4)
    assert m[("tradepipe_drawdown", ())] == pytest.approx(1 - 99_960 / 102_000)
    assert m[("tradepipe_processing_p95_seconds", (("service", "lightgbm-v1"),))] == pytest.approx(0.00025)
    assert m[("tradepipe_circuit_breaker_state", (("breaker", "ml-lstm/LSTM-v1"), ("service", "ml-lstm")))] == 2
    assert {labels for name, labels in m if name == "tradepipe_alerts_firing"} == {(("rule", "drawdown"), ("subject", ""))}
    assert m[("tradepipe_events_total", (("producer", "data-bridge"), ("topic", MARKET_DATA)))] == 38
    assert m[("tradepipe_events_total", (("producer", "trading-engine"), ("topic", "order-events")))] == 14
    snapshot = metrics.snapshot()
    assert snapshot["signal_accuracy"] == {"value": 0.8, "samples": 5}
    assert snapshot["alerts_firing"] == [{"rule": "drawdown", "subject": "", "severity": "critical", "message": "dd"}]


def test_ratios_are_absent_below_min_samples(events):
    metrics = EventMetrics(AlertSettings(min_samples=50))
    for event in known_sequence(events):
        metrics(event)
    names = {name for name, _ in scraped(registry_text(metrics))}
    assert not names & {"tradepipe_validation_failure_ratio", "tradepipe_model_accuracy", "tradepipe_signal_accuracy"}
    assert "tradepipe_drawdown" in names  # not a rate: always judged


def record(event, produced_s: float, offset: int) -> Record:
    headers = tuple((k, v) for k, v in event_headers(event, CODEC) if k != PRODUCED_AT_HEADER)
    return Record(event.topic, 0, offset, CODEC.encode(event), event.key, event.timestamp_ms,
                  headers + ((PRODUCED_AT_HEADER, b"%d" % round(produced_s * 1e6)),))


def test_tick_to_order_and_hop_times_from_the_records(events):
    metrics = EventMetrics()
    tick = events.tick()
    bar = events.emit(ConfigurationUpdated, "bar-builder", parent=tick, changes={})  # any event the tick caused
    order = events.emit(OrderPlaced, "trading-engine", parent=bar, order_id="o-1", side="BUY", volume=1.0)
    exit_order = events.emit(OrderPlaced, "trading-engine", parent=bar, order_id="o-2", side="SELL", volume=1.0,
                             reason="stop-loss")
    t = 1_700_000_000.0
    for i, (event, at) in enumerate([(tick, t), (bar, t + 0.0015), (order, t + 0.004), (exit_order, t + 0.2)]):
        metrics(event, record(event, at, i))
    m = scraped(registry_text(metrics))
    assert m[("tradepipe_tick_to_order_seconds_count", ())] == 1  # the signal's entry, not the exit
    assert m[("tradepipe_tick_to_order_seconds_sum", ())] == pytest.approx(0.004, abs=1e-6)  # µs in the header
    assert m[("tradepipe_tick_to_order_seconds_bucket", (("le", "0.0025"),))] == 0
    assert m[("tradepipe_tick_to_order_seconds_bucket", (("le", "0.005"),))] == 1
    assert m[("tradepipe_hop_seconds_sum", (("service", "bar-builder"),))] == pytest.approx(0.0015, abs=1e-6)
    assert m[("tradepipe_hop_seconds_count", (("service", "trading-engine"),))] == 2
    assert m[("tradepipe_hop_seconds_sum", (("service", "trading-engine"),))] == pytest.approx(0.0025 + 0.1985, abs=1e-6)


def test_a_bus_tail_feeds_the_metrics_with_the_produced_at_header(events, tmp_path):
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    ensure_topics(bus, partitions=1)
    metrics = EventMetrics()
    tick = events.tick()
    order = events.emit(OrderPlaced, "trading-engine", parent=tick, order_id="o-1", side="BUY", volume=1.0)
    before = time.time()
    with BusTail(bus, from_start=True) as tail:
        tail.subscribe(metrics)
        EventStore(bus).append([tick])
        EventStore(bus).append([order])
        wait_until(lambda: tail.seen >= 2, 20, "the tail to see 2 events")
    m = scraped(registry_text(metrics))
    assert m[("tradepipe_tick_to_order_seconds_count", ())] == 1
    assert 0 <= m[("tradepipe_tick_to_order_seconds_sum", ())] <= time.time() - before
    bus.close()


def test_consumer_lag_of_groups(events, tmp_path):
    bus = open_bus(f"sqlite:///{tmp_path / 'bus.db'}")
    ensure_topics(bus, partitions=1)
    EventStore(bus).append([events.tick() for _ in range(12)])
    consumer = bus.consumer("bar-builder", [MARKET_DATA])
    consumer.commit({TopicPartition(MARKET_DATA, 0): 5})
    consumer.close()
    consumer = bus.consumer("notifier", [SYSTEM, MARKET_DATA])
    consumer.commit({TopicPartition(SYSTEM, 0): 0})
    consumer.close()
    groups = {"bar-builder": (MARKET_DATA,), "notifier": (SYSTEM, MARKET_DATA), "trading-engine": (MARKET_DATA,)}
    lag = ConsumerLag(f"sqlite:///{tmp_path / 'bus.db'}", groups)
    # the trading engine never committed: not running, not lagging
    assert lag.lags() == {("bar-builder", MARKET_DATA, 0): 7, ("notifier", SYSTEM, 0): 0,
                          ("notifier", MARKET_DATA, 0): 12}
    m = scraped(registry_text(lag))
    assert m[("tradepipe_consumer_lag", (("partition", "0"), ("service", "bar-builder"), ("topic", MARKET_DATA)))] == 7
    lag.bus.close()
    bus.close()


def test_reported_durations():
    assert [duration_ms(t) for t in ("15ms", "212.5us", "0.2s", "", "fast", "12xs")] == [15.0, 0.2125, 200.0, None,
                                                                                        None, None]
    assert timedelta(milliseconds=duration_ms("1.5s")) == timedelta(seconds=1.5)
