"""Trade saga (R3.4): the trading workflow of one bar, from its features to its fill, keyed by
correlationId, with a timeout per step and compensations run in reverse order.

The bar's feature-engineering FeaturesCalculated of the models' timeframe starts a saga (every
bar has that group, built from ticks or read from a bar file; the other groups start nothing,
so the saga's start does not depend on which group arrives first); then, on the
:mod:`tradepipe.runtime.saga` engine:

1. ``signal``: TradingSignalGenerated of that timeframe; timeout ``signal_timeout_s``.
2. ``validation``: SignalValidated; SignalRejected ends it REJECTED (reason: the failing
   rules); timeout ``validation_timeout_s``.
3. ``order``: the OrderPlaced that opens the position (``reason == "signal"``), whose orderId
   the saga keeps; an OrderRejected here is a risk refusal before any order was placed:
   REJECTED; timeout ``order_timeout_s``. Compensation: cancel the order.
4. ``fill``: OrderExecuted of that order -> COMPLETED; OrderRejected of that order (the broker
   refused it after placement) -> FAILED; timeout ``fill_timeout_s`` -> TIMED_OUT. It is the
   last step, so nothing after it can fail and ask for its undoing; a fill that arrives after
   the saga gave up is flattened by the late handler below.

Only events of the saga's correlationId count, and order steps only count the saga's own
order: exits (including the close of a reversal placed while handling this bar's signal)
carry the correlationId of the position they close, and an order step also checks
``reason == "signal"`` and the orderId, so none of them moves the saga.

Each end emits, in this order, the compensation TradingCommands (topic system-events, last
completed step first) and one SagaCompleted (the completed steps, the failed one, the reason,
the compensations as text such as ``"cancel ord-..."``, the orderId), both with the saga's
correlationId and, as causationId, the event that ended it (for a timeout, the last event the
saga accepted). A fill of the saga's opening order arriving after the saga ended without
completing (it had timed out or failed and compensated) is flattened: a TradingCommand
``flatten`` with reason ``"late fill after saga timed out"``.

Timeouts are in event time (``ctx.now()``): checked on every event handled and in
``on_timer`` (live), so a backtest's sagas end at the same events on every replay.

Arrival order (a bus). The four input topics are consumed independently, so a step's event
can come before the previous step's (an OrderPlaced before its SignalValidated) or before the
features that start the saga. Such an event is held and applied once its step is current
(:meth:`~tradepipe.runtime.saga.SagaEngine.deliver`), and what it causes is emitted as if it
had been handled then: ids derived from that event, at its time. A timeout's events do not
depend on which event noticed it either: they are stamped with the step's deadline and their
ids derive from the saga's correlationId; sagas timing out together end in deadline order.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from tradepipe.config import SagaSettings
from tradepipe.events import Event
from tradepipe.events.types import (
    FEATURES,
    ORDERS,
    SIGNALS,
    VALIDATED,
    FeaturesCalculated,
    OrderExecuted,
    OrderPlaced,
    OrderRejected,
    SagaCompleted,
    SignalRejected,
    SignalValidated,
    TradingCommand,
    TradingSignalGenerated,
)
from tradepipe.runtime.saga import (
    DONE_MEMORY, LateCommand, Outcome, Result, SagaDefinition, SagaEnded, SagaEngine, Step,
)
from tradepipe.runtime.service import Context, Service

ENDED_AS = {"COMPLETED": "completed", "TIMED_OUT": "timed out", "FAILED": "failed", "REJECTED": "was rejected"}
START_GROUP = "feature-engineering"  # the feature group whose event starts a bar's saga


class TradeState(msgspec.Struct, frozen=True, kw_only=True):
    """What one trade saga remembers: its symbol, and its order once placed."""

    symbol: str = ""
    order_id: str = ""


class OrderCommand(msgspec.Struct, frozen=True):
    """A compensation: cancel the saga's order, or flatten the position it opened."""

    command: Literal["cancel", "flatten"]
    order_id: str

    def __str__(self) -> str:
        return f"{self.command} {self.order_id}"


def trade_saga_definition(settings: SagaSettings, timeframe: str) -> SagaDefinition[TradeState, OrderCommand]:
    def of_timeframe(state: TradeState, event: Event) -> bool:
        return event.timeframe == timeframe

    def own_order(state: TradeState, event: Event) -> bool:
        return event.order_id == state.order_id

    return SagaDefinition("trade", (
        Step(name="signal", completes=(TradingSignalGenerated,), concerns=of_timeframe,
             timeout=timedelta(seconds=settings.signal_timeout_s)),
        Step(name="validation", completes=(SignalValidated,), fails=(SignalRejected,), rejects=True,
             fail_reason=_failing_rules, concerns=of_timeframe,
             timeout=timedelta(seconds=settings.validation_timeout_s)),
        Step(name="order", completes=(OrderPlaced,), fails=(OrderRejected,), rejects=True,
             fail_reason=_refusal, concerns=_opening_order, record=_keep_order,
             compensation=_cancel, timeout=timedelta(seconds=settings.order_timeout_s)),
        Step(name="fill", completes=(OrderExecuted,), fails=(OrderRejected,),
             fail_reason=_broker_rejection, concerns=own_order, late=_late_fill,
             timeout=timedelta(seconds=settings.fill_timeout_s)),
    ), TradeState)


