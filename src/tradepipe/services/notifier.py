"""Notifier (port 8016): the events worth telling a trader, as one-line messages.

Two parts with one job each:

- :class:`MessageFormatter` turns an event into a :class:`Notification` (message, severity) or
  None: OrderExecuted ("EURUSD BUY 12,000 @ 1.37412 (order ord-1, signal)"), PositionClosed
  (with its PnL and reason), OrderRejected, OrderCancelled, TradingStateChanged, AlertRaised,
  AlertResolved, CircuitBreakerStateChanged, and SagaCompleted when the workflow FAILED or
  TIMED_OUT. Order events after the placement name only the order, so it remembers the side,
  volume and reason of the last ``PLACED_MEMORY`` OrderPlaced events to say what the order was.
- sinks (:class:`NotificationSink`: ``send(message, severity)``) deliver the text:
  :class:`LogSink` writes it to the ``tradepipe.notifier`` logger at the severity's level;
  :class:`tradepipe.ops.telegram.TelegramSink` sends it to Telegram chats (the Bot API).

:class:`Notifier` is the service joining them. It emits no events. A sink that raises does not
stop the service or the other sinks: the failure is counted (``failed``) and logged, and the
next message goes out as usual; ``sent`` counts the messages a sink accepted.

Severities are those of AlertRaised: "info", "warning", "critical". Prices are written with
the FX quote convention: 5 decimals, 3 from 100 up (JPY pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from tradepipe.events import ORDERS, SYSTEM, Event
from tradepipe.events.types import (
    AlertRaised, AlertResolved, CircuitBreakerStateChanged, OrderCancelled, OrderExecuted, OrderPlaced, OrderRejected,
    PositionClosed, SagaCompleted, TradingStateChanged,
)
from tradepipe.runtime.service import Context, Service

LOGGER_NAME = "tradepipe.notifier"
PLACED_MEMORY = 1024  # placed orders remembered to describe their fill, rejection or cancellation
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}

_log = logging.getLogger(LOGGER_NAME)


class Notification(NamedTuple):
    message: str
    severity: str  # info | warning | critical


class NotificationSink(Protocol):
    def send(self, message: str, severity: str) -> None: ...


class LogSink:
    """Messages to Python logging: logger ``tradepipe.notifier``, level by severity."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or _log

    def send(self, message: str, severity: str) -> None:
        self.logger.log(LEVELS.get(severity, logging.WARNING), message)


def price_text(price: float) -> str:
    return f"{price:.5f}" if price < 100 else f"{price:.3f}"


def volume_text(volume: float) -> str:
    return f"{volume:,.0f}"


def _figures(*figures: tuple[str, float | None]) -> str:
    """The known figures as a parenthesised suffix, e.g. ``" (value 0.06, threshold 0.05)"``;
    empty when none is known."""
    known = [template.format(value) for template, value in figures if value is not None]
    return f" ({', '.join(known)})" if known else ""


def _who(event: Event) -> str:
    """The symbol as a message prefix ("EURUSD "), or nothing for an event without one."""
    return f"{event.symbol} " if event.symbol else ""


class _Placed(NamedTuple):
    side: str
    volume: float
    reason: str


