"""Prometheus metrics (R8.3): what a service process serves on its /metrics, and what the
pipeline's events say, for the aggregated /metrics of the API process and the dashboard.

Nothing on a hot path touches a prometheus_client object: runners and watchers bump plain
counters, and collectors turn them into metric families when Prometheus scrapes.

- :class:`ServiceCollector`: what a :class:`~tradepipe.runtime.runner.ServiceRunner` counts
  in its :class:`~tradepipe.runtime.runner.RunnerMeter` (records per topic, handler time in
  histogram buckets) and the positions after its last poll with the consumer lag (end offsets asked of
  the bus at scrape time, minus those positions) and the state of every circuit breaker of the
  runner and its service. :class:`~tradepipe.runtime.host.ServiceHost` registers it.
- :class:`PipelineFigures`: the rolling figures the alert rules judge, from events alone
  (no clock, so the same events give the same figures in a backtest and on a bus).
- :class:`EventMetrics`: a :class:`~tradepipe.runtime.tail.BusTail` subscriber (or the
  in-process kernel's ``on_event`` hook) keeping :class:`PipelineFigures` plus what needs the
  wall clock: events per topic and producer, tick -> order latency and per-hop time, from each
  record's ``producedAt`` header (the time of the call when there is no record).
- :class:`ConsumerLag`: every consumer group's lag, end offset - committed offset, for a
  process that watches the whole deployment (the API, the alert rules).

Metric names (all ``tradepipe_``):

======================================  ==========  ===================================
name                                    type        labels
======================================  ==========  ===================================
events_processed_total                  counter     service, topic
event_processing_seconds                histogram   service
consumer_lag                            gauge       service, topic, partition
circuit_breaker_state                   gauge       service, breaker (0 closed, 1 half-open, 2 open)
events_total                            counter     topic, producer
tick_to_order_seconds                   histogram   -
hop_seconds                             histogram   service (the producer of the later event)
processing_p95_seconds                  gauge       service (compute time the events report)
validation_failure_ratio                gauge       -
signal_rejection_ratio                  gauge       -
model_accuracy                          gauge       model
signal_accuracy                         gauge       -
execution_failure_ratio                 gauge       -
drawdown                                gauge       -
alerts_firing                           gauge       rule, subject
======================================  ==========  ===================================

A rolling ratio is exported once its window holds ``alerts.min_samples`` outcomes (absent
before), so a Prometheus rule over it needs no sample count of its own.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from tradepipe.bus.base import Bus, BusError, Record, TopicPartition
from tradepipe.config import AlertSettings, Settings
from tradepipe.events.envelope import Event
from tradepipe.events.types import (
    AlertRaised, AlertResolved, BarClosed, CircuitBreakerStateChanged, DeadLetter, FeaturesCalculated,
    MarketDataReceived, OrderCancelled, OrderExecuted, OrderPlaced, OrderRejected, PerformanceCalculated,
    PositionClosed, PredictionGenerated, SignalRejected, SignalValidated, TradingStateChanged,
)
from tradepipe.models.scoring import Awaiting, HorizonScorer, horizon_ms
from tradepipe.runtime.breaker import CircuitBreaker
from tradepipe.runtime.runner import Buckets, RunnerMeter
from tradepipe.runtime.store import PRODUCED_AT_HEADER
from tradepipe.services.ensemble import HitWindow

log = logging.getLogger(__name__)

#: end-to-end buckets (seconds): in process a tick becomes an order in milliseconds, across
#: processes on a bus in tens to hundreds
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BREAKER_STATES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}
INPUT_WINDOW = 1000  # pipeline inputs (ticks, bars from files, dead letters) in the validation ratio
#: the alert keys (rule, subject) an input to the validation ratio touches
VALIDATION = (("validation_failure_rate", ""),)
OUTCOME_WINDOW = 100  # outcomes (hits, wins, fills, verdicts, timings) in the other rolling figures
PLACED_MEMORY = 4096  # placed orders awaiting their fill or rejection


def breaker_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("tradepipe_circuit_breaker_state", "circuit breaker state: 0 closed, 1 half-open, 2 open",
                             labels=["service", "breaker"])


class ServiceCollector:
    """The per-service metrics of a runner (anything with ``meter``, ``bus``, ``service`` and
    ``bus_breaker``), as ``service``."""

    def __init__(self, runner: Any, service: str) -> None:
        self.runner = runner
        self.service = service

    def describe(self) -> Iterable:
        return ()

    def collect(self) -> Iterable:
        meter: RunnerMeter = self.runner.meter
        name = self.service
        processed = CounterMetricFamily("tradepipe_events_processed", "input records handled, per topic",
                                        labels=["service", "topic"])
        for topic, count in sorted(dict(meter.processed).items()):
            processed.add_metric([name, topic], count)
        yield processed
        seconds = HistogramMetricFamily("tradepipe_event_processing_seconds",
                                        "time to decode, deduplicate and handle one input record", labels=["service"])
        seconds.add_metric([name], meter.seconds.cumulative(), meter.seconds.sum)
        yield seconds
        yield self._lag(meter.positions)
        breakers = breaker_family()
        for breaker in self._breakers():
            breakers.add_metric([name, breaker.name], BREAKER_STATES[breaker.state])
        yield breakers

    def _lag(self, positions: Mapping[TopicPartition, int]) -> GaugeMetricFamily:
        lag = GaugeMetricFamily("tradepipe_consumer_lag", "records on the partition not yet polled",
                                labels=["service", "topic", "partition"])
        try:
            ends = {topic: self.runner.bus.end_offsets(topic) for topic in sorted({tp.topic for tp in positions})}
        except BusError as exc:  # the broker is away: no lag this scrape, the rest still served
            log.debug("%s: no consumer lag this scrape: %s", self.service, exc)
            return lag
        for tp, position in sorted(positions.items()):
            lag.add_metric([self.service, tp.topic, str(tp.partition)], max(0, ends[tp.topic].get(tp.partition, 0) - position))
        return lag

    def _breakers(self) -> list[CircuitBreaker]:
        """The runner's bus breaker and every breaker the service holds."""
        own = [b for b in vars(self.runner.service).values() if isinstance(b, CircuitBreaker)]
        return [self.runner.bus_breaker, *own]


