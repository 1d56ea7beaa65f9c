"""Position sizing and pre-trade risk checks (R7.2).

Sizing (``TradingSettings.sizing``):

* ``fixed``: ``fixed_units`` per order;
* ``risk``: the units that lose ``risk_per_trade`` of the equity between the entry and the
  stop, ``risk_per_trade x equity / |entry - stop|``.

Both are rounded DOWN to ``lot_step`` (never risk more than asked). The stop is the signal's
when it is on the losing side of the entry, else ``default_stop_bps`` from the entry: a stop
on the wrong side (the entry is the ask/bid now, the signal's stop was set from the bar's mid
close) would close the position on its first tick. A stop closer than ``min_stop_bps`` is moved
out to it: the models' stop is one ATR of 1m bars, often inside the spread, so the bid (for a
long) would already be through it.

The checks, in order, each a refusal reason (a sentence with the numbers) or None: trading
halted; the day's loss limit reached; a size below one lot step; the symbol's position limit;
the gross exposure limit. They look at the account as it will be after the order's reversal
(the opposite positions on the symbol are closed first), so a reversal is not refused for
exposure it is about to remove.
"""

from __future__ import annotations

import math

from tradepipe.config import TradingSettings
from tradepipe.events.types import Side
from tradepipe.trading.account import Account

#: absorbs float error in a division that should land exactly on a lot boundary
_ROUNDING_SLACK = 1e-9


def protective_stop(side: Side, entry: float, stop_loss: float | None, default_stop_bps: float,
                    min_stop_bps: float = 0.0) -> float:
    """The signal's stop if it is on the losing side of ``entry``, moved out to ``min_stop_bps``
    from it if closer; else ``default_stop_bps`` away."""
    if stop_loss is not None and (stop_loss < entry if side == "BUY" else stop_loss > entry):
        if abs(entry - stop_loss) >= entry * min_stop_bps / 1e4:
            return stop_loss
        distance = entry * min_stop_bps / 1e4
    else:
        distance = entry * default_stop_bps / 1e4
    return entry - distance if side == "BUY" else entry + distance


def profit_target(side: Side, entry: float, target_price: float | None) -> float | None:
    """The signal's target if it is on the winning side of ``entry``, else no target."""
    if target_price is not None and (target_price > entry if side == "BUY" else target_price < entry):
        return target_price
    return None


def order_units(settings: TradingSettings, equity: float, entry: float, stop: float) -> float:
    """Units to order, at most ``max_order_units``, rounded down to ``lot_step`` (0 when less
    than one step)."""
    if settings.sizing == "fixed":
        wanted = settings.fixed_units
    else:
        wanted = settings.risk_per_trade * max(equity, 0.0) / abs(entry - stop)
    wanted = min(wanted, settings.max_order_units)
    step = settings.lot_step
    return math.floor(wanted / step + _ROUNDING_SLACK) * step


def refusal(
    settings: TradingSettings, account: Account, symbol: str, side: Side, units: float, price: float,
    *, halted: str | None = None,
) -> str | None:
    """Why an order of ``units`` of ``symbol`` at ``price`` must not be placed, or None.
    ``halted`` is the reason trading is halted, if it is."""
    if halted is not None:
        return f"trading halted ({halted})"
    equity, day_start = account.equity, account.day_start_equity
    floor = day_start * (1.0 - settings.max_daily_loss)
    if equity <= floor:
        return (f"daily loss limit reached: equity {equity:,.2f} is at or below {floor:,.2f} "
                f"({settings.max_daily_loss:.2%} under the day's start {day_start:,.2f})")
    if units < settings.lot_step:
        return f"order size {units:,.0f} units on {symbol} is below one lot step of {settings.lot_step:,.0f} units"
    open_units = account.open_units(symbol, side)
    if open_units + units > settings.max_position_units:
        return (f"max position {settings.max_position_units:,.0f} units on {symbol}: "
                f"open {open_units:,.0f} + order {units:,.0f}")
    opposite: Side = "SELL" if side == "BUY" else "BUY"
    gross = account.exposure() - account.exposure(symbol, opposite)  # the reversal closes those
    notional = units * price
    if gross + notional > settings.max_gross_exposure:
        return (f"max gross exposure {settings.max_gross_exposure:,.0f}: "
                f"open {gross:,.0f} + order {notional:,.0f} ({units:,.0f} {symbol} at {price:.5f})")
    return None


__all__ = ["order_units", "profit_target", "protective_stop", "refusal"]