def _failing_rules(event: SignalRejected) -> str:
    failing = [v.rule for v in event.verdicts if not v.passed]
    if failing:
        return "failed rules: " + ", ".join(failing)
    return f"{event.direction} signal rejected" + (": nothing to trade" if event.direction == "HOLD" else "")


def _opening_order(state: TradeState, event: OrderPlaced | OrderRejected) -> bool:
    # a risk refusal has no OrderPlaced to compare with: any refusal of the correlation counts
    return type(event) is OrderRejected or event.reason == "signal"


def _keep_order(state: TradeState, event: OrderPlaced) -> TradeState:
    return msgspec.structs.replace(state, order_id=event.order_id)


def _refusal(event: OrderRejected) -> str:
    return f"order refused: {event.reason}"


def _broker_rejection(event: OrderRejected) -> str:
    return f"order {event.order_id} rejected after placement: {event.reason}"


def _cancel(state: TradeState) -> OrderCommand:
    return OrderCommand("cancel", state.order_id)


def _late_fill(state: TradeState, outcome: Outcome, event: Event) -> OrderCommand | None:
    """A fill of the saga's opening order after it ended: the position must not stay. A saga
    that ended before its order step only knows the order as the one opening a position."""
    if type(event) is not OrderExecuted:
        return None
    own = event.order_id == state.order_id if state.order_id else event.position_id == event.order_id
    return OrderCommand("flatten", event.order_id) if own else None


class TradeSaga(Service):
    name = "trade-saga"
    port = None
    inputs = (FEATURES, SIGNALS, VALIDATED, ORDERS)

    def __init__(self, settings: SagaSettings | None = None, *, timeframe: str = "1m",
                 done_memory: int = DONE_MEMORY) -> None:
        self.timeframe = timeframe
        self.sagas: SagaEngine[uuid.UUID, TradeState, OrderCommand] = SagaEngine(
            trade_saga_definition(settings or SagaSettings(), timeframe), done_memory=done_memory)
        self._moves_sagas = self.sagas.definition.event_types
        # counters (not state)
        self.outcomes: Counter[str] = Counter()
        self.late_commands = 0

    def handle(self, event: Event, ctx: Context) -> list[Event]:
        now = ctx.now()
        sagas = self.sagas
        out = self._expire(now, ctx) if sagas.running or sagas.held else []
        kind = type(event)
        key = event.correlation_id or event.event_id
        if kind is FeaturesCalculated:
            if (event.group != START_GROUP or event.timeframe != self.timeframe
                    or not sagas.start(key, TradeState(symbol=event.symbol or ""), now, event.event_id)):
                return out
            results = sagas.catch_up(key)  # steps whose events came before the features
        elif kind in self._moves_sagas:
            results = sagas.deliver(key, event, now)
        else:
            return out
        for cause, result in results:
            ctx.begin(cause)  # as if ``cause`` were being handled: its ids, its time
            out.extend(self._outcome(result, ctx))
        return out

    def on_timer(self, ctx: Context) -> list[Event]:
        return self._expire(ctx.now(), ctx)

    def _expire(self, now: datetime, ctx: Context) -> list[Event]:
        out: list[Event] = []
        for ended in self.sagas.expire(now):
            ctx.begin(None, key=b"saga-timeout|" + ended.key.bytes)
            out += self._report(ended, ctx)
            for cause, result in self.sagas.catch_up(ended.key):  # its held events, now late
                ctx.begin(cause)
                out += self._outcome(result, ctx)
        return out

    def _outcome(self, result: Result, ctx: Context) -> list[Event]:
        if isinstance(result, SagaEnded):
            return self._report(result, ctx)
        if isinstance(result, LateCommand):
            self.late_commands += 1
            return [ctx.emit(TradingCommand, command=result.command.command, order_id=result.command.order_id,
                             reason=f"late {result.step} after saga {ENDED_AS[result.outcome]}",
                             correlation_id=result.key)]
        return []  # a step completed: nothing to report yet

    def _report(self, ended: SagaEnded[uuid.UUID, TradeState, OrderCommand], ctx: Context) -> list[Event]:
        """The compensation commands, then the SagaCompleted (a timeout's at its deadline)."""
        self.outcomes[ended.outcome] += 1
        envelope = {"correlation_id": ended.key, "causation_id": ended.cause, "symbol": ended.state.symbol or None,
                    "timestamp": ended.deadline}
        why = f"saga compensation: {ended.failed_step} {ENDED_AS[ended.outcome]} ({ended.reason})"
        out: list[Event] = [
            ctx.emit(TradingCommand, command=c.command.command, order_id=c.command.order_id, reason=why, **envelope)
            for c in ended.compensations
        ]
        out.append(ctx.emit(
            SagaCompleted, outcome=ended.outcome, steps=list(ended.steps), failed_step=ended.failed_step,
            reason=ended.reason, compensations=[str(c.command) for c in ended.compensations],
            order_id=ended.state.order_id, **envelope))
        return out

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, list]:
        return self.sagas.snapshot()

    def restore(self, state: dict[str, list]) -> None:
        self.sagas.restore(state)


__all__ = ["OrderCommand", "TradeSaga", "TradeState", "trade_saga_definition"]