# --- figures from events -----------------------------------------------------------------------

class FiguresState(msgspec.Struct, kw_only=True):
    """What :meth:`PipelineFigures.snapshot` returns."""

    inputs: list[int]
    verdicts: list[int]
    executions: list[int]
    wins: list[int]
    models: dict[str, list[int]]
    awaiting: list[list[Any]]
    processing_ms: dict[str, list[float]]
    placed: list[str]
    breakers: dict[str, list[Any]]  # breaker -> [service, state number]
    peak_equity: float | None
    drawdown: float | None


class PipelineFigures:
    """Rolling figures from events alone (R8.3/R8.4), each over a window of outcomes:

    - validation failure ratio: dead letters among the pipeline's inputs (the data bridge's
      ticks and bars, and every dead letter: a rejected row, an undecodable record, a handler
      that kept failing), over the last ``input_window`` inputs;
    - signal rejection ratio: SignalRejected among the validator's verdicts;
    - model accuracy, per model: its predictions (fallbacks excluded) scored as the ensemble
      scores them, resolved by later predictions of the same (symbol, timeframe) once the
      horizon has passed (:mod:`tradepipe.models.scoring`; ``dead_band`` in return units);
    - signal accuracy: the share of closed positions that won (PnL > 0);
    - execution failure ratio: placed orders refused by the broker (OrderRejected of a placed
      order) among placed orders with an outcome (a risk check's refusal is a decision, the
      order was never placed, and a cancellation is no execution: neither counts);
    - drawdown: from peak equity, by PerformanceCalculated (1 - equity / the highest equity
      reported) and by the engine's TradingStateChanged (its own figure);
    - processing time, per service: the compute time the events report
      (FeaturesCalculated's ``calculationTime``, PredictionGenerated's ``inferenceTime``): the
      only processing time an event states; the 95th percentile of the last ``window``;
    - circuit breakers: the last state each reported.

    :meth:`observe` returns the (rule, subject) pairs whose figure the event changed, for
    the alert rules to judge.
    """

    def __init__(self, settings: AlertSettings | None = None, *, dead_band: float = 0.35e-4,
                 input_window: int = INPUT_WINDOW, window: int = OUTCOME_WINDOW) -> None:
        self.settings = settings or AlertSettings()
        self.window = window
        self.inputs = HitWindow(input_window)  # 1: a dead letter
        self.verdicts = HitWindow(window)  # 1: a rejected signal
        self.executions = HitWindow(window)  # 1: a placed order refused
        self.wins = HitWindow(window)  # 1: a winning closed position
        self.models: dict[str, HitWindow] = {}  # 1: a hit
        self.scorer = HorizonScorer(dead_band)
        self.processing_ms: dict[str, deque[float]] = {}
        self._slow: dict[str, HitWindow] = {}  # 1: above the processing threshold (cheap to check)
        self.placed: dict[str, None] = {}  # order ids awaiting their outcome, oldest first
        self.breakers: dict[str, tuple[str, int]] = {}  # breaker -> (service, state number)
        self.peak_equity: float | None = None
        self.drawdown: float | None = None
        self._observers: dict[type, Callable[[Any], tuple[tuple[str, str], ...]]] = {
            MarketDataReceived: self._input, BarClosed: self._bar, DeadLetter: self._dead_letter,
            SignalValidated: self._validated, SignalRejected: self._rejected_signal,
            PredictionGenerated: self._prediction, FeaturesCalculated: self._features,
            OrderPlaced: self._placed, OrderExecuted: self._executed, OrderRejected: self._refused,
            OrderCancelled: self._cancelled, PositionClosed: self._closed,
            PerformanceCalculated: self._performance, TradingStateChanged: self._trading_state,
            CircuitBreakerStateChanged: self._breaker,
        }

    def observe(self, event: Event) -> tuple[tuple[str, str], ...]:
        observer = self._observers.get(type(event))
        return observer(event) if observer is not None else ()

    # -- values ---------------------------------------------------------------------------
    def ratio(self, window: HitWindow) -> float | None:
        """The window's share of 1s, or None below ``min_samples``."""
        n = len(window)
        return window.hits / n if n >= self.settings.min_samples and n else None

    def value(self, rule: str, subject: str = "") -> float | None:
        """The figure ``rule`` judges for ``subject`` (None: not enough samples yet)."""
        if rule == "validation_failure_rate":
            return self.ratio(self.inputs)
        if rule == "model_accuracy":
            window = self.models.get(subject)
            return None if window is None else self.ratio(window)
        if rule == "signal_accuracy":
            return self.ratio(self.wins)
        if rule == "execution_failure_rate":
            return self.ratio(self.executions)
        if rule == "drawdown":
            return self.drawdown
        if rule == "circuit_breaker_open":
            known = self.breakers.get(subject)
            return None if known is None else float(known[1])
        if rule == "processing_time":
            return self.processing_p95_ms(subject)
        raise KeyError(rule)

    def processing_p95_ms(self, service: str) -> float | None:
        """95th percentile (nearest rank) of the reported compute times of ``service``."""
        times = self.processing_ms.get(service)
        if times is None or len(times) < self.settings.min_samples:
            return None
        above = len(times) - math.ceil(0.95 * len(times)) + 1  # samples at or above the p95
        return heapq.nlargest(above, times)[-1]

    def any_slow(self, service: str) -> bool:
        """Whether any of the last reported times of ``service`` is above the threshold: when
        none is, its p95 is not either (spares the percentile on every feature event)."""
        slow = self._slow.get(service)
        return slow is not None and slow.hits > 0

    # -- observers ------------------------------------------------------------------------

    def tick(self) -> int:
        """Count an accepted input (the tick path, kept short); the dead letters in the window."""
        inputs = self.inputs
        inputs.add(0)
        return inputs.hits

    def _input(self, event: Event) -> tuple[tuple[str, str], ...]:
        self.tick()
        return VALIDATION

    def _bar(self, event: BarClosed) -> tuple[tuple[str, str], ...]:
        if event.metadata.producer != "data-bridge":  # built from ticks already counted
            return ()
        return self._input(event)

    def _dead_letter(self, event: DeadLetter) -> tuple[tuple[str, str], ...]:
        self.inputs.add(1)
        return VALIDATION

    def _validated(self, event: SignalValidated) -> tuple[tuple[str, str], ...]:
        self.verdicts.add(0)
        return ()

    def _rejected_signal(self, event: SignalRejected) -> tuple[tuple[str, str], ...]:
        self.verdicts.add(1)
        return ()

    def _prediction(self, event: PredictionGenerated) -> tuple[tuple[str, str], ...]:
        touched = self._reported(event.metadata.producer, event.model.inference_time)
        bar_time, price = event.bar_time, event.price
        if bar_time is None or price is None or not price > 0:
            return touched
        symbol = event.symbol or ""
        models = []
        for then, realized in self.scorer.resolve(symbol, event.timeframe, bar_time, price):
            window = self.models.get(then.model)
            if window is None:
                window = self.models[then.model] = HitWindow(self.window)
            window.add(1 if realized == then.direction else 0)
            models.append(("model_accuracy", then.model))
        horizon = horizon_ms(event.prediction.time_horizon)
        if not event.fallback and horizon is not None:
            self.scorer.expect(symbol, event.timeframe, horizon,
                               Awaiting(bar_time, price, event.model.name, event.prediction.direction))
        return touched + tuple(dict.fromkeys(models))

    def _features(self, event: FeaturesCalculated) -> tuple[tuple[str, str], ...]:
        return self._reported(event.metadata.producer, event.metadata.calculation_time)

    def _reported(self, service: str, text: str) -> tuple[tuple[str, str], ...]:
        ms = duration_ms(text)
        if ms is None:
            return ()
        times = self.processing_ms.get(service)
        if times is None:
            times = self.processing_ms[service] = deque(maxlen=self.window)
            self._slow[service] = HitWindow(self.window)
        times.append(ms)
        self._slow[service].add(1 if ms > self.settings.processing_ms else 0)
        return (("processing_time", service),)

    _EXECUTION = (("execution_failure_rate", ""),)

    def _placed(self, event: OrderPlaced) -> tuple[tuple[str, str], ...]:
        self.placed[event.order_id] = None
        if len(self.placed) > PLACED_MEMORY:
            del self.placed[next(iter(self.placed))]
        return ()

    def _executed(self, event: OrderExecuted) -> tuple[tuple[str, str], ...]:
        return self._outcome(event.order_id, 0)

    def _refused(self, event: OrderRejected) -> tuple[tuple[str, str], ...]:
        return self._outcome(event.order_id, 1)

    def _outcome(self, order_id: str, failed: int) -> tuple[tuple[str, str], ...]:
        if order_id not in self.placed:  # a risk refusal (never placed) or a second outcome
            return ()
        del self.placed[order_id]
        self.executions.add(failed)
        return self._EXECUTION

    def _cancelled(self, event: OrderCancelled) -> tuple[tuple[str, str], ...]:
        self.placed.pop(event.order_id, None)
        return ()

    def _closed(self, event: PositionClosed) -> tuple[tuple[str, str], ...]:
        self.wins.add(1 if event.pnl > 0 else 0)
        return (("signal_accuracy", ""),)

    _DRAWDOWN = (("drawdown", ""),)

    def _performance(self, event: PerformanceCalculated) -> tuple[tuple[str, str], ...]:
        equity = event.equity
        if self.peak_equity is None or equity > self.peak_equity:
            self.peak_equity = equity
        self.drawdown = 1.0 - equity / self.peak_equity if self.peak_equity > 0 else 0.0
        return self._DRAWDOWN

    def _trading_state(self, event: TradingStateChanged) -> tuple[tuple[str, str], ...]:
        if event.drawdown is None:
            return ()
        self.drawdown = event.drawdown
        return self._DRAWDOWN

    def _breaker(self, event: CircuitBreakerStateChanged) -> tuple[tuple[str, str], ...]:
        self.breakers[event.breaker] = (event.metadata.producer, BREAKER_STATES[event.to_state])
        return (("circuit_breaker_open", event.breaker),)

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return msgspec.to_builtins(FiguresState(
            inputs=list(self.inputs.outcomes), verdicts=list(self.verdicts.outcomes),
            executions=list(self.executions.outcomes), wins=list(self.wins.outcomes),
            models={m: list(w.outcomes) for m, w in self.models.items()}, awaiting=self.scorer.snapshot(),
            processing_ms={s: list(t) for s, t in self.processing_ms.items()}, placed=list(self.placed),
            breakers={b: list(v) for b, v in self.breakers.items()}, peak_equity=self.peak_equity,
            drawdown=self.drawdown,
        ))

    def restore(self, state: dict[str, Any]) -> None:
        s = msgspec.convert(state, FiguresState)
        self.inputs = HitWindow(self.inputs.outcomes.maxlen, s.inputs)
        self.verdicts = HitWindow(self.window, s.verdicts)
        self.executions = HitWindow(self.window, s.executions)
        self.wins = HitWindow(self.window, s.wins)
        self.models = {m: HitWindow(self.window, o) for m, o in s.models.items()}
        self.scorer.restore(s.awaiting)
        self.processing_ms, self._slow = {}, {}
        for service, times in s.processing_ms.items():
            self.processing_ms[service] = deque(times, maxlen=self.window)
            self._slow[service] = HitWindow(self.window, [1 if t > self.settings.processing_ms else 0 for t in times])
        self.placed = dict.fromkeys(s.placed)
        self.breakers = {b: (service, int(state)) for b, (service, state) in s.breakers.items()}
        self.peak_equity, self.drawdown = s.peak_equity, s.drawdown


