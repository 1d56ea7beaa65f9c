"""Arrival order on a bus: every multi-input service decides the same whatever the order in
which its input topics' events reach it within one lockstep cycle.

On a bus each service consumes its topics independently. The data bridge's lockstep replay
(publish ticks, and after each tick that closes a 1m bar wait until every group has consumed
everything) bounds the disorder to one *cycle*: the ticks since the last quiescence, the
bar-closing tick and everything they cause. Within a cycle a service sees its events in any
interleaving that keeps the order of each topic partition as each producer wrote it; market
data is one ordered stream (the bridge publishes it one tick at a time).

The main test runs the real pipeline in process on a morning of the shipped sample (tiny real
models, so signals are validated, orders filled and positions closed), records every
multi-input service's inputs in dispatch order, cuts them into cycles, and replays each
service alone with its inputs shuffled within every cycle: the outputs must be the same events
(eventIds included), in the same order within each (topic, symbol). Smaller scenarios cover
what the sample never does: saga timeouts and late fills, partial joins and partial ensemble
groups, lost features, a signal waiting for its tick across a checkpoint.

Performance analytics is not order-affecting and samples its equity at the first event past
each grid point, whatever topic it comes from: on a bus its Sharpe, Sortino, drawdown, equity
curve, exposure and PerformanceCalculated events depend on arrival; its trade figures and hit
rates do not (tested). The audit trail resolves an order's causal chain when the order event
arrives, so on a bus the chain can lack what has not arrived yet (not tested here).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from itertools import groupby

import msgspec
import pytest

from tradepipe.config import Settings
from tradepipe.events import FEATURES, MARKET_DATA, PREDICTIONS, Event
from tradepipe.events.types import (
    BarClosed, FeaturesCalculated, OrderExecuted, PositionClosed, SagaCompleted, SignalValidated, TradingCommand,
)
from tradepipe.features.join import FEATURE_GROUPS
from tradepipe.pipeline import merged, model_services, open_sources, pipeline_services
from tradepipe.runtime.kernel import InProcessPipeline
from tradepipe.runtime.service import Context, Service
from tradepipe.services.data_bridge import DataBridge
from tradepipe.services.model_service import ModelService
from tradepipe.services.trading_engine import TradingEngine
from tradepipe.services.validator import PatternValidator
from tradepipe.sources import sample_paths

from . import test_ensemble, test_trade_saga, test_trading_engine, test_validator
from .conftest import without_timing

UTC = timezone.utc
WINDOW = (datetime(2014, 5, 5, 0, 0, tzinfo=UTC), datetime(2014, 5, 5, 6, 0, tzinfo=UTC))
#: the services whose decisions must not depend on arrival order, by name
ORDER_AFFECTING = (
    "trading-engine", "pattern-validator", "trade-saga", "ml-xgboost", "ml-lightgbm", "ml-lstm",
    "ensemble-coordinator",
)
ANALYTICS = "performance-analytics"
#: analytics figures that do not depend on arrival order (the rest of its summary may)
ANALYTICS_INVARIANT = (
    "realized_pnl", "unrealized_pnl", "equity", "return", "trades", "wins", "losses", "win_rate", "profit_factor",
    "average_win", "average_loss", "open_positions", "hit_rates",
)
#: topics written by several producers whose records of one partition interleave freely
SHARED_TOPICS = (FEATURES, PREDICTIONS)
SEEDS = range(4)

Cycle = list[Event]


# --- recording the pipeline in process -------------------------------------------------------

class Recording:
    """What one service received, cut into cycles, and what it emitted, in dispatch order."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.cycles: list[Cycle] = [[]]
        self.outputs: list[Event] = []
        handle = service.handle

        def recorded(event: Event, ctx: Context):
            out = list(handle(event, ctx))
            self.outputs.extend(out)
            return out

        service.handle = recorded

    def receive(self, event: Event) -> None:
        if event.topic in self.service.inputs:  # what a bus runner delivers: every event of its topics
            self.cycles[-1].append(event)


