"""Trade saga (R3.4): one saga per bar's correlationId, from its features to its fill, with a
timeout per step in event time and compensations (cancel, flatten) in reverse order."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from tradepipe.config import SagaSettings, Settings
from tradepipe.events import ORDERS, SYSTEM
from tradepipe.events.types import (
    FeaturesCalculated,
    OrderExecuted,
    OrderPlaced,
    OrderRejected,
    PositionClosed,
    RuleVerdict,
    SagaCompleted,
    SignalRejected,
    SignalValidated,
    TradingCommand,
    TradingSignalGenerated,
)
from tradepipe.pipeline import model_services
from tradepipe.runtime.service import Context
from tradepipe.services.trade_saga import TradeSaga

from .conftest import run

T0 = datetime(2014, 5, 6, 10, 1, tzinfo=timezone.utc)  # the tick closing the 10:00 bar
SETTINGS = SagaSettings(signal_timeout_s=15, validation_timeout_s=4, order_timeout_s=3, fill_timeout_s=10)
GROUPS = ("feature-engineering", "technical-analysis", "market-microstructure")
ALL_STEPS = ["signal", "validation", "order", "fill"]


class Bar:
    """The events of one bar's trading workflow, as their services emit them: every one with
    the correlationId of the tick that closed the bar, ``at`` seconds after that tick."""

    def __init__(self, minute: int = 0, symbol: str = "EURUSD") -> None:
        self.symbol = symbol
        self.start = T0 + timedelta(minutes=minute)
        self.correlation = uuid.uuid5(uuid.NAMESPACE_OID, f"{symbol}|{minute}")
        self.order_id = f"ord-{symbol}-{minute}"

    def emit(self, cls, producer: str, at: float, **fields):
        ctx = Context(producer)
        ctx.begin(None, key=f"{self.correlation}|{producer}|{cls.__name__}|{at}|{sorted(fields.items())}".encode())
        ctx.clock.advance(self.start + timedelta(seconds=at))
        return ctx.emit(cls, symbol=self.symbol, correlation_id=self.correlation, **fields)

    def features(self, at: float = 0.0, timeframe: str = "1m") -> list[FeaturesCalculated]:
        return [self.emit(FeaturesCalculated, group, at, timeframe=timeframe, group=group, features={"close": 1.38},
                          bar_time=self.start - timedelta(minutes=1)) for group in GROUPS]

    def signal(self, at: float = 0.0, direction: str = "BUY", timeframe: str = "1m") -> TradingSignalGenerated:
        return self.emit(TradingSignalGenerated, "ensemble-coordinator", at, direction=direction, confidence=0.6,
                         timeframe=timeframe)

    def validated(self, at: float = 0.0) -> SignalValidated:
        return self.emit(SignalValidated, "pattern-validator", at, signal_id=self.correlation, direction="BUY",
                         confidence=0.6, timeframe="1m", verdicts=[RuleVerdict(rule="confidence_floor", passed=True)])

    def rejected(self, at: float = 0.0, failing: tuple[str, ...] = ("confidence_floor", "spread_ceiling"),
                 direction: str = "BUY") -> SignalRejected:
        verdicts = [RuleVerdict(rule=r, passed=False, detail="too low") for r in failing]
        return self.emit(SignalRejected, "pattern-validator", at, signal_id=self.correlation, direction=direction,
                         confidence=0.6, timeframe="1m", verdicts=[RuleVerdict(rule="trading_hours", passed=True),
                                                                   *verdicts])

    def placed(self, at: float = 0.0, order_id: str | None = None, reason: str = "signal",
               position_id: str | None = None) -> OrderPlaced:
        order_id = order_id or self.order_id
        return self.emit(OrderPlaced, "trading-engine", at, order_id=order_id, side="BUY", volume=10_000.0,
                         reason=reason, position_id=position_id or order_id)

    def executed(self, at: float = 0.0, order_id: str | None = None, position_id: str | None = None) -> OrderExecuted:
        order_id = order_id or self.order_id
        return self.emit(OrderExecuted, "trading-engine", at, order_id=order_id, side="BUY", volume=10_000.0,
                         price=1.3801, position_id=position_id or order_id)

    def order_rejected(self, at: float = 0.0, reason: str = "risk: daily loss limit reached",
                       order_id: str | None = None) -> OrderRejected:
        return self.emit(OrderRejected, "trading-engine", at, order_id=order_id or self.order_id, reason=reason)

    def happy_path(self) -> list:
        return [*self.features(), self.signal(0.001), self.validated(0.002), self.placed(0.003), self.executed(0.004)]


def saga(**settings) -> TradeSaga:
    return TradeSaga(SETTINGS.model_copy(update=settings))


def completions(outputs) -> list[SagaCompleted]:
    return [e for e in outputs if type(e) is SagaCompleted]


def summary(event: SagaCompleted) -> tuple:
    return (event.outcome, event.steps, event.failed_step, event.reason, event.compensations, event.order_id)


def test_a_filled_order_completes_the_saga_with_one_saga_completed_and_no_command():
    trade = saga()
    bar = Bar()
    events = bar.happy_path()
    [done] = run([trade], [*events, *Bar().features(0.005, timeframe="5m")])
    assert summary(done) == ("COMPLETED", ALL_STEPS, "", "", [], bar.order_id)
    fill = events[-1]
    assert (done.correlation_id, done.causation_id, done.symbol, done.timestamp) == (
        bar.correlation, fill.event_id, "EURUSD", fill.timestamp)
    assert done.topic == ORDERS and done.metadata.producer == "trade-saga"
    assert trade.outcomes == {"COMPLETED": 1} and trade.sagas.running == {}


def test_three_feature_groups_start_one_saga_and_features_of_another_timeframe_none():
    trade = saga()
    bar = Bar()
    assert run([trade], bar.features()) == []
    assert list(trade.sagas.running) == [bar.correlation] and trade.sagas.current_step(bar.correlation) == "signal"
    other = Bar(0, "NZDUSD")
    assert run([trade], [*other.features(timeframe="5m"), other.signal(timeframe="5m"), other.signal()]) == []
    assert list(trade.sagas.running) == [bar.correlation]  # events of a saga never started change nothing
    assert run([trade], [bar.signal(timeframe="5m")]) == [] and trade.sagas.current_step(bar.correlation) == "signal"


def test_a_rejected_signal_ends_it_rejected_with_the_failing_rules():
    trade = saga()
    bar = Bar()
    rejection = bar.rejected(0.002)
    [done] = run([trade], [*bar.features(), bar.signal(0.001), rejection])
    assert summary(done) == ("REJECTED", ["signal"], "validation", "failed rules: confidence_floor, spread_ceiling",
                             [], "")
    assert done.causation_id == rejection.event_id
    hold = Bar(1)
    [done] = run([trade], [*hold.features(), hold.signal(0.001, "HOLD"), hold.rejected(0.002, (), "HOLD")])
    assert done.reason == "HOLD signal rejected: nothing to trade"
    assert trade.outcomes == {"REJECTED": 2}


def test_a_risk_refusal_before_any_order_ends_it_rejected_without_compensation():
    trade = saga()
    bar = Bar()
    outputs = run([trade], [*bar.features(), bar.signal(0.001), bar.validated(0.002), bar.order_rejected(0.003)])
    assert [type(e) for e in outputs] == [SagaCompleted]
    assert summary(outputs[0]) == ("REJECTED", ["signal", "validation"], "order", "order refused: risk: daily loss limit reached",
                                   [], "")


def test_a_broker_rejection_after_placement_fails_it_and_cancels_the_order_first():
    trade = saga()
    bar = Bar()
    rejection = bar.order_rejected(0.004, reason="broker: no liquidity")
    command, done = run([trade], [*bar.features(), bar.signal(0.001), bar.validated(0.002), bar.placed(0.003),
                                  rejection])
    assert summary(done) == ("FAILED", ["signal", "validation", "order"], "fill",
                             f"order {bar.order_id} rejected after placement: broker: no liquidity", [f"cancel {bar.order_id}"], bar.order_id)
    assert type(command) is TradingCommand and command.topic == SYSTEM
    assert (command.command, command.order_id, command.reason) == (
        "cancel", bar.order_id, f"saga compensation: fill failed (order {bar.order_id} rejected after placement: broker: no liquidity)")
    assert command.correlation_id == done.correlation_id == bar.correlation
    assert command.causation_id == done.causation_id == rejection.event_id
    assert trade.outcomes == {"FAILED": 1}


def steps_before(bar: Bar, k: int) -> list:
    """``bar``'s events completing its first ``k`` steps, the last at 2 s."""
    return bar.features() + [bar.signal(2), bar.validated(2), bar.placed(2)][:k] if k else bar.features()


