"""Trading engine (port 8007, R7.2): validated signals -> orders, positions and exits.

Inputs: validated signals, market data (ticks; bars are ignored), system events (trading
commands, configuration updates).

**Ticks** are the hot path (every tick of a backtest passes here). The engine keeps the tick's
TickData as the symbol's last quote (no copy); when the symbol has no open position that is
all. With open positions it checks each position's exits on this tick (stop-loss, then
take-profit, then the horizon), marks the account and checks the kill switch: a drawdown from
peak equity of ``max_drawdown`` or more halts trading (TradingStateChanged HALTED and a
critical AlertRaised) and, with ``flatten_on_halt``, closes every position ("kill-switch").
Both checks have a cheap first test that decides most ticks alone: a tick inside the symbol's
:class:`~tradepipe.trading.account.QuietBand`, in the current day, triggers no exit and rolls
no day; and equity at or above ``peak x _quiet_ratio`` is too close to the peak for a new
largest drawdown or the kill switch (the ratio carries a 1e-12 margin, far above rounding, so
the test never skips a tick the exact division would have flagged). Any other tick takes the
exact path.

**Signals** (SignalValidated): the order id is ``"ord-"`` + 16 hex digits of a BLAKE2b of the
signal's eventId, so re-handling the signal after a restart gives the same id. The entry is
the last quote's ask (buy) or bid (sell); the stop and target come from the signal (see
:mod:`tradepipe.trading.risk`), the size from the sizing rule, then the risk checks. A refusal
is an OrderRejected ``"risk: ..."`` and nothing else. Otherwise open positions on the other
side of the symbol are closed first ("reversal"), then OrderPlaced, the broker's fill
(OrderExecuted, the position opens) or refusal (OrderRejected ``"broker: ..."``). When the
broker refuses a reversal's close, the entry is refused too ("risk: reversal close refused"):
a symbol never holds both sides. A position exits at its horizon: ``exit_after_bars`` bars of
the signal's timeframe after its fill (the horizon the models' labels look at, counted from
the fill so that an entry on the first tick after a gap is not closed at once).

A signal is priced on the tick that closed its bar: in process it always comes right after
that tick. On a bus the validated-signals topic is consumed apart from market data, so a
signal can arrive first; one whose bar ended after the symbol's last quote waits, and is
handled right after the first tick at or after its bar's end (the tick that closed the bar:
the first of a new bar), under its own ids and time, as in process. (A signal for a symbol
with no quote at all is refused at once, as before: on a bus that can only be the symbol's
first bar, which the volatility rule's ATR warm-up never validates.) Market data is assumed
consumed in the order it was published, across symbols too: the account marks every symbol.

**Exits** are market orders like any other (OrderPlaced, OrderExecuted, then PositionClosed
with the PnL after both legs' commissions) with the correlationId of the signal that opened
the position; their order ids hash the event that caused them with the position id. A close
the broker refuses (market closed, the position already gone) is not re-sent on every tick:
the first refusal raises a critical AlertRaised, and the exit is retried after 1 s, 5 s,
30 s, then every 60 s of event time.

**Commands** (TradingCommand): ``halt`` (no flatten; a halt keeps the first reason, e.g. the
kill switch's), ``resume`` (the peak equity restarts at the current equity, or the kill switch
would trip again at once; a resume while trading is active changes nothing), ``cancel`` (a pending order
at the broker; OrderCancelled only when one was cancelled), ``flatten`` (close the position
an order opened: a saga's compensation) and ``order`` (a manual order of the API gateway: the
signal's path, risk checks and reversal included, with reason "manual", a default stop, no
target and no horizon; a refusal is an OrderRejected "risk: ..."). A command naming no known
order is counted and ignored. **ConfigurationUpdated** ``trading.*`` keys replace the settings, all or nothing; a
bad update, or one of ``initial_equity`` or ``broker`` (which cannot change under a running
account), raises a warning alert and the old settings stay.

**State** (snapshot/restore): the account and its positions, the last quote per symbol, the
halt reason, the counters, the settings as live updates left them (a restarted engine keeps
them: the updates are not replayed from before its checkpoint), the signals waiting for their
tick, and the broker's own state (MT5 position tickets).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from tradepipe.config import ConfigError, TradingSettings, apply_changes
from tradepipe.events import MARKET_DATA, SYSTEM, VALIDATED, Event
from tradepipe.events.types import (
    AlertRaised,
    AlertResolved,
    ConfigurationUpdated,
    MarketDataReceived,
    OrderCancelled,
    OrderExecuted,
    OrderPlaced,
    OrderRejected,
    PositionClosed,
    Side,
    SignalValidated,
    TickData,
    TradingCommand,
    TradingStateChanged,
)
from tradepipe.runtime.service import Context, Service
from tradepipe.sources.files import timeframe_ms
from tradepipe.trading.account import Account, Position
from tradepipe.trading.brokers.base import Broker, BrokerRejection, OrderRequest, Quote
from tradepipe.trading.brokers.paper import PaperBroker
from tradepipe.trading.risk import order_units, profit_target, protective_stop, refusal

NOTHING: tuple[Event, ...] = ()
DEFAULT_TIMEFRAME = "1m"  # of a signal that names none
OPPOSITE: dict[str, Side] = {"BUY": "SELL", "SELL": "BUY"}
COUNTERS = (
    "orders_placed", "fills", "rejected_by_risk", "rejected_by_broker", "positions_closed",
    "orders_cancelled", "unmatched_commands",
)


#: event-time waits before re-sending a close the broker refused (the last one repeats)
CLOSE_RETRY_S = (1, 5, 30, 60)
KILL_SWITCH = "kill switch"  # how a halt by the drawdown limit starts its reason
KILL_SWITCH_RULE = "max_drawdown"  # its alert's rule: raised when it trips, resolved on resume
#: settings a running account cannot take live
NOT_LIVE = ("trading.initial_equity", "trading.broker")


def order_id_for(*causes: bytes) -> str:
    """A deterministic order id from what caused the order."""
    return "ord-" + hashlib.blake2b(b"|".join(causes), digest_size=8).hexdigest()


class TradingEngine(Service):
    name = "trading-engine"
    port = 8007
    inputs = (VALIDATED, MARKET_DATA, SYSTEM)

    def __init__(self, settings: TradingSettings, broker: Broker | None = None, *,
                 exit_after_bars: int | None = 5) -> None:
        self.settings = settings
        self._paper_from_settings = broker is None
        self.broker = broker or self._paper_broker(settings)
        # the models' horizon: bars to hold unless settings say otherwise; None = no horizon exit
        # (a strategy such as the EMA cross holds until its stop, target or the opposite signal)
        self.horizon_bars = exit_after_bars
        # state (snapshot)
        self.account = Account(settings.initial_equity)
        self.quotes: dict[str, TickData] = {}  # symbol -> last tick
        self.halted: str | None = None  # why trading is halted, None when ACTIVE
        self.flattening = False  # the kill switch tripped with flatten_on_halt: close what is still open
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.max_drawdown_seen = 0.0
        # position id -> (no exit order before this time, closes refused so far)
        self.close_retry: dict[str, tuple[datetime, int]] = {}
        #: symbol -> validated signals that arrived before the tick closing their bar, in order
        self.waiting: dict[str, list[SignalValidated]] = {}
        self._quiet_ratio = self._ratio_without_alarm()
        self._handlers: dict[type, Callable[[Any, Context], list[Event]]] = {
            SignalValidated: self._on_validated,
            TradingCommand: self._on_command,
            ConfigurationUpdated: self._on_configuration,
        }

    @staticmethod
    def _paper_broker(settings: TradingSettings) -> PaperBroker:
        return PaperBroker(settings.slippage_bps, settings.commission_per_million)

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, event: Event, ctx: Context) -> Iterable[Event]:
        if type(event) is MarketDataReceived:
            if self.waiting:
                return self._tick_releasing(event, ctx)
            tick = event.data
            symbol = event.symbol
            self.quotes[symbol] = tick
            account = self.account
            band = account.quiet.get(symbol)
            if band is None:  # no open position
                return NOTHING
            bid, ask, now = tick.bid, tick.ask, tick.timestamp
            bid_above, bid_below, ask_above, ask_below, until = band
            if not (bid_above < bid < bid_below and ask_above < ask < ask_below and now < until
                    and now < account.next_day) or self.close_retry:
                return self._on_tick_with_positions(event, symbol, tick, ctx)
            equity = account.mark(symbol, bid, ask)
            if equity >= account.peak_equity * self._quiet_ratio:
                return NOTHING
            return self._check_kill_switch(equity, event, ctx) or NOTHING
        handler = self._handlers.get(type(event))
        return handler(event, ctx) if handler is not None else NOTHING

    # -- ticks ----------------------------------------------------------------------------
    def _tick_releasing(self, event: MarketDataReceived, ctx: Context) -> list[Event]:
        """A tick while signals wait: handled as any tick (the ordinary path, with nothing
        waiting for the moment), then the signals of its symbol whose bar it closed."""
        waiting, self.waiting = self.waiting, {}
        try:
            out = list(self.handle(event, ctx))
        finally:
            self.waiting = waiting
        signals = waiting.get(event.symbol)
        if signals:
            now = event.data.timestamp
            ready = [s for s in signals if _bar_end(s) <= now]
            if ready:
                if len(ready) == len(signals):
                    del waiting[event.symbol]
                else:
                    signals[:] = [s for s in signals if s not in ready]
                for signal in ready:
                    ctx.begin(signal)  # as if it were being handled: its ids, its time
                    out += self._on_signal(signal, ctx)
        return out

    def _ratio_without_alarm(self) -> float:
        """The share of peak equity at or above which equity is neither a new largest
        drawdown nor a kill-switch trip (see the module docstring)."""
        return 1.0 - min(self.max_drawdown_seen, self.settings.max_drawdown) + 1e-12

    def _on_tick_with_positions(self, event: Event, symbol: str, tick: TickData,
                                ctx: Context) -> Iterable[Event]:
        account = self.account
        now, bid, ask = tick.timestamp, tick.bid, tick.ask
        if now >= account.next_day:
            account.roll_day(now)
        # a kill switch's flatten the broker refused is retried like any refused exit
        flattening = "kill-switch" if self.flattening else None
        exits = [(p, reason) for p in account.by_symbol[symbol]
                 if (reason := p.exit_reason(bid, ask, now) or flattening) is not None and self._may_close(p, now)]
        out = [e for p, reason in exits for e in self._close(p, reason, event, ctx)] if exits else None
        alarm = self._check_kill_switch(account.mark(symbol, bid, ask), event, ctx)
        if alarm:
            return out + alarm if out else alarm
        return out or NOTHING

    def _may_close(self, position: Position, now: datetime) -> bool:
        """False while a close the broker refused waits for its retry."""
        retry = self.close_retry.get(position.position_id)
        return retry is None or now >= retry[0]

    def _check_kill_switch(self, equity: float, cause: Event, ctx: Context) -> list[Event] | None:
        """Halt (and flatten) when the drawdown of ``equity`` from the peak reaches the limit."""
        account = self.account
        drawdown = (account.peak_equity - equity) / account.peak_equity
        if drawdown > self.max_drawdown_seen:
            self.max_drawdown_seen = drawdown
            self._quiet_ratio = self._ratio_without_alarm()
        limit = self.settings.max_drawdown
        if drawdown < limit or self.halted is not None:
            return None
        self.flattening = self.settings.flatten_on_halt
        self.halted = (f"{KILL_SWITCH}: drawdown {drawdown:.2%} of peak equity {account.peak_equity:,.2f} "
                       f"reached the limit {limit:.2%} (equity {equity:,.2f})")
        out: list[Event] = [
            ctx.emit(TradingStateChanged, state="HALTED", reason=self.halted, equity=equity, drawdown=drawdown),
            ctx.emit(AlertRaised, rule=KILL_SWITCH_RULE, severity="critical", message=self.halted,
                     value=drawdown, threshold=limit),
        ]
        if self.settings.flatten_on_halt:
            for position in list(account.positions.values()):
                out += self._close(position, "kill-switch", cause, ctx)
        return out

    # -- signals --------------------------------------------------------------------------
    def _on_validated(self, signal: SignalValidated, ctx: Context) -> list[Event]:
        tick = self.quotes.get(signal.symbol)
        if tick is not None and signal.bar_time is not None and tick.timestamp < _bar_end(signal):
            self.waiting.setdefault(signal.symbol, []).append(signal)  # its bar's closing tick is still to come
            return []
        return self._on_signal(signal, ctx)

    def _on_signal(self, signal: SignalValidated, ctx: Context) -> list[Event]:
        order_id = order_id_for(signal.event_id.bytes)
        symbol, side = signal.symbol, signal.direction
        if side not in OPPOSITE:
            return self._refuse(ctx, order_id, f"a {side} signal has nothing to trade")
        if not symbol:
            return self._refuse(ctx, order_id, "the signal names no symbol")
        return self._enter(signal, order_id, symbol, side, ctx, stop_loss=signal.stop_loss,
                           target_price=signal.target_price, exit_at=self._exit_at(signal, ctx), reason="signal")

    def _enter(self, cause: Event, order_id: str, symbol: str, side: Side, ctx: Context, *,
               stop_loss: float | None = None, target_price: float | None = None, units: float | None = None,
               exit_at: datetime | None = None, reason: str) -> list[Event]:
        """Open a position on ``symbol`` for ``cause`` (a signal or a manual order): price it
        on the last quote, size it (``units``, or the sizing rule's), run the risk checks,
        close the opposite side (reversal), place and fill the order."""
        tick = self.quotes.get(symbol)
        if tick is None:
            return self._refuse(ctx, order_id, f"no market price for {symbol} yet")
        if not 0 < tick.bid <= tick.ask:
            return self._refuse(ctx, order_id, f"no valid market price for {symbol} (bid {tick.bid}, ask {tick.ask})")
        settings, account = self.settings, self.account
        account.roll_day(ctx.now())
        entry = tick.ask if side == "BUY" else tick.bid
        stop = protective_stop(side, entry, stop_loss, settings.default_stop_bps, settings.min_stop_bps)
        if units is None:
            units = order_units(settings, account.equity, entry, stop)
        why = refusal(settings, account, symbol, side, units, entry, halted=self.halted)
        if why is not None:
            return self._refuse(ctx, order_id, why)

        out: list[Event] = []
        for position in [p for p in account.by_symbol.get(symbol, ()) if p.side != side]:
            out += self._close(position, "reversal", cause, ctx)
        if any(p.side != side for p in account.by_symbol.get(symbol, ())):
            # a close was refused: opening now would hold both sides of the symbol
            return out + self._refuse(ctx, order_id, f"reversal close refused: {symbol} still holds "
                                                     f"{account.open_units(symbol, OPPOSITE[side]):,.0f} units {OPPOSITE[side]}")
        target = profit_target(side, entry, target_price)
        placed = ctx.emit(OrderPlaced, order_id=order_id, side=side, volume=units, price=entry, stop_loss=stop,
                          take_profit=target, broker=self.broker.name, position_id=order_id, reason=reason)
        out.append(placed)
        self.counters["orders_placed"] += 1
        request = OrderRequest(order_id=order_id, symbol=symbol, side=side, units=units, stop_loss=stop,
                               take_profit=target, position_id=order_id)
        result = self.broker.submit(request, Quote(bid=tick.bid, ask=tick.ask, time=tick.timestamp))
        if isinstance(result, BrokerRejection):
            out.append(self._broker_refused(ctx, placed, result))
            return out
        self.counters["fills"] += 1
        account.open(Position(
            position_id=order_id, symbol=symbol, side=side, units=result.units, entry_price=result.price,
            opened_at=ctx.now(), stop_loss=stop, take_profit=target, exit_at=exit_at,
            correlation_id=cause.correlation_id or cause.event_id, commission=result.commission,
        ))
        equity = account.mark(symbol, tick.bid, tick.ask)
        out.append(ctx.emit(OrderExecuted, order_id=order_id, side=side, volume=result.units, price=result.price,
                            commission=result.commission, slippage=result.slippage, position_id=order_id,
                            broker=self.broker.name, causation_id=placed.event_id))
        out += self._check_kill_switch(equity, cause, ctx) or ()
        return out

    def _exit_at(self, signal: SignalValidated, ctx: Context) -> datetime | None:
        """The horizon deadline: ``exit_after_bars`` bars of the signal's timeframe after the
        fill. Normally the fill is on the tick that closed the signal's bar, so this is the
        close the models' label compares with; after a gap (a weekend), counting from the bar
        would close the position on its next tick."""
        bars = self.settings.exit_after_bars or self.horizon_bars
        if bars is None:
            return None
        return ctx.now() + _bar_length(signal) * bars

    def _refuse(self, ctx: Context, order_id: str, reason: str) -> list[Event]:
        self.counters["rejected_by_risk"] += 1
        return [ctx.emit(OrderRejected, order_id=order_id, reason="risk: " + reason)]

    def _broker_refused(self, ctx: Context, placed: OrderPlaced, rejection: BrokerRejection) -> OrderRejected:
        self.counters["rejected_by_broker"] += 1
        return ctx.emit(OrderRejected, order_id=placed.order_id, reason="broker: " + rejection.reason,
                        symbol=placed.symbol, correlation_id=placed.correlation_id, causation_id=placed.event_id)

    # -- closing --------------------------------------------------------------------------
    def _close(self, position: Position, reason: str, cause: Event, ctx: Context) -> list[Event]:
        """Close ``position`` at the last quote of its symbol with a market order."""
        symbol, position_id = position.symbol, position.position_id
        tick = self.quotes[symbol]
        side = OPPOSITE[position.side]
        order_id = order_id_for(cause.event_id.bytes, position_id.encode())
        placed = ctx.emit(OrderPlaced, order_id=order_id, side=side, volume=position.units,
                          price=tick.bid if side == "SELL" else tick.ask, broker=self.broker.name,
                          position_id=position_id, reason=reason, symbol=symbol,
                          correlation_id=position.correlation_id)
        self.counters["orders_placed"] += 1
        request = OrderRequest(order_id=order_id, symbol=symbol, side=side, units=position.units,
                               position_id=position_id, closes=True)
        result = self.broker.submit(request, Quote(bid=tick.bid, ask=tick.ask, time=tick.timestamp))
        if isinstance(result, BrokerRejection):
            return [placed, self._broker_refused(ctx, placed, result), *self._close_refused(position, result, ctx)]
        self.close_retry.pop(position_id, None)
        self.counters["fills"] += 1
        units = min(result.units, position.units)
        executed = ctx.emit(OrderExecuted, order_id=order_id, side=side, volume=units, price=result.price,
                            commission=result.commission, slippage=result.slippage, position_id=position_id,
                            broker=self.broker.name, symbol=symbol, correlation_id=position.correlation_id,
                            causation_id=placed.event_id)
        pnl = self.account.close(position_id, units, result.price, result.commission)
        self.counters["positions_closed"] += 1
        closed = ctx.emit(PositionClosed, position_id=position_id, side=position.side, volume=units,
                          entry_price=position.entry_price, exit_price=result.price, pnl=pnl, reason=reason,
                          order_id=order_id, opened_at=position.opened_at, symbol=symbol,
                          correlation_id=position.correlation_id, causation_id=executed.event_id)
        return [placed, executed, closed]

    def _close_refused(self, position: Position, rejection: BrokerRejection, ctx: Context) -> list[Event]:
        """Wait before trying this close again; tell a human the first time."""
        _, refusals = self.close_retry.get(position.position_id, (None, 0))
        wait = CLOSE_RETRY_S[min(refusals, len(CLOSE_RETRY_S) - 1)]
        self.close_retry[position.position_id] = (ctx.now() + timedelta(seconds=wait), refusals + 1)
        if refusals:
            return []
        return [ctx.emit(AlertRaised, rule="close_refused", severity="critical",
                         message=f"the broker refused to close {position.symbol} position {position.position_id} "
                                 f"({rejection.reason}); retrying after {', '.join(map(str, CLOSE_RETRY_S))} s",
                         symbol=position.symbol, correlation_id=position.correlation_id)]

    # -- commands and configuration -------------------------------------------------------
    def _on_command(self, command: TradingCommand, ctx: Context) -> list[Event]:
        account = self.account
        if command.command == "halt":
            if self.halted is None:  # an earlier halt's reason (the kill switch's) stays
                self.halted = f"manual halt: {command.reason}" if command.reason else "manual halt"
            return [self._state_changed(ctx, "HALTED", self.halted)]
        if command.command == "resume":
            if self.halted is None:  # answered, but the peak stays: the kill switch keeps its distance
                self.counters["unmatched_commands"] += 1
                return [self._state_changed(ctx, "ACTIVE", "resume ignored: trading is not halted")]
            kill_switch = self.halted.startswith(KILL_SWITCH)
            self.halted = None
            self.flattening = False
            account.reset_peak()
            reason = f"manual resume: {command.reason}" if command.reason else "manual resume"
            out = [self._state_changed(ctx, "ACTIVE", reason)]
            if kill_switch:  # its alert has fired until now: the peak moved, the drawdown is 0
                out.append(ctx.emit(AlertResolved, rule=KILL_SWITCH_RULE, message=reason, value=0.0))
            return out
        if command.command == "order":
            return self._on_manual_order(command, ctx)
        if command.command == "cancel":
            if self.broker.cancel(command.order_id):
                self.counters["orders_cancelled"] += 1
                return [ctx.emit(OrderCancelled, order_id=command.order_id, reason=command.reason)]
            self.counters["unmatched_commands"] += 1
            return []
        position = account.positions.get(command.order_id)  # flatten
        if position is None:
            self.counters["unmatched_commands"] += 1
            return []
        account.roll_day(ctx.now())
        return self._close(position, "compensation", command, ctx)

    def _on_manual_order(self, command: TradingCommand, ctx: Context) -> list[Event]:
        """An operator's order (the API gateway's): the same checks as a signal's, a default
        stop, no target and no horizon. Its id is the command's ``order_id`` when it names one
        (the gateway tells the requester that id), else derived from the command."""
        order_id = command.order_id or order_id_for(command.event_id.bytes)
        symbol, side, volume = command.symbol, command.side, command.volume
        if side not in OPPOSITE:
            return self._refuse(ctx, order_id, f"a manual order needs a side, BUY or SELL; got {side!r}")
        if not symbol:
            return self._refuse(ctx, order_id, "the manual order names no symbol")
        if volume is not None and not 0 < volume <= self.settings.max_order_units:
            return self._refuse(ctx, order_id, f"manual order volume {volume:,.0f} is not within (0, "
                                               f"{self.settings.max_order_units:,.0f}] units (trading.max_order_units)")
        return self._enter(command, order_id, symbol, side, ctx, units=volume, reason="manual")

    def _state_changed(self, ctx: Context, state: str, reason: str) -> TradingStateChanged:
        return ctx.emit(TradingStateChanged, state=state, reason=reason, equity=self.account.equity,
                        drawdown=self.account.drawdown)

    def _on_configuration(self, update: ConfigurationUpdated, ctx: Context) -> list[Event]:
        frozen = [key for key in NOT_LIVE if key in update.changes]
        if frozen:
            return [ctx.emit(AlertRaised, rule="configuration", severity="warning",
                             message=f"configuration update refused: {', '.join(frozen)} cannot change while "
                                     "the account is running; restart with the new setting")]
        try:
            settings = apply_changes(self.settings, "trading", update.changes)
        except ConfigError as exc:
            return [ctx.emit(AlertRaised, rule="configuration", severity="warning", message=str(exc))]
        self.settings = settings
        self._quiet_ratio = self._ratio_without_alarm()
        if self._paper_from_settings:
            self.broker = self._paper_broker(settings)
        return []

    # -- state ----------------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """Counters for the run summary."""
        return {**self.counters, "realized_pnl": self.account.realized_pnl,
                "max_drawdown": self.max_drawdown_seen, "equity": self.account.equity}

    def snapshot(self) -> dict[str, Any]:
        return {
            "settings": self.settings.model_dump(mode="json"),
            "account": self.account.snapshot(),
            "quotes": {symbol: msgspec.to_builtins(tick) for symbol, tick in self.quotes.items()},
            "halted": self.halted,
            "flattening": self.flattening,
            "counters": dict(self.counters),
            "max_drawdown_seen": self.max_drawdown_seen,
            "close_retry": {pid: [at.isoformat(), refusals] for pid, (at, refusals) in self.close_retry.items()},
            "waiting": {symbol: msgspec.to_builtins(signals) for symbol, signals in self.waiting.items()},
            "broker": self.broker.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.settings = TradingSettings.model_validate(state["settings"])
        if self._paper_from_settings:
            self.broker = self._paper_broker(self.settings)
        self.account = Account.from_snapshot(state["account"])
        self.quotes = {symbol: msgspec.convert(tick, TickData) for symbol, tick in state["quotes"].items()}
        self.halted = state["halted"]
        self.flattening = state.get("flattening", False)
        self.counters = {**dict.fromkeys(COUNTERS, 0), **state["counters"]}
        self.max_drawdown_seen = state["max_drawdown_seen"]
        self.close_retry = {pid: (datetime.fromisoformat(at), refusals)
                            for pid, (at, refusals) in state.get("close_retry", {}).items()}
        self.waiting = {symbol: msgspec.convert(signals, list[SignalValidated])
                        for symbol, signals in state.get("waiting", {}).items()}
        self._quiet_ratio = self._ratio_without_alarm()
        self.broker.restore(state["broker"])


def _bar_length(signal: SignalValidated) -> timedelta:
    """The length of ``signal``'s bar (its timeframe's; the default for none or a bad one)."""
    try:
        return timedelta(milliseconds=timeframe_ms(signal.timeframe or DEFAULT_TIMEFRAME))
    except ValueError:
        return timedelta(milliseconds=timeframe_ms(DEFAULT_TIMEFRAME))


def _bar_end(signal: SignalValidated) -> datetime:
    """When ``signal``'s bar ended: the tick that closed it is the first at or after this."""
    return signal.bar_time + _bar_length(signal)


__all__ = ["TradingEngine", "order_id_for"]