def record(make_services: Callable[[], list[Service]], names: Sequence[str], window=WINDOW) -> dict[str, Recording]:
    """Run the pipeline in process over ``window`` of the sample; the recording of each
    service of ``names``. A cycle ends after a tick that closed a 1m bar, once everything it
    caused is handled (the lockstep's quiescence point)."""
    services = make_services()
    recordings = {s.name: Recording(s) for s in services if s.name in names}
    closed_bar = False

    def on_event(event: Event) -> None:
        nonlocal closed_bar
        if type(event) is BarClosed and event.timeframe == "1m":
            closed_bar = True
        for recording in recordings.values():
            recording.receive(event)

    kernel = InProcessPipeline(services, on_event=on_event)
    bridge, ctx = DataBridge(), Context(DataBridge.name)
    start_ms, end_ms = (int(t.timestamp() * 1000) for t in window)
    for _, tick in merged(open_sources(sample_paths(), None), start_ms, end_ms):
        kernel.feed_all(bridge.handle_tick(tick, ctx))
        if closed_bar:
            closed_bar = False
            for recording in recordings.values():
                recording.cycles.append([])
    close(services)
    return recordings


def close(services: Sequence[Service]) -> None:
    for service in services:
        if hasattr(service, "close"):
            service.close()  # ends a model service's inference worker


# --- reordering and replaying ----------------------------------------------------------------

def partition_of(event: Event) -> tuple:
    """What keeps its order on the bus: a topic partition (a symbol) as one producer wrote it;
    market data as one stream."""
    if event.topic == MARKET_DATA:
        return (MARKET_DATA,)
    if event.topic in SHARED_TOPICS:
        return event.topic, event.symbol, event.metadata.producer
    return event.topic, event.symbol


def partitions(cycle: Cycle) -> dict[tuple, list[Event]]:
    queues: dict[tuple, list[Event]] = defaultdict(list)
    for event in cycle:
        queues[partition_of(event)].append(event)
    return queues


def shuffled(cycle: Cycle, rng: random.Random) -> Cycle:
    """A random interleaving of ``cycle`` that keeps each partition's order."""
    queues = partitions(cycle)
    turns = [key for key, events in queues.items() for _ in events]
    rng.shuffle(turns)
    heads = dict.fromkeys(queues, 0)
    out = []
    for key in turns:
        out.append(queues[key][heads[key]])
        heads[key] += 1
    return out


def backwards(cycle: Cycle) -> Cycle:
    """The partitions of ``cycle`` one after the other, the last to start first: what a cycle
    caused arrives before its causes on other topics."""
    return [event for events in reversed(partitions(cycle).values()) for event in events]


def arrival_orders() -> dict[str, Callable[[Cycle], Cycle]]:
    orders: dict[str, Callable[[Cycle], Cycle]] = {"backwards": backwards}
    for seed in SEEDS:
        orders[f"shuffled, seed {seed}"] = lambda cycle, rng=random.Random(seed): shuffled(cycle, rng)
    return orders


def replay(service: Service, events: Sequence[Event]) -> list[Event]:
    """Hand ``events`` to ``service`` one by one, as a bus runner would; what it emitted."""
    ctx = Context(service.name)
    out: list[Event] = []
    for event in events:
        ctx.begin(event)
        out.extend(service.handle(event, ctx))
    close([service])
    return out


def comparable(events: Sequence[Event]) -> list[tuple[str, bytes]]:
    return [(type(e).__name__, msgspec.json.encode(without_timing(e))) for e in events]


def by_partition(events: Sequence[Event]) -> dict[tuple, list[tuple[str, bytes]]]:
    out: dict[tuple, list[tuple[str, bytes]]] = defaultdict(list)
    for event, key in zip(events, comparable(events)):
        out[(event.topic, event.symbol)].append(key)
    return dict(out)


def assert_same_outputs(expected: Sequence[Event], got: Sequence[Event], what: str) -> None:
    """The same events (ids included), in the same order within each (topic, symbol)."""
    missing = Counter(comparable(expected)) - Counter(comparable(got))
    extra = Counter(comparable(got)) - Counter(comparable(expected))
    assert not missing and not extra, (
        f"{what}: {sum(missing.values())} outputs missing, {sum(extra.values())} unexpected; first missing: "
        f"{next(iter(missing), None)}; first unexpected: {next(iter(extra), None)}")
    assert by_partition(got) == by_partition(expected), f"{what}: the same outputs in another order within a partition"