@pytest.mark.parametrize("k, timeout, waited_for", [
    (0, 15, "TradingSignalGenerated"), (1, 4, "SignalValidated"), (2, 3, "OrderPlaced"), (3, 10, "OrderExecuted")])
def test_a_timeout_at_each_step_in_event_time(k, timeout, waited_for):
    trade = saga()
    bar = Bar()
    became_current = 2.0 if k else 0.0
    assert run([trade], steps_before(bar, k)) == []
    other = Bar(0, "NZDUSD")  # another saga's events move the clock
    assert run([trade], [other.emit(PositionClosed, "trading-engine", became_current + timeout - 0.01,
                                    position_id="p", side="BUY", volume=1.0, entry_price=1.0, exit_price=1.0, pnl=0.0)]) == []
    ticking = other.features(became_current + timeout)
    outputs = run([trade], ticking)
    *commands, done = outputs
    steps = ALL_STEPS[:k]
    cancels = [f"cancel {bar.order_id}"] if k == 3 else []
    assert summary(done) == ("TIMED_OUT", steps, ALL_STEPS[k], f"no {waited_for} within {timeout}s", cancels,
                             bar.order_id if k == 3 else "")
    assert [(c.command, c.order_id, c.reason) for c in commands] == [
        ("cancel", bar.order_id, "saga compensation: fill timed out (no OrderExecuted within 10s)")] * len(cancels)
    # decided at the event that moved the clock past the deadline, reported under the saga's ids
    last_accepted = steps_before(bar, k)[-1] if k else bar.features()[0]
    for event in outputs:
        assert event.timestamp == ticking[0].timestamp and event.correlation_id == bar.correlation
        assert event.causation_id == last_accepted.event_id and event.symbol == "EURUSD"
    assert trade.outcomes == {"TIMED_OUT": 1} and list(trade.sagas.running) == [other.correlation]