_UNITS_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}


def duration_ms(text: str) -> float | None:
    """A reported duration ("15ms", "212.4us", "0.2s") in ms; None for "" or anything else."""
    for unit in ("us", "µs", "ms", "s"):  # "s" last: it ends the others too
        if text.endswith(unit):
            try:
                return float(text[:-len(unit)]) * _UNITS_MS[unit]
            except ValueError:
                return None
    return None


# --- from a bus: events with their records, consumer groups ------------------------------------

def produced_at(record: Record) -> float | None:
    """The record's ``producedAt`` header in epoch seconds (None without one)."""
    for key, value in record.headers:
        if key == PRODUCED_AT_HEADER:
            return int(value) / 1e6
    return None


class EventMetrics:
    """The pipeline's metrics from its events: call it with ``(event, record)`` (a BusTail
    subscriber) or ``(event)`` (the kernel's ``on_event``: wall time is then the time of the
    call); register it in a ``CollectorRegistry`` to serve them. Thread-safe: a watcher thread
    feeds it while scrapes read it.

    Tick -> order latency: from the record of the tick that roots an OrderPlaced's correlation
    (a signal's entry: exits carry the correlation of the signal that opened the position) to
    the OrderPlaced's. Per-hop time: from the record of an event's cause to its own, labelled
    with the event's producer. Both by the ``producedAt`` of the records, so they include
    transport and queueing; causes older than the last ``memory`` events are not matched.
    """

    def __init__(self, settings: AlertSettings | None = None, *, dead_band: float = 0.35e-4,
                 memory: int = 50_000) -> None:
        self.figures = PipelineFigures(settings, dead_band=dead_band)
        self.memory = memory
        self.events: dict[tuple[str, str], int] = {}  # (topic, producer) -> events
        self.tick_to_order = Buckets(LATENCY_BUCKETS)
        self.hops: dict[str, Buckets] = {}  # producer -> time from its input's record to its output's
        self.firing: dict[tuple[str, str], AlertRaised] = {}  # (rule, subject) -> the alert
        # eventId -> wall time of its record, oldest first; an OrderedDict because a plain dict
        # evicted from the front gets slower with every deletion (its table fills with holes)
        self._produced: OrderedDict[Any, float] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> EventMetrics:
        return cls(settings.alerts, dead_band=settings.models.dead_band_bps / 1e4)

    def __call__(self, event: Event, record: Record | None = None) -> None:
        at = (produced_at(record) if record is not None else None) or time.time()
        with self._lock:
            self._observe(event, at)

    def _observe(self, event: Event, at: float) -> None:
        key = (event.topic, event.metadata.producer)
        self.events[key] = self.events.get(key, 0) + 1
        self.figures.observe(event)
        produced = self._produced
        if event.causation_id is not None:
            cause_at = produced.get(event.causation_id)
            if cause_at is not None:
                hops = self.hops.get(event.metadata.producer)
                if hops is None:
                    hops = self.hops[event.metadata.producer] = Buckets(LATENCY_BUCKETS)
                hops.observe(max(0.0, at - cause_at))
        kind = type(event)
        if kind is OrderPlaced and event.reason == "signal":
            root_at = produced.get(event.correlation_id)
            if root_at is not None:
                self.tick_to_order.observe(max(0.0, at - root_at))
        elif kind is AlertRaised:
            self.firing[(event.rule, event.subject)] = event
        elif kind is AlertResolved:
            self.firing.pop((event.rule, event.subject), None)
        produced[event.event_id] = at
        if len(produced) > self.memory:
            produced.popitem(last=False)

    def snapshot(self) -> dict[str, Any]:
        """The current figures, JSON-ready (for the dashboard): ratios with their sample
        counts, None where nothing was seen yet."""
        with self._lock:
            f = self.figures

            def share(window: HitWindow) -> dict[str, Any]:
                return {"value": window.hits / len(window) if len(window) else None, "samples": len(window)}

            return {
                "validation_failure_ratio": share(f.inputs),
                "signal_rejection_ratio": share(f.verdicts),
                "execution_failure_ratio": share(f.executions),
                "signal_accuracy": share(f.wins),
                "model_accuracy": {model: share(w) for model, w in sorted(f.models.items())},
                "drawdown": f.drawdown,
                "processing_p95_ms": {s: f.processing_p95_ms(s) for s in sorted(f.processing_ms)},
                "breakers": {b: {"service": s, "state": st} for b, (s, st) in sorted(f.breakers.items())},
                "tick_to_order": {"count": self.tick_to_order.count, "sum_s": self.tick_to_order.sum},
                "alerts_firing": [{"rule": r, "subject": s, "severity": a.severity, "message": a.message}
                                  for (r, s), a in sorted(self.firing.items())],
            }

    def describe(self) -> Iterable:
        return ()

    def collect(self) -> Iterable:
        with self._lock:
            return list(self._families())

    def _families(self) -> Iterable:
        f = self.figures
        events = CounterMetricFamily("tradepipe_events", "events seen on the bus, per topic and producer",
                                     labels=["topic", "producer"])
        for (topic, producer), count in sorted(self.events.items()):
            events.add_metric([topic, producer], count)
        yield events
        latency = HistogramMetricFamily("tradepipe_tick_to_order_seconds",
                                        "wall time from a tick's record to the record of the order it caused")
        latency.add_metric([], self.tick_to_order.cumulative(), self.tick_to_order.sum)
        yield latency
        hops = HistogramMetricFamily("tradepipe_hop_seconds", "wall time from an event's cause's record to its own",
                                     labels=["service"])
        for service, buckets in sorted(self.hops.items()):
            hops.add_metric([service], buckets.cumulative(), buckets.sum)
        yield hops
        processing = GaugeMetricFamily("tradepipe_processing_p95_seconds",
                                       "95th percentile of the compute time the service's events report",
                                       labels=["service"])
        for service in sorted(f.processing_ms):
            p95 = f.processing_p95_ms(service)
            if p95 is not None:
                processing.add_metric([service], p95 / 1000.0)
        yield processing
        for name, doc, window in (
            ("validation_failure_ratio", "dead letters among the last pipeline inputs", f.inputs),
            ("signal_rejection_ratio", "rejected signals among the last validator verdicts", f.verdicts),
            ("signal_accuracy", "winning positions among the last closed positions", f.wins),
            ("execution_failure_ratio", "refused orders among the last placed orders", f.executions),
        ):
            yield self._ratio(f"tradepipe_{name}", doc, [([], window)])
        yield self._ratio("tradepipe_model_accuracy", "rolling hit rate of the model's predictions",
                          [([model], w) for model, w in sorted(f.models.items())], labels=["model"])
        drawdown = GaugeMetricFamily("tradepipe_drawdown", "drawdown from peak equity (fraction)")
        if f.drawdown is not None:
            drawdown.add_metric([], f.drawdown)
        yield drawdown
        breakers = breaker_family()
        for breaker, (service, state) in sorted(f.breakers.items()):
            breakers.add_metric([service, breaker], state)
        yield breakers
        firing = GaugeMetricFamily("tradepipe_alerts_firing", "1 per alert raised and not resolved",
                                   labels=["rule", "subject"])
        for rule, subject in sorted(self.firing):
            firing.add_metric([rule, subject], 1.0)
        yield firing

    def _ratio(self, name: str, doc: str, windows: list[tuple[list[str], HitWindow]],
               labels: Sequence[str] = ()) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=list(labels))
        for values, window in windows:
            ratio = self.figures.ratio(window)
            if ratio is not None:
                family.add_metric(values, ratio)
        return family