def replay_restarting(make: Callable[[], Service], cycles: Sequence[Cycle]) -> list[Event]:
    """:func:`replay` with a restart after every cycle: the state goes through a JSON
    snapshot into a fresh service, as a checkpoint would carry it."""
    service, out = make(), []
    for cycle in cycles:
        out += replay(service, cycle)
        state = msgspec.json.decode(msgspec.json.encode(service.snapshot()))
        service = make()
        service.restore(state)
    return out


def assert_arrival_order_changes_nothing(make: Callable[[], Service], cycles: Sequence[Cycle],
                                         expected: Sequence[Event] | None = None, *,
                                         restarts: bool = False) -> list[Event]:
    """Replay ``cycles`` to a fresh ``make()`` in every arrival order of :func:`arrival_orders`
    (and, with ``restarts``, backwards with a restart after every cycle); each gives
    ``expected`` (default: what dispatch order gives). Returns ``expected``."""
    name = make().name
    if expected is None:
        expected = replay(make(), [e for cycle in cycles for e in cycle])
    for label, reorder in arrival_orders().items():
        got = replay(make(), [e for cycle in cycles for e in reorder(cycle)])
        assert_same_outputs(expected, got, f"{name}, arrival order {label}")
    if restarts:
        got = replay_restarting(make, [backwards(cycle) for cycle in cycles])
        assert_same_outputs(expected, got, f"{name}, backwards, restarted after every cycle")
    return list(expected)


# --- the pipeline on the sample --------------------------------------------------------------

@pytest.fixture(scope="module")
def make_services(trained) -> Callable[[], list[Service]]:
    return lambda: pipeline_services(Settings(), registry=trained.registry)


def made(make_services: Callable[[], list[Service]], name: str) -> Callable[[], Service]:
    return lambda: next(s for s in make_services() if s.name == name)


@pytest.fixture(scope="module")
def recorded(make_services) -> dict[str, Recording]:
    return record(make_services, (*ORDER_AFFECTING, ANALYTICS))


def test_the_morning_trades(recorded):
    """The slice can fail the test: signals are validated, orders filled, positions closed."""
    engine = recorded["trading-engine"]
    inputs = [e for cycle in engine.cycles for e in cycle]
    assert sum(type(e) is SignalValidated for e in inputs) > 5
    assert sum(type(e) is OrderExecuted for e in engine.outputs) > 5
    assert sum(type(e) is PositionClosed for e in engine.outputs) > 2
    assert len(engine.cycles) > 500


@pytest.mark.parametrize("name", ORDER_AFFECTING)
def test_a_service_replayed_alone_in_dispatch_order_emits_what_it_emitted_in_process(name, recorded, make_services):
    recording = recorded[name]
    got = replay(made(make_services, name)(), [e for cycle in recording.cycles for e in cycle])
    assert_same_outputs(recording.outputs, got, f"{name} in dispatch order")


@pytest.mark.parametrize("name", ORDER_AFFECTING)
def test_a_service_emits_the_same_whatever_the_arrival_order_within_each_cycle(name, recorded, make_services):
    recording = recorded[name]
    assert_arrival_order_changes_nothing(made(make_services, name), recording.cycles, recording.outputs)


def test_the_trade_figures_of_performance_analytics_do_not_depend_on_arrival_order(recorded, make_services):
    """Up to the order of float additions: closes of two symbols may come in either order."""
    cycles = recorded[ANALYTICS].cycles
    make = made(make_services, ANALYTICS)

    def trade_figures(order: Callable[[Cycle], Cycle]) -> dict:
        analytics = make()
        replay(analytics, [e for cycle in cycles for e in order(cycle)])
        summary = analytics.summary()
        return {key: summary[key] for key in ANALYTICS_INVARIANT}

    figures = trade_figures(lambda cycle: cycle)
    assert figures["trades"] > 2 and figures["hit_rates"]
    for label, reorder in arrival_orders().items():
        got = trade_figures(reorder)
        assert got.pop("hit_rates") == figures["hit_rates"], label
        assert got == pytest.approx({k: v for k, v in figures.items() if k != "hit_rates"}, rel=1e-12), label


# --- what the sample never does --------------------------------------------------------------

