"""Notifier: one line per event worth telling a trader, handed to every sink; a failing sink
is counted and does not stop the others."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from tradepipe.events.types import (
    AlertRaised, BarClosed, CircuitBreakerStateChanged, ConfigurationUpdated, OHLC, OrderCancelled, OrderExecuted,
    OrderPlaced, OrderRejected, PositionClosed, SagaCompleted, TradingStateChanged,
)
from tradepipe.runtime.service import Context
from tradepipe.services.notifier import LogSink, Notifier, price_text

from .conftest import run

T0 = datetime(2014, 5, 6, 10, 0, tzinfo=timezone.utc)


def event(cls, symbol: str | None = "EURUSD", **fields):
    ctx = Context("trading-engine")
    ctx.begin(None, key=repr(sorted(fields.items())).encode())
    ctx.clock.advance(T0)
    return ctx.emit(cls, symbol=symbol, **fields)


class Collected:
    """A sink keeping what it was sent."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def send(self, message: str, severity: str) -> None:
        self.messages.append((message, severity))


class Broken:
    def send(self, message: str, severity: str) -> None:
        raise ConnectionError("api.telegram.org unreachable")


def notified(*events) -> list[tuple[str, str]]:
    sink = Collected()
    notifier = Notifier([sink])
    assert run([notifier], list(events)) == []  # it emits nothing
    assert notifier.sent == len(sink.messages) and notifier.failed == 0
    return sink.messages


PLACED = dict(order_id="ord-1", side="BUY", volume=12_000.0, price=1.3741, reason="signal")


def test_a_fill_names_the_symbol_side_volume_price_order_and_why_it_was_placed():
    assert notified(event(OrderPlaced, **PLACED),
                    event(OrderExecuted, order_id="ord-1", side="BUY", volume=12_000.0, price=1.37412)) == [
        ("EURUSD BUY 12,000 @ 1.37412 (order ord-1, signal)", "info")]
    stop = dict(PLACED, order_id="ord-2", side="SELL", reason="stop-loss")
    assert notified(event(OrderPlaced, **stop),
                    event(OrderExecuted, order_id="ord-2", side="SELL", volume=12_000.0, price=1.369)) == [
        ("EURUSD SELL 12,000 @ 1.36900 (order ord-2, stop-loss)", "info")]
    # a fill whose placement was not seen (e.g. before a start) is still told
    assert notified(event(OrderExecuted, symbol="USDJPY", order_id="ord-3", side="SELL", volume=1_500_000.0,
                          price=101.8236)) == [("USDJPY SELL 1,500,000 @ 101.824 (order ord-3)", "info")]


def test_a_closed_position_with_its_pnl_and_reason():
    closed = event(PositionClosed, position_id="ord-1", order_id="ord-9", side="BUY", volume=12_000.0,
                   entry_price=1.37412, exit_price=1.37312, pnl=-12.72, reason="stop-loss")
    assert notified(closed) == [
        ("EURUSD BUY 12,000 closed 1.37412 -> 1.37312, PnL -12.72 (stop-loss) (position ord-1)", "info")]
    won = event(PositionClosed, position_id="ord-4", side="SELL", volume=1_000_000.0, entry_price=0.86,
                exit_price=0.85, pnl=10_000.0)
    assert notified(won) == [("EURUSD SELL 1,000,000 closed 0.86000 -> 0.85000, PnL +10,000.00 (position ord-4)",
                              "info")]


def test_rejected_and_cancelled_orders_say_what_the_order_was():
    assert notified(event(OrderPlaced, **PLACED), event(OrderRejected, order_id="ord-1", reason="max gross exposure")) == [
        ("EURUSD BUY 12,000 order ord-1 rejected: max gross exposure", "warning")]
    assert notified(event(OrderCancelled, order_id="ord-5", reason="compensation")) == [
        ("EURUSD order ord-5 cancelled: compensation", "info")]
    assert notified(event(OrderCancelled, order_id="ord-5")) == [("EURUSD order ord-5 cancelled", "info")]


def test_trading_state_changes():
    halted = event(TradingStateChanged, symbol=None, state="HALTED", reason="kill switch: drawdown over 5.00%",
                   equity=94_812.5, drawdown=0.0519)
    resumed = event(TradingStateChanged, symbol=None, state="ACTIVE", reason="operator resume")
    assert notified(halted, resumed) == [
        ("Trading HALTED: kill switch: drawdown over 5.00% (drawdown 5.19%, equity 94,812.50)", "critical"),
        ("Trading ACTIVE: operator resume", "info")]