def test_time_is_the_events_not_the_wall_clock():
    trade = saga()
    bar = Bar()  # in 2014: years before the wall clock
    run([trade], bar.features())
    idle = Context("trade-saga")
    idle.clock.advance(bar.start + timedelta(seconds=14.99))
    assert trade.on_timer(idle) == [] and trade.sagas.current_step(bar.correlation) == "signal"
    idle.clock.advance(bar.start + timedelta(seconds=15))
    [done] = trade.on_timer(idle)
    assert done.outcome == "TIMED_OUT" and done.failed_step == "signal" and done.correlation_id == bar.correlation


def test_a_late_fill_after_the_saga_timed_out_is_flattened():
    trade = saga()
    bar = Bar()
    run([trade], steps_before(bar, 3))
    cancel, done = run([trade], Bar(0, "NZDUSD").features(12))
    assert cancel.command == "cancel" and done.outcome == "TIMED_OUT"
    fill = bar.executed(12.5)
    [flatten] = run([trade], [fill])
    assert (type(flatten), flatten.command, flatten.order_id, flatten.reason) == (
        TradingCommand, "flatten", bar.order_id, "late fill after saga timed out")
    assert (flatten.correlation_id, flatten.causation_id) == (bar.correlation, fill.event_id)
    assert trade.late_commands == 1 and trade.outcomes == {"TIMED_OUT": 1}
    assert run([trade], [bar.order_rejected(13)]) == []  # not a fill: nothing more to undo


def test_a_late_opening_fill_is_flattened_even_if_the_saga_timed_out_before_its_order():
    trade = saga()
    bar = Bar()
    run([trade], steps_before(bar, 2))  # validated at 2 s; no order within 3 s
    [done] = run([trade], Bar(0, "NZDUSD").features(5))
    assert (done.outcome, done.failed_step, done.compensations) == ("TIMED_OUT", "order", [])
    close = bar.executed(6, order_id="ord-close", position_id="ord-old")  # a reversal close: not the saga's
    assert run([trade], [bar.placed(6), close]) == []
    [flatten] = run([trade], [bar.executed(6)])
    assert (flatten.command, flatten.order_id, flatten.reason) == ("flatten", bar.order_id, "late fill after saga timed out")


def test_a_completed_saga_ignores_repeated_events():
    trade = saga()
    bar = Bar()
    events = bar.happy_path()
    run([trade], events)
    assert run([trade], [*events, bar.executed(1)]) == []
    assert trade.outcomes == {"COMPLETED": 1} and trade.late_commands == 0


def test_a_reversal_close_sharing_the_correlation_is_not_the_sagas_order():
    trade = saga()
    bar = Bar()
    reversal = [bar.placed(0.003, order_id="ord-close", reason="reversal", position_id="ord-old"),
                bar.executed(0.003, order_id="ord-close", position_id="ord-old")]
    assert run([trade], [*bar.features(), bar.signal(0.001), bar.validated(0.002), *reversal]) == []
    assert trade.sagas.current_step(bar.correlation) == "order"
    assert run([trade], [bar.placed(0.004), *reversal]) == []  # the close's fill does not fill the saga's order
    assert trade.sagas.current_step(bar.correlation) == "fill"
    [done] = run([trade], [bar.executed(0.005)])
    assert summary(done) == ("COMPLETED", ALL_STEPS, "", "", [], bar.order_id)


