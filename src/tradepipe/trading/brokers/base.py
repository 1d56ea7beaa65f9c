"""What the trading engine asks of a broker (R7.2): place a market order at a quote, cancel a
pending order. The engine owns positions, risk and exits; a broker only executes.

The structs are small, frozen and plain so any adapter (paper, MetaTrader 5) can produce them
without knowing the engine. Prices are in the symbol's quote currency; ``units`` are base
currency units (a broker working in lots converts). ``Fill.slippage`` is the price distance
the fill was worse (positive) or better (negative) than the quote the order was sent at.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

import msgspec

from tradepipe.events.types import Side


class OrderRequest(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    symbol: str
    side: Side
    units: float
    stop_loss: float | None = None
    take_profit: float | None = None
    position_id: str = ""  # the position it opens (its own order_id) or closes
    closes: bool = False


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    bid: float
    ask: float
    time: datetime


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    price: float
    units: float  # may be less than ordered (a partial fill)
    commission: float = 0.0
    slippage: float = 0.0
    ticket: int | None = None  # the broker's deal id, if it has one


class BrokerRejection(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    reason: str
    code: str = ""  # the broker's own name for the refusal, e.g. TRADE_RETCODE_REQUOTE


class Broker(ABC):
    """A broker adapter. ``submit`` must not raise for a refused order: it returns a
    BrokerRejection with the broker's reason."""

    name: str

    @abstractmethod
    def submit(self, order: OrderRequest, quote: Quote) -> Fill | BrokerRejection:
        """Execute a market order; ``quote`` is the engine's last quote of the symbol."""

    def cancel(self, order_id: str) -> bool:
        """Cancel a pending order; True if one was cancelled. Market orders never stay
        pending, so an adapter that only sends them has nothing to cancel."""
        return False

    def snapshot(self) -> Any:
        """State the broker needs after a restart (e.g. position tickets); None if none."""
        return None

    def restore(self, state: Any) -> None:
        """Load what :meth:`snapshot` returned."""


__all__ = ["Broker", "BrokerRejection", "Fill", "OrderRequest", "Quote"]