def test_alerts_keep_their_severity_and_figures():
    alert = event(AlertRaised, rule="daily_loss", severity="critical", message="daily loss limit reached",
                  value=0.021, threshold=0.02)
    config = event(AlertRaised, symbol=None, rule="configuration", severity="warning",
                   message="configuration update refused: validator.max_spread_bps: must be > 0")
    assert notified(alert, config) == [
        ("EURUSD Alert daily_loss: daily loss limit reached (value 0.021, threshold 0.02)", "critical"),
        ("Alert configuration: configuration update refused: validator.max_spread_bps: must be > 0", "warning")]


def test_circuit_breaker_transitions():
    opened = event(CircuitBreakerStateChanged, symbol=None, breaker="ml-xgboost", from_state="CLOSED",
                   to_state="OPEN", failures=5, reason="RuntimeError: boom")
    probing = event(CircuitBreakerStateChanged, symbol=None, breaker="ml-xgboost", from_state="OPEN",
                    to_state="HALF_OPEN")
    assert notified(opened, probing) == [
        ("Circuit breaker ml-xgboost CLOSED -> OPEN after 5 failures: RuntimeError: boom", "warning"),
        ("Circuit breaker ml-xgboost OPEN -> HALF_OPEN", "info")]


def test_only_failed_or_timed_out_workflows_are_told():
    failed = event(SagaCompleted, outcome="FAILED", steps=["signal", "validation", "order"], failed_step="fill",
                   reason="broker error", compensations=["cancel", "flatten"], order_id="ord-7")
    timed_out = event(SagaCompleted, outcome="TIMED_OUT", steps=["signal"], failed_step="validation")
    quiet = [event(SagaCompleted, outcome=o, order_id="ord-8") for o in ("COMPLETED", "REJECTED")]
    assert notified(failed, timed_out, *quiet) == [
        ("EURUSD trade workflow FAILED at fill: broker error (order ord-7); compensations: cancel, flatten",
         "critical"),
        ("EURUSD trade workflow TIMED_OUT at validation", "warning")]


def test_other_events_are_ignored():
    bar = event(BarClosed, timeframe="1m", bar_time=T0, bid=OHLC(open=1, high=1, low=1, close=1),
                ask=OHLC(open=1, high=1, low=1, close=1), mid=OHLC(open=1, high=1, low=1, close=1), tick_count=1,
                spread_mean=0.0, spread_max=0.0)
    assert notified(bar, event(ConfigurationUpdated, changes={"validator.min_confidence": 0.3}),
                    event(OrderPlaced, **PLACED)) == []


def test_the_log_sink_logs_at_the_severitys_level(caplog):
    notifier = Notifier()  # the log sink by default
    caplog.set_level(logging.INFO, logger="tradepipe.notifier")
    for e in (event(OrderCancelled, order_id="ord-5"), event(OrderRejected, order_id="ord-6", reason="no margin"),
              event(TradingStateChanged, symbol=None, state="HALTED")):
        ctx = Context(notifier.name)
        ctx.begin(e)
        notifier.handle(e, ctx)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("tradepipe.notifier", logging.INFO, "EURUSD order ord-5 cancelled"),
        ("tradepipe.notifier", logging.WARNING, "EURUSD order ord-6 rejected: no margin"),
        ("tradepipe.notifier", logging.CRITICAL, "Trading HALTED")]
    assert notifier.sent == 3


def test_a_failing_sink_is_counted_and_the_other_sinks_still_get_every_message(caplog):
    collected = Collected()
    notifier = Notifier([Broken(), collected, LogSink()])
    caplog.set_level(logging.INFO, logger="tradepipe.notifier")
    events = [event(OrderCancelled, order_id=f"ord-{i}") for i in range(3)]
    assert run([notifier], events) == []
    assert [m for m, _ in collected.messages] == [f"EURUSD order ord-{i} cancelled" for i in range(3)]
    assert (notifier.failed, notifier.sent) == (3, 6)
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in failures] == [
        "notification sink Broken failed: ConnectionError: api.telegram.org unreachable"] * 3


def test_placed_orders_survive_a_restart_and_their_memory_is_bounded():
    notifier = Notifier([Collected()])
    run([notifier], [event(OrderPlaced, **dict(PLACED, order_id=f"ord-{i}")) for i in range(1030)])
    assert len(notifier.formatter.placed) == 1024 and "ord-5" not in notifier.formatter.placed
    sink = Collected()
    restarted = Notifier([sink])
    restarted.restore(notifier.snapshot())
    run([restarted], [event(OrderExecuted, order_id="ord-1029", side="BUY", volume=12_000.0, price=1.37412)])
    assert sink.messages == [("EURUSD BUY 12,000 @ 1.37412 (order ord-1029, signal)", "info")]
    assert "ord-1029" not in restarted.formatter.placed  # a filled order is forgotten


@pytest.mark.parametrize("price, text", [(1.37412, "1.37412"), (0.8, "0.80000"), (101.82349, "101.823")])
def test_prices_follow_the_fx_quote_convention(price, text):
    assert price_text(price) == text