class ConsumerLag:
    """Lag of consumer groups, end offset - committed offset per partition of their input
    topics (a group that never committed on a partition lags by all of it; a group with no
    commit at all is not running, e.g. the in-process run's services, and is left out), from
    any process:
    the bus is opened on first use when given as a URL. Also a collector
    (``tradepipe_consumer_lag``, the group as ``service``)."""

    def __init__(self, bus: Bus | str, groups: Mapping[str, Sequence[str]]) -> None:
        self._bus = bus
        self.groups = {group: tuple(topics) for group, topics in groups.items() if topics}
        self._lock = threading.Lock()

    @property
    def bus(self) -> Bus:
        with self._lock:
            if isinstance(self._bus, str):
                from tradepipe.bus import open_bus

                self._bus = open_bus(self._bus, create=False)
            return self._bus

    def lags(self) -> dict[tuple[str, str, int], int]:
        """(group, topic, partition) -> records behind; raises BusError if the bus cannot say."""
        bus = self.bus
        known = bus.topics()
        ends = {topic: bus.end_offsets(topic) for topic in sorted({t for ts in self.groups.values() for t in ts})
                if topic in known}
        out = {}
        for group, topics in sorted(self.groups.items()):
            committed = {topic: bus.committed_offsets(group, topic) for topic in topics if topic in ends}
            if not any(committed.values()):
                continue
            for topic, offsets in committed.items():
                for partition, end in sorted(ends[topic].items()):
                    out[(group, topic, partition)] = max(0, end - offsets.get(partition, 0))
        return out

    def describe(self) -> Iterable:
        return ()

    def collect(self) -> Iterable:
        family = GaugeMetricFamily("tradepipe_consumer_lag", "records the group has not committed",
                                   labels=["service", "topic", "partition"])
        try:
            lags = self.lags()
        except BusError as exc:
            log.debug("no consumer lag this scrape: %s", exc)
            lags = {}
        for (group, topic, partition), lag in lags.items():
            family.add_metric([group, topic, str(partition)], lag)
        yield family


def pipeline_groups(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Consumer group -> input topics of the named services (each group is its service's name)."""
    from tradepipe.distributed import lockstep_groups

    return lockstep_groups([name for name in names if name != "data-bridge"])


__all__ = [
    "ConsumerLag", "EventMetrics", "PipelineFigures", "ServiceCollector",
    "duration_ms", "pipeline_groups", "produced_at",
]
