"""The MetaTrader 5 broker: market orders through ``order_send`` of the ``MetaTrader5`` package.

``mt5_module`` is the package itself (Windows, next to a running terminal) or an
``mt5linux.MetaTrader5(host, port)`` connection; see :mod:`tradepipe.sources.mt5`. Calls used:

* ``symbol_info(symbol)``: ``trade_contract_size`` (units per lot), ``volume_min``,
  ``volume_max``, ``volume_step`` and ``filling_mode`` (flags: 1 = FOK allowed, 2 = IOC
  allowed; neither = RETURN);
* ``symbol_info_tick(symbol)``: the price sent (ask for a buy, bid for a sell): MT5 checks the
  request's price against its own current quote within ``deviation`` points, so the engine's
  quote (possibly a few ms old) is not the one sent;
* ``order_send(request)`` -> ``OrderSendResult`` (retcode, deal, order, volume, price, bid,
  ask, comment, request_id, retcode_external, request), or None with ``last_error()``;
* ``positions_get(symbol=)``: the ticket of the position an order opened (the position whose
  ``identifier`` is the order's ticket), so a closing order names it in ``position``.

Result codes: ``TRADE_RETCODE_DONE`` and ``TRADE_RETCODE_DONE_PARTIAL`` are fills at
``result.price`` for ``result.volume`` lots; every other code (REQUOTE, PRICE_OFF, REJECT,
NO_MONEY, MARKET_CLOSED, INVALID_VOLUME ...) is a BrokerRejection named by the module's own
``TRADE_RETCODE_*`` constant, with the server's comment.

Not covered: commissions (MT5 books them on the deal, readable with ``history_deals_get``;
fills report 0), pending orders (only market deals are sent, so ``cancel`` has nothing to
cancel), and a position the server closed itself at its sl/tp (the engine's own close is then
refused with TRADE_RETCODE_POSITION_CLOSED). Tested only against the stand-in module
``tests/sources/mt5_standin.py``: the real terminal needs Windows.
"""

from __future__ import annotations

import math
from typing import Any

from tradepipe.trading.brokers.base import Broker, BrokerRejection, Fill, OrderRequest, Quote

#: ``symbol_info().filling_mode`` flags (MQL5 SYMBOL_FILLING_FOK / SYMBOL_FILLING_IOC)
SYMBOL_FILLING_FOK = 1
SYMBOL_FILLING_IOC = 2
_ROUNDING_SLACK = 1e-9


class Mt5Broker(Broker):
    name = "mt5"

    def __init__(self, mt5_module: Any, *, magic: int, deviation_points: int, comment: str = "tradepipe") -> None:
        self.mt5 = mt5_module
        self.magic = magic
        self.deviation_points = deviation_points
        self.comment = comment
        self.tickets: dict[str, int] = {}  # our position_id -> MT5 position ticket
        self._retcode_names = {
            getattr(mt5_module, attr): attr for attr in dir(mt5_module) if attr.startswith("TRADE_RETCODE_")
        }

    def submit(self, order: OrderRequest, quote: Quote) -> Fill | BrokerRejection:
        mt5 = self.mt5
        info = mt5.symbol_info(order.symbol)
        if info is None:
            return self._call_failed(order, f"symbol_info({order.symbol!r})")
        lots = self._lots(order.units, info)
        if lots < info.volume_min:
            return BrokerRejection(
                order_id=order.order_id, code="VOLUME_BELOW_MIN",
                reason=f"{order.units:,.0f} units of {order.symbol} is {lots:g} lots, below the minimum "
                       f"{info.volume_min:g} lots (contract {info.trade_contract_size:,.0f} units, "
                       f"step {info.volume_step:g})")
        if lots > info.volume_max:
            return BrokerRejection(
                order_id=order.order_id, code="VOLUME_ABOVE_MAX",
                reason=f"{order.units:,.0f} units of {order.symbol} is {lots:g} lots, above the maximum "
                       f"{info.volume_max:g} lots")
        tick = mt5.symbol_info_tick(order.symbol)
        if tick is None:
            return self._call_failed(order, f"symbol_info_tick({order.symbol!r})")
        buy = order.side == "BUY"
        price = tick.ask if buy else tick.bid
        request = {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": order.symbol,
            "volume": lots,
            "type": mt5.ORDER_TYPE_BUY if buy else mt5.ORDER_TYPE_SELL,
            "price": price,
            "sl": order.stop_loss or 0.0,
            "tp": order.take_profit or 0.0,
            "deviation": self.deviation_points,
            "magic": self.magic,
            "comment": self.comment,
            "type_time": mt5.ORDER_TIME_GTC,
            "type_filling": self._filling(info.filling_mode),
        }
        if order.closes:
            ticket = self.tickets.get(order.position_id)
            if ticket is None:
                return BrokerRejection(order_id=order.order_id, code="UNKNOWN_POSITION",
                                       reason=f"no MT5 position ticket known for position {order.position_id}")
            request["position"] = ticket
        result = mt5.order_send(request)
        if result is None:
            return self._call_failed(order, "order_send")
        if result.retcode not in (mt5.TRADE_RETCODE_DONE, mt5.TRADE_RETCODE_DONE_PARTIAL):
            code = self._retcode_names.get(result.retcode, f"retcode {result.retcode}")
            return BrokerRejection(order_id=order.order_id, code=code,
                                   reason=f"{code} ({result.retcode}): {result.comment}")
        if not order.closes:
            self.tickets[order.position_id] = self._position_ticket(order.symbol, result.order)
        elif result.volume >= lots:
            del self.tickets[order.position_id]
        return Fill(
            order_id=order.order_id,
            price=result.price,
            units=round(result.volume * info.trade_contract_size, 6),
            slippage=(result.price - price) if buy else (price - result.price),
            ticket=result.deal,
        )

    def _lots(self, units: float, info: Any) -> float:
        """``units`` in lots, rounded down to the symbol's volume step."""
        step = info.volume_step
        steps = math.floor(units / info.trade_contract_size / step + _ROUNDING_SLACK)
        return round(steps * step, 8)

    def _filling(self, filling_mode: int) -> int:
        if filling_mode & SYMBOL_FILLING_FOK:
            return self.mt5.ORDER_FILLING_FOK
        if filling_mode & SYMBOL_FILLING_IOC:
            return self.mt5.ORDER_FILLING_IOC
        return self.mt5.ORDER_FILLING_RETURN

    def _position_ticket(self, symbol: str, order_ticket: int) -> int:
        """The ticket of the position ``order_ticket`` opened: MT5 gives a position the
        identifier of its opening order, and (usually) the same ticket."""
        for position in self.mt5.positions_get(symbol=symbol) or ():
            if position.identifier == order_ticket:
                return position.ticket
        return order_ticket

    def _call_failed(self, order: OrderRequest, call: str) -> BrokerRejection:
        code, message = self.mt5.last_error()
        return BrokerRejection(order_id=order.order_id, code=f"last_error {code}",
                               reason=f"MetaTrader5 {call} failed: last_error {code} {message!r}")

    def snapshot(self) -> dict[str, int]:
        return dict(self.tickets)

    def restore(self, state: dict[str, int] | None) -> None:
        self.tickets = dict(state or {})


__all__ = ["Mt5Broker"]