class MessageFormatter:
    """Events -> one-line notifications (None: not worth telling)."""

    def __init__(self) -> None:
        #: order id -> what was placed, oldest first (dicts keep insertion order)
        self.placed: dict[str, _Placed] = {}
        self._formats: dict[type, Callable[[Any], Notification | None]] = {
            OrderPlaced: self._placed,
            OrderExecuted: self._executed,
            PositionClosed: self._closed,
            OrderRejected: self._rejected,
            OrderCancelled: self._cancelled,
            TradingStateChanged: self._trading_state,
            AlertRaised: self._alert,
            AlertResolved: self._alert_resolved,
            CircuitBreakerStateChanged: self._breaker,
            SagaCompleted: self._saga,
        }

    def format(self, event: Event) -> Notification | None:
        formats = self._formats.get(type(event))
        return formats(event) if formats is not None else None

    def _order(self, event: OrderRejected | OrderCancelled) -> str:
        """ "EURUSD BUY 12,000 order ord-1" with what was placed, if it is remembered."""
        placed = self.placed.pop(event.order_id, None)
        what = f"{placed.side} {volume_text(placed.volume)} " if placed is not None else ""
        return f"{_who(event)}{what}order {event.order_id}"

    def _placed(self, event: OrderPlaced) -> None:
        self.placed[event.order_id] = _Placed(event.side, event.volume, event.reason)
        if len(self.placed) > PLACED_MEMORY:
            del self.placed[next(iter(self.placed))]
        return None  # the fill (or refusal) is what a trader hears about

    def _executed(self, event: OrderExecuted) -> Notification:
        placed = self.placed.pop(event.order_id, None)
        why = f", {placed.reason}" if placed is not None else ""
        return Notification(
            f"{_who(event)}{event.side} {volume_text(event.volume)} @ {price_text(event.price)} "
            f"(order {event.order_id}{why})", "info")

    def _closed(self, event: PositionClosed) -> Notification:
        why = f" ({event.reason})" if event.reason else ""
        return Notification(
            f"{_who(event)}{event.side} {volume_text(event.volume)} closed {price_text(event.entry_price)} -> "
            f"{price_text(event.exit_price)}, PnL {event.pnl:+,.2f}{why} (position {event.position_id})", "info")

    def _rejected(self, event: OrderRejected) -> Notification:
        return Notification(f"{self._order(event)} rejected: {event.reason}", "warning")

    def _cancelled(self, event: OrderCancelled) -> Notification:
        why = f": {event.reason}" if event.reason else ""
        return Notification(f"{self._order(event)} cancelled{why}", "info")

    @staticmethod
    def _trading_state(event: TradingStateChanged) -> Notification:
        why = f": {event.reason}" if event.reason else ""
        numbers = _figures(("drawdown {:.2%}", event.drawdown), ("equity {:,.2f}", event.equity))
        return Notification(f"Trading {event.state}{why}{numbers}",
                            "critical" if event.state == "HALTED" else "info")

    @staticmethod
    def _alert(event: AlertRaised) -> Notification:
        numbers = _figures(("value {:g}", event.value), ("threshold {:g}", event.threshold))
        return Notification(f"{_who(event)}Alert {event.rule}: {event.message}{numbers}", event.severity)

    @staticmethod
    def _alert_resolved(event: AlertResolved) -> Notification:
        what = f" ({event.subject})" if event.subject else ""
        why = f": {event.message}" if event.message else ""
        return Notification(f"{_who(event)}Resolved {event.rule}{what}{why}", "info")

    @staticmethod
    def _breaker(event: CircuitBreakerStateChanged) -> Notification:
        after = f" after {event.failures} failures" if event.failures else ""
        why = f": {event.reason}" if event.reason else ""
        return Notification(f"Circuit breaker {event.breaker} {event.from_state} -> {event.to_state}{after}{why}",
                            "warning" if event.to_state == "OPEN" else "info")

    @staticmethod
    def _saga(event: SagaCompleted) -> Notification | None:
        if event.outcome not in ("FAILED", "TIMED_OUT"):
            return None
        parts = [f"{_who(event)}trade workflow {event.outcome}"]
        if event.failed_step:
            parts.append(f" at {event.failed_step}")
        if event.reason:
            parts.append(f": {event.reason}")
        if event.order_id:
            parts.append(f" (order {event.order_id})")
        if event.compensations:
            parts.append(f"; compensations: {', '.join(event.compensations)}")
        return Notification("".join(parts), "critical" if event.outcome == "FAILED" else "warning")


class Notifier(Service):
    name = "notifier"
    port = 8016
    inputs = (ORDERS, SYSTEM)

    def __init__(self, sinks: Sequence[NotificationSink] | None = None) -> None:
        self.sinks: tuple[NotificationSink, ...] = tuple(sinks) if sinks is not None else (LogSink(),)
        self.formatter = MessageFormatter()
        # counters (not state)
        self.sent = 0
        self.failed = 0

    def handle(self, event: Event, ctx: Context) -> Iterable[Event]:
        notification = self.formatter.format(event)
        if notification is not None:
            self.notify(*notification)
        return ()

    def notify(self, message: str, severity: str) -> None:
        """Hand ``message`` to every sink; a sink that raises is counted and logged."""
        for sink in self.sinks:
            try:
                sink.send(message, severity)
            except Exception as exc:  # a sink's outage must not stop the others or the service
                self.failed += 1
                _log.warning("notification sink %s failed: %s: %s", type(sink).__name__, type(exc).__name__, exc)
            else:
                self.sent += 1

    def snapshot(self) -> dict[str, Any]:
        """The remembered placed orders, to describe their later events after a restart."""
        return {"placed": [[order_id, *placed] for order_id, placed in self.formatter.placed.items()]}

    def restore(self, state: dict[str, Any]) -> None:
        self.formatter.placed = {order_id: _Placed(side, volume, reason)
                                 for order_id, side, volume, reason in state["placed"]}


__all__ = ["LogSink", "MessageFormatter", "Notification", "NotificationSink", "Notifier", "price_text", "volume_text"]
