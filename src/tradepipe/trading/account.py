"""Positions and the account they belong to (R7.2).

A :class:`Position` is identified by the id of the order that opened it (``position_id``);
several positions may be open on one symbol, all on the same side (an opposite signal closes
them first). The :class:`Account` keeps:

* realized PnL, cash-like: a commission is booked when it is paid (the opening leg's at the
  fill), a position's price PnL when it closes, so realized PnL is "after commissions";
* unrealized PnL, marked at the last bid for longs and the last ask for shorts (what closing
  would get before slippage);
* equity = initial equity + realized + unrealized, its peak and the drawdown from the peak;
* gross exposure = sum of |units| x mark price over open positions;
* the equity at the start of the current UTC day, for the daily loss limit: the day is rolled
  (``roll_day``) before the first change of equity of a new day, so the start is the equity at
  midnight;
* per symbol with open positions, its :class:`QuietBand`: the quotes and times at which none
  of them can exit. Most ticks of a backtest fall inside it, so the trading engine only marks
  them to market instead of asking every position for its exit (see ``Position.exit_reason``,
  which the band mirrors; positions' stops, targets and deadlines never change, so the band is
  rebuilt only when a position opens or goes).

**One currency.** Prices and PnL are in each symbol's quote currency and the account adds
them up as if they were one. That is right for the XXXUSD pairs shipped (EURUSD, NZDUSD: PnL
in USD); a USDJPY or cross position would need converting to the account currency first.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, time, timedelta, timezone
from typing import Any, NamedTuple

import msgspec

from tradepipe.events.types import Side

UTC = timezone.utc
ONE_DAY = timedelta(days=1)
#: before any event: the first roll_day always starts a day
BEFORE_ANY_DAY = datetime.min.replace(tzinfo=UTC)
#: the deadline of positions without a horizon
NEVER = datetime.max.replace(tzinfo=UTC)


class Position(msgspec.Struct, kw_only=True):
    """An open position. Mutable only in ``units`` and ``commission`` (a partial close
    reduces both pro rata)."""

    position_id: str  # the opening order's id
    symbol: str
    side: Side  # BUY = long, SELL = short
    units: float
    entry_price: float
    opened_at: datetime
    stop_loss: float | None = None
    take_profit: float | None = None
    exit_at: datetime | None = None  # horizon deadline
    correlation_id: uuid.UUID | None = None  # the opening signal's
    commission: float = 0.0  # opening commission paid for the units still open

    def price_pnl(self, exit_price: float, units: float) -> float:
        """PnL of closing ``units`` at ``exit_price``, before commissions."""
        move = exit_price - self.entry_price
        return (move if self.side == "BUY" else -move) * units

    def exit_reason(self, bid: float, ask: float, now: datetime) -> str | None:
        """Which exit this quote triggers, checked in the order stop-loss, take-profit,
        horizon; None if none. A long exits at the bid, a short at the ask."""
        stop, target = self.stop_loss, self.take_profit
        if self.side == "BUY":
            if stop is not None and bid <= stop:
                return "stop-loss"
            if target is not None and bid >= target:
                return "take-profit"
        else:
            if stop is not None and ask >= stop:
                return "stop-loss"
            if target is not None and ask <= target:
                return "take-profit"
        if self.exit_at is not None and now >= self.exit_at:
            return "horizon"
        return None


class QuietBand(NamedTuple):
    """Where no open position of a symbol exits: a quote with ``bid_above < bid < bid_below``,
    ``ask_above < ask < ask_below`` at a time before ``until`` triggers none of their exits.
    Bounds without a position to set them are infinite. A NaN anywhere makes a comparison
    false, which only sends the tick to the exact per-position check."""

    bid_above: float  # the highest stop of the longs (a long exits at bid <= stop)
    bid_below: float  # the lowest target of the longs (bid >= target)
    ask_above: float  # the highest target of the shorts (ask <= target)
    ask_below: float  # the lowest stop of the shorts (ask >= stop)
    until: datetime  # the earliest horizon deadline (now >= exit_at)

    @classmethod
    def of(cls, positions: list[Position]) -> QuietBand:
        longs = [p for p in positions if p.side == "BUY"]
        shorts = [p for p in positions if p.side != "BUY"]  # exit_reason's "else"
        return cls(
            bid_above=max((p.stop_loss for p in longs if p.stop_loss is not None), default=-math.inf),
            bid_below=min((p.take_profit for p in longs if p.take_profit is not None), default=math.inf),
            ask_above=max((p.take_profit for p in shorts if p.take_profit is not None), default=-math.inf),
            ask_below=min((p.stop_loss for p in shorts if p.stop_loss is not None), default=math.inf),
            until=min((p.exit_at for p in positions if p.exit_at is not None), default=NEVER),
        )


class Account:
    """Equity, PnL, exposure and drawdown over the open positions."""

    def __init__(self, initial_equity: float) -> None:
        self.initial_equity = initial_equity
        self.realized_pnl = 0.0
        self.positions: dict[str, Position] = {}  # position_id -> position, in opening order
        self.by_symbol: dict[str, list[Position]] = {}  # only symbols with open positions
        self.quiet: dict[str, QuietBand] = {}  # the same symbols: where none of their positions exits
        self.bids: dict[str, float] = {}  # last marks
        self.asks: dict[str, float] = {}
        self.unrealized: dict[str, float] = {}  # symbol -> unrealized PnL at the last mark
        self.peak_equity = initial_equity
        self.day_start_equity = initial_equity
        self.next_day = BEFORE_ANY_DAY  # when the current UTC day ends

    # -- equity ---------------------------------------------------------------------------
    @property
    def unrealized_pnl(self) -> float:
        return sum(self.unrealized.values())

    @property
    def equity(self) -> float:
        return self.initial_equity + self.realized_pnl + sum(self.unrealized.values())

    @property
    def drawdown(self) -> float:
        """Fraction of the peak equity lost since the peak."""
        return (self.peak_equity - self.equity) / self.peak_equity

    def reset_peak(self) -> None:
        """Take the current equity as the peak (trading resumed after a halt)."""
        self.peak_equity = self.equity

    def roll_day(self, now: datetime) -> None:
        """If ``now`` is in a later UTC day than the last roll, the day starts with the
        current equity. Call before changing equity (a mark, a fill)."""
        if now >= self.next_day:
            self.day_start_equity = self.equity
            self.next_day = datetime.combine(now.astimezone(UTC).date(), time(), UTC) + ONE_DAY

    def mark(self, symbol: str, bid: float, ask: float) -> float:
        """Mark ``symbol``'s positions at this quote; raise the peak if equity is above it.
        Returns the equity."""
        self.bids[symbol] = bid
        self.asks[symbol] = ask
        unrealized = 0.0
        for p in self.by_symbol.get(symbol, ()):
            unrealized += (bid - p.entry_price) * p.units if p.side == "BUY" else (p.entry_price - ask) * p.units
        self.unrealized[symbol] = unrealized
        # ``equity`` written out: this runs on every tick of a symbol with a position
        equity = self.initial_equity + self.realized_pnl + sum(self.unrealized.values())
        if equity > self.peak_equity:
            self.peak_equity = equity
        return equity

    # -- exposure -------------------------------------------------------------------------
    def open_units(self, symbol: str, side: Side) -> float:
        return sum(p.units for p in self.by_symbol.get(symbol, ()) if p.side == side)

    def exposure(self, symbol: str | None = None, side: Side | None = None) -> float:
        """Sum of |units| x mark price of the open positions (of ``symbol`` / ``side`` if given)."""
        total = 0.0
        for p in self.positions.values():
            if (symbol is None or p.symbol == symbol) and (side is None or p.side == side):
                marks = self.bids if p.side == "BUY" else self.asks
                total += p.units * marks.get(p.symbol, p.entry_price)
        return total

    # -- trades ---------------------------------------------------------------------------
    def open(self, position: Position) -> None:
        """Book a filled opening order (its commission is paid now)."""
        self.positions[position.position_id] = position
        self._add_to_symbol(position)
        self.realized_pnl -= position.commission

    def _add_to_symbol(self, position: Position) -> None:
        same_symbol = self.by_symbol.setdefault(position.symbol, [])
        same_symbol.append(position)
        self.quiet[position.symbol] = QuietBand.of(same_symbol)

    def close(self, position_id: str, units: float, price: float, commission: float) -> float:
        """Book the close of ``units`` of a position at ``price`` paying ``commission``; the
        position is removed once nothing is left. Returns the closed part's PnL after both
        legs' commissions (its share of the opening one, and this one)."""
        p = self.positions[position_id]
        units = min(units, p.units)
        share = units / p.units
        opening_commission = p.commission * share
        price_pnl = p.price_pnl(price, units)
        self.realized_pnl += price_pnl - commission
        p.units -= units
        p.commission -= opening_commission
        if p.units <= 0:
            del self.positions[position_id]
            same_symbol = self.by_symbol[p.symbol]
            same_symbol.remove(p)
            if same_symbol:
                self.quiet[p.symbol] = QuietBand.of(same_symbol)
            else:
                del self.by_symbol[p.symbol], self.quiet[p.symbol]
        if p.symbol in self.bids:
            self.mark(p.symbol, self.bids[p.symbol], self.asks[p.symbol])
        return price_pnl - opening_commission - commission

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "initial_equity": self.initial_equity,
            "realized_pnl": self.realized_pnl,
            "positions": msgspec.to_builtins(list(self.positions.values())),
            "bids": dict(self.bids),
            "asks": dict(self.asks),
            "unrealized": dict(self.unrealized),
            "peak_equity": self.peak_equity,
            "day_start_equity": self.day_start_equity,
            "next_day": self.next_day.isoformat(),
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> Account:
        account = cls(state["initial_equity"])
        account.realized_pnl = state["realized_pnl"]
        for p in msgspec.convert(state["positions"], list[Position]):
            account.positions[p.position_id] = p
            account._add_to_symbol(p)
        account.bids = dict(state["bids"])
        account.asks = dict(state["asks"])
        account.unrealized = dict(state["unrealized"])
        account.peak_equity = state["peak_equity"]
        account.day_start_equity = state["day_start_equity"]
        account.next_day = datetime.fromisoformat(state["next_day"])
        return account


__all__ = ["Account", "Position", "QuietBand"]