def test_saga_steps_arriving_early_timeouts_and_late_fills_end_the_same_in_any_order():
    """One bar per cycle: a completed saga, a broker rejection (cancel), a saga whose fill never
    comes (a timeout noticed by whichever event of the next cycle comes first, an exit of an
    older position among them) and then comes late (flatten), and one whose orders arrive but
    never its verdict (they are held, then the fill is flattened when it times out)."""
    a, b, c, d, e, f = (test_trade_saga.Bar(i) for i in range(6))
    stop_loss = [a.placed(180.5, order_id="ord-exit", reason="stop-loss", position_id=a.order_id),
                 a.executed(180.5, order_id="ord-exit", position_id=a.order_id)]
    cycles = [
        a.happy_path(),
        [*b.features(), b.signal(0.001), b.validated(0.002), b.placed(0.003),
         b.order_rejected(0.004, reason="broker: no liquidity")],
        [*c.features(), c.signal(0.001), c.validated(0.002), c.placed(0.003)],
        [*stop_loss, *d.features(), d.signal(0.001), d.rejected(0.002)],
        [*e.features(), e.signal(0.001), e.placed(0.003), e.executed(0.004), c.executed(120.5)],
        [*f.features(), f.signal(0.001), f.rejected(0.002)],
    ]
    outputs = assert_arrival_order_changes_nothing(test_trade_saga.saga, cycles, restarts=True)
    assert [(o.outcome, o.correlation_id) for o in outputs if type(o) is SagaCompleted] == [
        ("COMPLETED", a.correlation), ("FAILED", b.correlation), ("TIMED_OUT", c.correlation),
        ("REJECTED", d.correlation), ("TIMED_OUT", e.correlation), ("REJECTED", f.correlation)]
    assert [(o.command, o.order_id) for o in outputs if type(o) is TradingCommand] == [
        ("cancel", b.order_id), ("cancel", c.order_id), ("flatten", c.order_id), ("flatten", e.order_id)]
    timed_out = next(o for o in outputs if type(o) is SagaCompleted and o.correlation_id == c.correlation)
    assert timed_out.timestamp == c.start + timedelta(seconds=10.003)  # its deadline, whatever noticed it


def bar_of_ticks(minute: int, groups: Sequence[str] = FEATURE_GROUPS) -> list[FeaturesCalculated]:
    """:func:`test_validator.bar`'s features as the pipeline derives them from the tick that
    closed the bar (the signal's correlationId): microstructure from the tick itself, the other
    groups from the bar."""
    tick = test_validator.signal(bar=minute).correlation_id
    closed = uuid.uuid5(tick, "bar")
    return [msgspec.structs.replace(f, correlation_id=tick,
                                    causation_id=tick if f.group == "market-microstructure" else closed)
            for f in test_validator.bar(minute) if f.group in groups]


def test_a_signal_waits_for_its_bars_features_and_is_judged_without_them_once_they_are_overdue():
    """Bars built from ticks, one per cycle, the signal in any order with its features; bar 3
    loses its microstructure group and bar 4 all its features: their signals wait, then are
    judged at the next cycle, as if handled when they came."""
    arrived = {3: ("feature-engineering", "technical-analysis"), 4: ()}
    cycles = [[*bar_of_ticks(minute, arrived.get(minute, FEATURE_GROUPS)), test_validator.signal(bar=minute)]
              for minute in range(7)]
    outputs = assert_arrival_order_changes_nothing(lambda: PatternValidator(test_validator.PINNED), cycles,
                                                   restarts=True)
    signals = [cycle[-1] for cycle in cycles]
    assert [v.signal_id for v in outputs] == [s.event_id for s in signals]
    assert all(v.timestamp == s.timestamp for v, s in zip(outputs, signals))
    details = [{v.rule: v.detail for v in verdict.verdicts} for verdict in outputs]
    assert details[3]["spread_ceiling"] == "not checked: no spread for this bar"
    assert details[4]["volatility_regime"] == "ATR unknown (no features for bar 2014-05-06T10:04:00+00:00)"
    assert [type(v) for v in outputs].count(SignalValidated) == 6


def test_a_bar_read_from_a_file_has_no_microstructure_to_wait_for():
    """A bar file: the feature services' events have the bar itself as their root."""
    cycles = [[*[f for f in test_validator.bar(minute) if f.group != "market-microstructure"],
               test_validator.signal(bar=minute)] for minute in range(4)]
    outputs = assert_arrival_order_changes_nothing(lambda: PatternValidator(test_validator.PINNED), cycles)
    assert [type(v) for v in outputs] == [SignalValidated] * 4