def test_an_exit_of_an_older_position_and_other_correlations_do_not_interfere():
    trade = saga()
    old, eur, nzd = Bar(0), Bar(5), Bar(5, "NZDUSD")
    run([trade], old.happy_path())
    # the old position's stop-loss exit carries its opening correlation; it is placed while eur and nzd run
    exit_order = [old.placed(300.001, order_id="ord-exit", reason="stop-loss", position_id=old.order_id),
                  old.executed(300.001, order_id="ord-exit", position_id=old.order_id)]
    stream = [*eur.features(), *nzd.features(), eur.signal(0.001), *exit_order, nzd.signal(0.001),
              nzd.validated(0.002), eur.validated(0.002), nzd.placed(0.003), eur.placed(0.003),
              eur.executed(0.004, order_id=nzd.order_id), eur.order_rejected(0.004, order_id=nzd.order_id)]
    assert run([trade], stream) == []  # nzd's order id under eur's correlation is neither's event
    assert {trade.sagas.current_step(b.correlation) for b in (eur, nzd)} == {"fill"}
    nzd_done, eur_done = completions(run([trade], [nzd.executed(0.005), eur.executed(0.006)]))
    assert (nzd_done.correlation_id, nzd_done.order_id, nzd_done.symbol) == (nzd.correlation, nzd.order_id, "NZDUSD")
    assert (eur_done.correlation_id, eur_done.order_id, eur_done.symbol) == (eur.correlation, eur.order_id, "EURUSD")
    assert trade.outcomes == {"COMPLETED": 3}


def stream() -> list:
    """Six bars one minute apart, each ending its own way, and a late fill."""
    bars = [Bar(i) for i in range(6)]
    a, b, c, d, e, f = bars
    return [
        *a.happy_path(),
        *b.features(), b.signal(0.001), b.rejected(0.002),
        *c.features(), c.signal(0.001), c.validated(0.002), c.placed(0.003),  # no fill: times out at d
        *d.features(), d.signal(0.001), d.validated(0.002),
        # --- a snapshot here: d waits for its order, c ended (its fill comes late)
        c.executed(61), d.order_rejected(0.003),
        *e.features(), e.signal(0.001), e.validated(0.002), e.placed(0.003), e.order_rejected(0.004),
        *f.features(),  # never signalled: times out once the clock passes 15 s
        Bar(6, "NZDUSD").features(16)[0],
    ]


def test_a_restart_mid_stream_continues_exactly_as_an_uninterrupted_run():
    events = stream()
    cut = events.index(next(e for e in events if type(e) is OrderExecuted and e.timestamp > T0 + timedelta(minutes=3)))
    uninterrupted = saga()
    expected = run([uninterrupted], events)
    assert [e.outcome for e in completions(expected)] == [
        "COMPLETED", "REJECTED", "TIMED_OUT", "REJECTED", "FAILED", "TIMED_OUT"]
    assert [(e.command, e.reason) for e in expected if type(e) is TradingCommand] == [
        ("cancel", "saga compensation: fill timed out (no OrderExecuted within 10s)"),
        ("flatten", "late fill after saga timed out"),
        ("cancel", "saga compensation: fill failed (order ord-EURUSD-4 rejected after placement: "
                   "risk: daily loss limit reached)")]
    before = saga()
    first = run([before], events[:cut])
    state = msgspec.json.decode(msgspec.json.encode(before.snapshot()))
    after = saga()
    after.restore(state)
    assert first + run([after], events[cut:]) == expected
    assert after.snapshot() == uninterrupted.snapshot()


def test_real_features_and_models_start_one_saga_per_bar_and_every_bar_gets_its_signal(feature_events, trained):
    """The real feature and model stages (no validator yet): every 1m bar's saga completes
    its signal step and then waits for a verdict that never comes."""
    events = feature_events[:3 * 120]
    services = [*model_services(Settings(), trained.registry), TradeSaga()]
    outputs = run(services, events)
    signals = [e for e in outputs if type(e) is TradingSignalGenerated]
    done = completions(outputs)
    bars = {e.correlation_id for e in events}
    assert len(bars) == 120 and len(signals) == 120
    assert len(done) + len(services[-1].sagas.running) == 120  # one saga per bar
    assert {(d.outcome, tuple(d.steps), d.failed_step, d.reason) for d in done} == {
        ("TIMED_OUT", ("signal",), "validation", "no SignalValidated within 5s")}
    assert {d.correlation_id for d in done} < {s.correlation_id for s in signals}
