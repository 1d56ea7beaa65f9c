"""The paper broker: every market order fills at once against the engine's quote.

A buy fills at the ask plus ``slippage_bps`` of it, a sell at the bid minus ``slippage_bps``
of it; the commission is ``commission_per_million`` per million of notional (units x fill
price), each side. Deterministic: the same order and quote always give the same fill.
"""

from __future__ import annotations

from tradepipe.trading.brokers.base import Broker, Fill, OrderRequest, Quote


class PaperBroker(Broker):
    name = "paper"

    def __init__(self, slippage_bps: float = 0.0, commission_per_million: float = 0.0) -> None:
        self.slippage_bps = slippage_bps
        self.commission_per_million = commission_per_million

    def submit(self, order: OrderRequest, quote: Quote) -> Fill:
        if order.side == "BUY":
            slippage = quote.ask * self.slippage_bps / 1e4
            price = quote.ask + slippage
        else:
            slippage = quote.bid * self.slippage_bps / 1e4
            price = quote.bid - slippage
        commission = order.units * price * self.commission_per_million / 1e6
        return Fill(order_id=order.order_id, price=price, units=order.units, commission=commission, slippage=slippage)


__all__ = ["PaperBroker"]
