"""API command handler (port 8020, R8.2): APIRequestReceived -> the domain event it asks for,
and always an APIResponseReady with the same requestId and correlationId.

The gateway publishes every state-changing request on ``api-requests``; this service
validates the body with the command's model (:data:`tradepipe.api.commands.COMMANDS`), then:

- ``config``: the changes must be ``section.field`` keys of the sections that services apply
  live (:data:`LIVE_SECTIONS`) and valid against those sections (as the services will apply
  them: all or nothing; the trading settings an account cannot change while running are
  refused) -> ConfigurationUpdated;
- ``orders``: TradingCommand ``order`` with an order id derived from the request, which the
  response names, so the requester can follow the order at ``/api/v1/orders/{id}``;
- ``trading/halt``, ``trading/resume``: TradingCommand ``halt`` / ``resume``;
- ``replay``: ReplayRequested for the read side (see :mod:`tradepipe.api.server`).

A request it cannot serve is answered, never dropped: 404 for an unknown command, 422 with the
problems for a bad body (the same shape as the gateway's own 422). Success is 200: the command
is published (for an order, the engine decides its fate: follow ``orderUrl``). The answer
says what was published, with the events' ids. It runs inside ``tradepipe api`` and on its own as
``tradepipe service api-commands``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from tradepipe.api.commands import COMMANDS, CommandBody, command_of, command_path
from tradepipe.config import ConfigError, Settings, apply_changes
from tradepipe.events import API_REQUESTS, Event
from tradepipe.events.types import APIRequestReceived, APIResponseReady, ConfigurationUpdated, ReplayRequested, TradingCommand
from tradepipe.runtime.service import Context, Service
from tradepipe.services.trading_engine import NOT_LIVE, order_id_for

#: settings sections whose ConfigurationUpdated keys a service applies while running
LIVE_SECTIONS = ("validator", "trading")

Outcome = tuple[int, Any, list[Event]]  # HTTP status, response body, events to publish


class ApiCommandHandler(Service):
    name = "api-commands"
    port = 8020
    inputs = (API_REQUESTS,)
    accepts = (APIRequestReceived,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.answered: dict[int, int] = {}  # HTTP status -> responses
        self._commands: dict[str, Callable[[Any, APIRequestReceived, Context], Outcome]] = {
            "config": self._configure,
            "orders": self._order,
            "trading/halt": self._trading_state,
            "trading/resume": self._trading_state,
            "replay": self._replay,
        }

    def handle(self, event: Event, ctx: Context) -> Iterable[Event]:
        if type(event) is not APIRequestReceived:
            return ()
        command = command_of(event.method, event.path)
        if command is None:
            status, body, out = 404, {"detail": f"no command {event.method} {event.path}; commands: POST "
                                                f"{', '.join(command_path(c) for c in COMMANDS)}"}, []
        else:
            try:
                parsed = COMMANDS[command].model_validate(event.body if event.body is not None else {})
            except ValidationError as exc:
                status, body, out = 422, {"detail": exc.errors(include_url=False, include_context=False)}, []
            else:
                status, body, out = self._commands[command](parsed, event, ctx)
        self.answered[status] = self.answered.get(status, 0) + 1
        published = [{"type": e.type, "eventId": str(e.event_id)} for e in out]
        if published:
            body = {**body, "published": published}
        return [*out, ctx.emit(APIResponseReady, request_id=event.request_id, status=status, body=body)]

    def _configure(self, change: CommandBody, request: APIRequestReceived, ctx: Context) -> Outcome:
        problems = self.configuration_problems(change.changes)
        if problems:
            return 422, {"detail": "configuration update refused: " + "; ".join(problems)}, []
        return 200, {"command": "config", "changes": change.changes}, [
            ctx.emit(ConfigurationUpdated, changes=change.changes)]

    def configuration_problems(self, changes: dict[str, Any]) -> list[str]:
        """Why ``changes`` cannot be applied live (empty when they can), one reason per key or
        section, checked against this process's settings."""
        problems = []
        for key in changes:
            section, _, field = key.partition(".")
            if section not in LIVE_SECTIONS or not field:
                problems.append(f"{key}: not a live setting (keys are section.field, section one of "
                                f"{', '.join(LIVE_SECTIONS)})")
            elif key in NOT_LIVE:
                problems.append(f"{key}: cannot change while the account is running; restart with the new setting")
        if problems:
            return problems
        for section in LIVE_SECTIONS:
            try:
                apply_changes(getattr(self.settings, section), section, changes)
            except ConfigError as exc:
                problems.append(str(exc).removeprefix("configuration update refused: "))
        return problems

    def _order(self, order: CommandBody, request: APIRequestReceived, ctx: Context) -> Outcome:
        order_id = order_id_for(b"api", request.request_id.encode())
        command = ctx.emit(TradingCommand, command="order", symbol=order.symbol, side=order.side,
                           volume=order.volume, order_id=order_id, reason=order.reason)
        return 200, {"command": "order", "orderId": order_id, "orderUrl": command_path(f"orders/{order_id}")}, [command]

    def _trading_state(self, body: CommandBody, request: APIRequestReceived, ctx: Context) -> Outcome:
        command = command_of(request.method, request.path).removeprefix("trading/")
        reason = body.reason or f"API request {request.request_id}"
        return 200, {"command": command}, [ctx.emit(TradingCommand, command=command, reason=reason)]

    def _replay(self, replay: CommandBody, request: APIRequestReceived, ctx: Context) -> Outcome:
        return 200, {"command": "replay", "target": replay.target}, [
            ctx.emit(ReplayRequested, target=replay.target, reason=replay.reason)]

    def snapshot(self) -> dict[str, int]:
        return {str(status): count for status, count in self.answered.items()}

    def restore(self, state: dict[str, int]) -> None:
        self.answered = {int(status): count for status, count in state.items()}


__all__ = ["ApiCommandHandler", "LIVE_SECTIONS"]