def test_a_signal_that_arrives_before_its_tick_is_priced_on_it_even_across_a_restart():
    """Two symbols' ticks in one market-data stream, a validated signal of one at each minute."""
    up = test_trading_engine.Upstream()
    cycles = [[up.tick(0.8500, 0.8502, test_trading_engine.T0, symbol="NZDUSD"),
               up.tick(1.1000, 1.1002, test_trading_engine.T0)]]  # quotes before any signal
    for minute in range(1, 8):
        start = test_trading_engine.T0 + timedelta(minutes=minute)
        mid = 1.1000 + 0.0004 * (minute % 3)
        ticks = [up.tick(0.8500, 0.8502, start - timedelta(seconds=30), symbol="NZDUSD"),
                 up.tick(mid - 0.0003, mid - 0.0001, start - timedelta(seconds=20)),
                 up.tick(mid, mid + 0.0002, start)]  # the first of the minute: it closes the bar
        cycles.append([*ticks, up.signal("BUY" if minute % 2 else "SELL", ticks[-1])])

    def engine() -> TradingEngine:
        return TradingEngine(test_trading_engine.SETTINGS)

    outputs = assert_arrival_order_changes_nothing(engine, cycles, restarts=True)
    placed = [o for o in outputs if o.type == "OrderPlaced" and o.reason == "signal"]
    assert [p.price for p in placed] == [c[-2].data.ask if c[-1].direction == "BUY" else c[-2].data.bid
                                         for c in cycles[1:]]
    # a checkpoint while a signal waits for its tick: the restored engine prices it the same
    first = engine()
    events = [e for cycle in cycles for e in backwards(cycle)]
    cut = next(i for i, e in enumerate(events) if type(e) is SignalValidated and i > 10) + 1  # a later minute's
    before = replay(first, events[:cut])
    assert first.waiting
    restored = engine()
    restored.restore(msgspec.json.decode(msgspec.json.encode(first.snapshot())))
    assert before + replay(restored, events[cut:]) == outputs


def test_partial_ensemble_groups_combine_the_same_in_any_order():
    """Three models per bar, one cycle a bar; one model misses bar 3 (the deadline closes
    its group at the next cycle, whichever prediction comes first) and two miss bar 6."""
    cycles = []
    for bar in range(10):
        producers = [p for p in test_ensemble.PRODUCERS
                     if not (bar == 3 and p == "ml-lstm" or bar == 6 and p != "ml-xgboost")]
        cycles.append([test_ensemble.prediction(p, ("BUY", "SELL", "HOLD")[(bar + i) % 3], 0.5 + 0.1 * i, bar=bar,
                                                price=1.38 + 0.0002 * (bar % 4))
                       for i, p in enumerate(producers)])
    outputs = assert_arrival_order_changes_nothing(test_ensemble.coordinator, cycles, restarts=True)
    assert [o.missing_models for o in outputs] == [[]] * 3 + [["ml-lstm"]] + [[]] * 2 + [
        ["ml-lightgbm", "ml-lstm"]] + [[]] * 3


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm", "lstm"])
def test_partial_joins_predict_the_same_in_any_order(kind, trained, feature_events):
    """The real 1m feature groups of one bar per cycle, every seventh bar losing its
    technical-analysis group: its join closes at the next cycle's first event, whichever."""
    bars = [list(events) for _, events in groupby(feature_events[:3 * 150], key=lambda e: e.correlation_id)]
    cycles = [[f for f in bar if not (i % 7 == 3 and f.group == "technical-analysis")] for i, bar in enumerate(bars)]

    def model() -> ModelService:
        return next(s for s in model_services(Settings(), trained.registry) if getattr(s, "kind", None) == kind)

    outputs = assert_arrival_order_changes_nothing(model, cycles, restarts=True)
    partial = [o for o in outputs if o.type == "PredictionGenerated" and o.fallback]
    assert len(outputs) == len(bars) and len(partial) >= len(bars) // 7


def test_every_service_reading_several_topics_or_producers_is_covered(make_services):
    """The pipeline's services with several input topics, or several producers on their one
    topic, are those above, and the notifier (it emits no events, only messages, whose
    interleaving across its two topics follows arrival)."""
    services = make_services()
    close(services)
    several = {s.name for s in services if len(s.inputs) > 1 or s.inputs[0] in SHARED_TOPICS}
    assert several == {*ORDER_AFFECTING, ANALYTICS, "notifier"}
